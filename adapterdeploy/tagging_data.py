"""Reading word-tagged datasets (``train --head tagging``, tagging ``check --eval``): CoNLL-style or JSONL.

Pure Python (no torch) so every stage reads tagging files the same way.

Formats, by extension (``.jsonl`` / ``.ndjson`` JSONL, anything else CoNLL) or ``fmt=``:

* CoNLL: one word per line, ``word<TAB>label`` or ``word label`` (whitespace-separated; with more than two
  columns, as CoNLL-2003's ``word POS chunk NER``, the first is the word and the last the label); a blank
  line ends a sentence; ``-DOCSTART-`` lines (document separators) are skipped.
* JSONL: one object per line, ``{"tokens": ["John", "lives", ...], "labels": ["B-PER", "O", ...]}``; blank
  lines are skipped.

Labels: the training file's label set in order ``O`` first (when present), then sorted; an evaluation file is
read with the training file's labels (``labels=``), and a label outside them is an error naming the line.
Every problem raises :class:`~adapterdeploy.errors.DataError` naming the file and the line.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from adapterdeploy.config import TOKEN_CLASSIFICATION
from adapterdeploy.errors import DataError

__all__ = ["TAGGING_FORMATS", "TaggedSentence", "TaggingDataset", "read_tagging", "subset_tagging"]

TAGGING_FORMATS = ("conll", "jsonl")
MAX_WORD_CHARS = 1000  # a "word" longer than this is a sign of a wrong file (e.g. a TSV of sentences)


@dataclass(frozen=True)
class TaggedSentence:
    """One sentence: its words and their label indices (into the dataset's ``labels``)."""

    words: tuple[str, ...]
    tags: tuple[int, ...]
    line: int  # the file line where the sentence starts


@dataclass(frozen=True)
class TaggingDataset:
    """The sentences of one file and the label names (index order)."""

    path: Path
    sentences: tuple[TaggedSentence, ...]
    labels: tuple[str, ...]
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def problem_type(self) -> str:
        return TOKEN_CLASSIFICATION

    @property
    def text_pair(self) -> bool:
        return False

    def label_counts(self) -> dict[str, int]:
        """Words per label, in label order."""
        counts = Counter(t for s in self.sentences for t in s.tags)
        return {name: counts.get(i, 0) for i, name in enumerate(self.labels)}

    def label_names(self, sentence: TaggedSentence) -> list[str]:
        return [self.labels[t] for t in sentence.tags]


def _where(path: Path, line: int) -> str:
    return f"{path}, line {line}"


def _conll(path: Path, content: str) -> list[tuple[int, list[str], list[str]]]:
    out: list[tuple[int, list[str], list[str]]] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    for n, raw in enumerate(content.splitlines(), start=1):
        line = raw.strip()
        if not line:
            if words:
                out.append((start, words, tags))
            words, tags = [], []
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        parts = [p.strip() for p in parts if p.strip()]
        if parts and parts[0] == "-DOCSTART-":
            continue
        if len(parts) < 2:
            raise DataError(
                f"{_where(path, n)}: {line[:60]!r} has no label; a CoNLL line is 'word<TAB>label' (or "
                "'word label'), with a blank line between sentences"
            )
        if len(parts[0]) > MAX_WORD_CHARS:
            raise DataError(
                f"{_where(path, n)}: a word of {len(parts[0])} characters; is this a sentence file? "
                "tagging data has one word per line (CoNLL) or JSONL {'tokens': [...], 'labels': [...]}"
            )
        if not words:
            start = n
        words.append(parts[0])
        tags.append(parts[-1])
    if words:
        out.append((start, words, tags))
    return out


def _jsonl(path: Path, content: str) -> list[tuple[int, list[str], list[str]]]:
    out = []
    for n, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj: Any = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{_where(path, n)}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or "tokens" not in obj or "labels" not in obj:
            raise DataError(f'{_where(path, n)}: expected an object {{"tokens": [...], "labels": [...]}}')
        words, tags = obj["tokens"], obj["labels"]
        for key, value in (("tokens", words), ("labels", tags)):
            if not isinstance(value, list) or not all(isinstance(x, str) and x.strip() for x in value):
                raise DataError(f"{_where(path, n)}: {key!r} must be a list of non-empty strings")
        if len(words) != len(tags):
            raise DataError(f"{_where(path, n)}: {len(words)} tokens but {len(tags)} labels; give one label per token")
        if not words:
            raise DataError(f"{_where(path, n)}: an empty sentence (no tokens)")
        out.append((n, [w.strip() for w in words], [t.strip() for t in tags]))
    return out


def read_tagging(
    path: str | Path, *, fmt: str | None = None, labels: tuple[str, ...] | None = None, require_labels: bool = True
) -> TaggingDataset:
    """Read a CoNLL or JSONL tagging file (see the module docstring); ``labels`` imposes a label order."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"tagging data file {p} does not exist")
    fmt = fmt or ("jsonl" if p.suffix.lower() in (".jsonl", ".ndjson") else "conll")
    if fmt not in TAGGING_FORMATS:
        raise DataError(f"unknown tagging format {fmt!r}; choose one of {', '.join(TAGGING_FORMATS)}")
    data = p.read_bytes()
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    rows = _jsonl(p, content) if fmt == "jsonl" else _conll(p, content)
    if not rows:
        raise DataError(f"{p} holds no sentences; a {fmt} tagging file needs at least one labelled word")
    seen = sorted({t for _, _, tags in rows for t in tags})
    if labels is None:
        names = tuple((["O"] if "O" in seen else []) + [t for t in seen if t != "O"])
        if require_labels and len(names) < 2:
            raise DataError(f"{p}: every word has the label {names[0]!r}; tagging needs at least 2 labels")
    else:
        names = tuple(labels)
    index = {name: i for i, name in enumerate(names)}
    sentences = []
    for line, words, tags in rows:
        bad = next((t for t in tags if t not in index), None)
        if bad is not None:
            raise DataError(
                f"{_where(p, line)}: label {bad!r} is not one of the training labels {list(names)[:20]}; "
                "evaluation data must use the training file's labels"
            )
        sentences.append(TaggedSentence(tuple(words), tuple(index[t] for t in tags), line))
    return TaggingDataset(p, tuple(sentences), names, hashlib.sha256(data).hexdigest())


def subset_tagging(data: TaggingDataset, max_rows: int | None, seed: int = 0) -> TaggingDataset:
    """At most ``max_rows`` sentences, the same seeded sample rule as ``datasets.py``'s ``subset``."""
    if max_rows is None or max_rows >= len(data):
        return data
    if max_rows < 1:
        raise DataError(f"a subset needs at least 1 sentence, got max_rows={max_rows}")
    keep = sorted(sorted(range(len(data)), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())[:max_rows])
    return replace(data, sentences=tuple(data.sentences[i] for i in keep))
