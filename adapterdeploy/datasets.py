"""Reading labelled text datasets for training and evaluation: TSV (the ../shared/data format), CSV, JSONL.

Pure Python (no torch) so that other stages (``check --eval``) can read the same files the same way.

Formats, chosen by file extension (``.tsv``/``.txt``, ``.csv``, ``.jsonl``/``.ndjson``) or ``fmt=``:

* TSV: a header line, then one row per line, fields split on tabs with **no quoting**
  (``csv.QUOTE_NONE``): texts may start with ``"``, and quoting would merge rows. The shared format is
  ``label<TAB>text`` or ``label<TAB>text_a<TAB>text_b``; any named columns work.
* CSV: a header line and standard CSV quoting (fields may contain commas, quotes and newlines).
* JSONL: one JSON object per line; blank lines are skipped.

Columns: the text column defaults to the first of ``text, text_a, sentence, sentence1`` present, the pair
column to the first of ``text_b, sentence2`` present (none: single texts), the label column to ``label``.

Labels (decided on the training file, then imposed on the evaluation file through ``labels=`` and
``problem_type=``):

* a label list given: each raw label is looked up by name, else read as an integer index into the list;
* all labels integers: classes ``0..max`` (at least 2), named ``"0"``, ``"1"``, ...;
* all labels numbers, some not integers: regression (``problem_type="auto"``), or pass
  ``problem_type="regression"`` explicitly;
* otherwise: string classes, in sorted order (pass ``labels=`` to choose the order);
* multi-label (``problem_type="multi_label_classification"``, or ``auto`` when a JSONL label is a list):
  each row's label is a list of class names (JSONL ``["sports", "politics"]``, ``[]`` for none) or, in
  TSV / CSV, the names joined by ``,`` (empty for none); classes are the sorted union unless ``labels=``.

Every problem raises :class:`~adapterdeploy.errors.DataError` naming the file and the line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adapterdeploy.errors import DataError

__all__ = [
    "FORMATS",
    "LABEL_COLUMNS",
    "TEXT_COLUMNS",
    "TEXT_PAIR_COLUMNS",
    "Dataset",
    "Example",
    "read_dataset",
    "subset",
]

FORMATS = ("tsv", "csv", "jsonl")
TEXT_COLUMNS = ("text", "text_a", "sentence", "sentence1")
TEXT_PAIR_COLUMNS = ("text_b", "sentence2")
LABEL_COLUMNS = ("label",)
PROBLEM_TYPES = ("auto", "single_label_classification", "multi_label_classification", "regression")
MULTI_LABEL_SEPARATOR = ","
_EXTENSIONS = {".tsv": "tsv", ".txt": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class Example:
    """One row: a text (or text pair) and its label (class index, regression value, the sorted class indices
    of a multi-label row, or None when unlabelled)."""

    text: str
    text_pair: str | None = None
    label: int | float | tuple[int, ...] | None = None


@dataclass(frozen=True)
class Dataset:
    """The rows of one file plus what their labels mean.

    ``labels`` are the class names in index order (empty for regression / unlabelled data);
    ``line_numbers[i]`` is the file line of ``examples[i]`` (for messages about a row).
    """

    path: Path
    examples: tuple[Example, ...]
    problem_type: str
    labels: tuple[str, ...]
    text_pair: bool
    line_numbers: tuple[int, ...] = field(default=(), repr=False)
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def num_labels(self) -> int:
        return 1 if self.problem_type == "regression" else len(self.labels)

    def label_counts(self) -> dict[str, int]:
        """Rows per class name (classification only), in label order."""
        if self.problem_type == "multi_label_classification":
            counts = Counter(i for ex in self.examples for i in ex.label or ())  # type: ignore[union-attr]
            return {name: counts.get(i, 0) for i, name in enumerate(self.labels)}
        counts = Counter(ex.label for ex in self.examples)
        return {name: counts.get(i, 0) for i, name in enumerate(self.labels)}


@dataclass(frozen=True)
class _RawRow:
    line: int
    text: Any
    text_pair: Any
    label: Any
    has_pair: bool


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}"


def _detect_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise DataError(f"unknown data format {fmt!r} for {path}; choose one of {', '.join(FORMATS)}")
        return fmt
    found = _EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise DataError(
            f"cannot tell the format of {path} from its extension {path.suffix!r}; "
            f"name it .tsv, .csv or .jsonl, or pass the format explicitly"
        )
    return found


def _read_text(path: Path) -> tuple[str, str]:
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{_where(path, line)}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if not text.strip():
        raise DataError(f"{path}:1: file is empty; expected a header line and at least one row")
    return text, hashlib.sha256(raw).hexdigest()


def _pick(
    header: Sequence[str], given: str | None, defaults: Sequence[str], what: str, path: Path, required: bool
) -> str | None:
    if given is not None:
        if given not in header:
            raise DataError(f"{_where(path, 1)}: no {what} column {given!r}; the header has {list(header)}")
        return given
    for name in defaults:
        if name in header:
            return name
    if required:
        raise DataError(
            f"{_where(path, 1)}: no {what} column; the header has {list(header)}, expected one of "
            f"{list(defaults)} (or name it explicitly, e.g. --{what.replace(' ', '-')}-column)"
        )
    return None


def _columns(
    header: Sequence[str],
    path: Path,
    text_column: str | None,
    text_pair_column: str | None,
    label_column: str | None,
    require_labels: bool,
) -> tuple[str, str | None, str | None]:
    dupes = sorted(name for name, n in Counter(header).items() if n > 1)
    if dupes:
        raise DataError(f"{_where(path, 1)}: header repeats column(s) {dupes}")
    text = _pick(header, text_column, TEXT_COLUMNS, "text", path, required=True)
    pair = _pick(header, text_pair_column, TEXT_PAIR_COLUMNS, "text pair", path, required=False)
    label = _pick(header, label_column, LABEL_COLUMNS, "label", path, required=require_labels)
    assert text is not None
    if pair == text:
        raise DataError(f"{_where(path, 1)}: the text and text pair columns are both {text!r}")
    return text, pair, label


def _delimited_rows(
    path: Path, content: str, delimiter: str, quoting: Literal[0, 1, 2, 3], cols: dict[str, Any], require_labels: bool
) -> Iterator[_RawRow]:
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = next(reader)
        text_col, pair_col, label_col = _columns(header, path, require_labels=require_labels, **cols)
        index = {name: i for i, name in enumerate(header)}
        n = len(header)
        prev_end = reader.line_num
        for fields in reader:
            # csv counts the physical lines read so far; a quoted CSV field may span several lines.
            line = prev_end + 1
            prev_end = reader.line_num
            if not fields:
                raise DataError(f"{_where(path, line)}: empty line; every row needs {n} fields ({', '.join(header)})")
            if len(fields) != n:
                raise DataError(
                    f"{_where(path, line)}: malformed row: {len(fields)} field(s), the header has {n} "
                    f"({', '.join(header)})"
                    + ("; TSV fields are split on tabs and never quoted" if delimiter == "\t" else "")
                )
            yield _RawRow(
                line,
                fields[index[text_col]],
                fields[index[pair_col]] if pair_col else None,
                fields[index[label_col]] if label_col else None,
                pair_col is not None,
            )
    except csv.Error as exc:
        raise DataError(f"{_where(path, reader.line_num)}: malformed row: {exc}") from exc


def _jsonl_rows(path: Path, content: str, cols: dict[str, Any], require_labels: bool) -> Iterator[_RawRow]:
    picked: tuple[str, str | None, str | None] | None = None
    for line, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"{_where(path, line)}: malformed row: not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise DataError(f"{_where(path, line)}: malformed row: expected a JSON object, got {type(obj).__name__}")
        if picked is None:
            # The first object's keys play the header's part; later rows must carry the same columns.
            picked = _columns(list(obj), path, require_labels=require_labels, **cols)
            picked_line = line
        missing = [c for c in picked if c is not None and c not in obj]
        if missing:
            raise DataError(
                f"{_where(path, line)}: malformed row: missing key(s) {missing} (present on line {picked_line})"
            )
        text_col, pair_col, label_col = picked
        yield _RawRow(
            line,
            obj[text_col],
            obj[pair_col] if pair_col else None,
            obj[label_col] if label_col else None,
            pair_col is not None,
        )


def _clean_text(value: Any, path: Path, line: int, column: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{_where(path, line)}: {column} must be a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise DataError(f"{_where(path, line)}: empty {column}; every row needs a non-empty text")
    return value


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _as_int(value: Any) -> int | None:
    """An integer label: ``1``, ``"1"``, and also ``1.0`` / ``"1.0"`` (files written by pandas)."""
    f = _as_float(value)
    if f is None or not math.isfinite(f) or not f.is_integer():
        return None
    return int(f)


def _multi_label(
    rows: list[_RawRow], path: Path, labels: Sequence[str] | None
) -> tuple[str, tuple[str, ...], list[Any]]:
    """Multi-label rows: a list of names (JSONL) or names joined by ``,`` (TSV / CSV); see the module docstring."""
    raw: list[list[str]] = []
    for r in rows:
        if isinstance(r.label, list) and all(isinstance(x, str | int) and not isinstance(x, bool) for x in r.label):
            names_here = [str(x).strip() for x in r.label]
        elif isinstance(r.label, str):
            names_here = [x.strip() for x in r.label.split(MULTI_LABEL_SEPARATOR)] if r.label.strip() else []
        else:
            raise DataError(
                f"{_where(path, r.line)}: multi-label label {r.label!r} is neither a list of class names "
                f"nor names joined by {MULTI_LABEL_SEPARATOR!r}"
            )
        if any(not x for x in names_here):
            raise DataError(f"{_where(path, r.line)}: empty class name in multi-label label {r.label!r}")
        raw.append(names_here)
    names = tuple(str(x) for x in labels) if labels else tuple(sorted({x for row in raw for x in row}))
    if len(names) < 2:
        raise DataError(f"{path}: multi-label classification needs at least 2 classes, found {list(names)}")
    by_name = {name: i for i, name in enumerate(names)}
    out: list[Any] = []
    for r, row in zip(rows, raw, strict=True):
        unknown = [x for x in row if x not in by_name]
        if unknown:
            raise DataError(f"{_where(path, r.line)}: label(s) {unknown} are not among the classes {list(names)}")
        out.append(tuple(sorted({by_name[x] for x in row})))
    return "multi_label_classification", names, out


def _resolve_labels(
    rows: list[_RawRow], path: Path, labels: Sequence[str] | None, problem_type: str
) -> tuple[str, tuple[str, ...], list[Any]]:
    """Decide the problem type and class list, and convert every raw label (see the module docstring)."""
    if problem_type == "multi_label_classification" or (
        problem_type == "auto" and any(isinstance(r.label, list) for r in rows)
    ):
        return _multi_label(rows, path, labels)
    if problem_type == "regression":
        values: list[int | float] = []
        for r in rows:
            f = _as_float(r.label)
            if f is None or not math.isfinite(f):
                raise DataError(f"{_where(path, r.line)}: label {r.label!r} is not a finite number (regression)")
            values.append(f)
        return problem_type, (), values

    if labels:
        names = tuple(str(x) for x in labels)
        by_name = {name: i for i, name in enumerate(names)}
        out: list[int | float] = []
        for r in rows:
            key = str(r.label).strip()
            if key in by_name:
                out.append(by_name[key])
                continue
            i = _as_int(r.label)
            if i is None:
                raise DataError(
                    f"{_where(path, r.line)}: label {r.label!r} is not one of the labels {list(names)} "
                    "nor an integer index into them"
                )
            if not 0 <= i < len(names):
                raise DataError(
                    f"{_where(path, r.line)}: label {i} is out of range: there are {len(names)} labels "
                    f"(0..{len(names) - 1}: {', '.join(names)})"
                )
            out.append(i)
        return "single_label_classification", names, out

    # No label list: all numbers (ints -> classes, else regression when auto) or all names. A mixture is
    # a typo far more often than a class, so it is refused at its line instead of becoming a class.
    floats = [_as_float(r.label) for r in rows]
    numeric = [f is not None and math.isfinite(f) for f in floats]
    if any(numeric) and not all(numeric):
        bad = rows[numeric.index(False)]
        first = rows[numeric.index(True)]
        raise DataError(
            f"{_where(path, bad.line)}: label {bad.label!r} is not a number, but other labels are "
            f"(e.g. {first.label!r} on line {first.line}); fix the row, or pass the class names (--labels)"
        )
    if all(numeric):
        ints = [_as_int(r.label) for r in rows]
        if problem_type == "auto" and any(i is None for i in ints):
            return "regression", (), [f for f in floats if f is not None]
        for r, i in zip(rows, ints, strict=True):
            if i is None:
                raise DataError(f"{_where(path, r.line)}: label {r.label!r} is not an integer class index")
            if i < 0:
                raise DataError(f"{_where(path, r.line)}: label {i} is out of range: class indices start at 0")
        top = max(i for i in ints if i is not None)
        return (
            "single_label_classification",
            tuple(str(k) for k in range(max(2, top + 1))),
            [i for i in ints if i is not None],
        )

    for r in rows:
        if not isinstance(r.label, str) or not r.label.strip():
            raise DataError(f"{_where(path, r.line)}: label {r.label!r} is not a class name nor an integer")
    names = tuple(sorted({str(r.label).strip() for r in rows}))
    if len(names) < 2:
        raise DataError(f"{path}: every row has the label {names[0]!r}; classification needs at least 2 labels")
    by_name = {name: i for i, name in enumerate(names)}
    return "single_label_classification", names, [by_name[str(r.label).strip()] for r in rows]


def read_dataset(
    path: str | Path,
    *,
    fmt: str | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    labels: Sequence[str] | None = None,
    problem_type: str = "auto",
    require_labels: bool = True,
) -> Dataset:
    """Read a whole TSV / CSV / JSONL file, validating every row; raise DataError (file:line) on the first problem.

    Pass the training set's ``labels`` and ``problem_type`` when reading its evaluation file so that both
    use the same classes (a label unknown to the training set is an error there, not a new class).
    """
    p = Path(path).expanduser()
    if problem_type not in PROBLEM_TYPES:
        raise DataError(f"unknown problem type {problem_type!r}; choose one of {', '.join(PROBLEM_TYPES)}")
    kind = _detect_format(p, fmt)
    content, digest = _read_text(p)
    # Blank lines at the very end (an editor's extra newline) are not rows; blank lines inside are errors.
    content = content.rstrip("\r\n") + "\n"
    cols = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
    if kind == "jsonl":
        rows = list(_jsonl_rows(p, content, cols, require_labels))
    else:
        if kind == "tsv":
            rows = list(_delimited_rows(p, content, "\t", csv.QUOTE_NONE, cols, require_labels))
        else:
            rows = list(_delimited_rows(p, content, ",", csv.QUOTE_MINIMAL, cols, require_labels))
    if not rows:
        raise DataError(f"{p}:2: no rows after the header; the file needs at least one example")

    pair = rows[0].has_pair
    texts = [_clean_text(r.text, p, r.line, "text") for r in rows]
    pairs = [_clean_text(r.text_pair, p, r.line, "text pair") if pair else None for r in rows]

    if all(r.label is None for r in rows) and not require_labels:
        examples = tuple(Example(t, tp) for t, tp in zip(texts, pairs, strict=True))
        return Dataset(
            p,
            examples,
            "single_label_classification" if problem_type == "auto" else problem_type,
            tuple(labels or ()),
            pair,
            tuple(r.line for r in rows),
            digest,
        )

    ptype, names, values = _resolve_labels(rows, p, labels, problem_type)
    examples = tuple(Example(t, tp, v) for t, tp, v in zip(texts, pairs, values, strict=True))
    return Dataset(p, examples, ptype, names, pair, tuple(r.line for r in rows), digest)


def subset(data: Dataset, max_rows: int | None, seed: int = 0) -> Dataset:
    """At most ``max_rows`` rows, a seeded random sample kept in file order (same seed, same rows).

    A random sample rather than the first rows: files such as SST-2 are not shuffled, so their head is
    not representative.
    """
    if max_rows is None or max_rows >= len(data):
        return data
    if max_rows < 1:
        raise DataError(f"a subset needs at least 1 row, got max_rows={max_rows}")

    def key(i: int) -> bytes:
        # A hash of (seed, row index) rather than random.sample: the selection is the same on every
        # Python version and platform, and documented in one line.
        return hashlib.sha256(f"{seed}:{i}".encode()).digest()

    keep = sorted(sorted(range(len(data)), key=key)[:max_rows])
    lines = data.line_numbers or tuple(range(len(data)))
    return Dataset(
        data.path,
        tuple(data.examples[i] for i in keep),
        data.problem_type,
        data.labels,
        data.text_pair,
        tuple(lines[i] for i in keep),
        data.sha256,
    )
