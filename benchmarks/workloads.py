"""The inputs every system gets: real texts from ../shared/data, cut into the benchmark's shapes.

Cases (the same rows, in the same order, for every system):

    b1_pair   batch 1, one MRPC sentence pair of median token length (a short request)
    b1_128    batch 1, one text of exactly max_length (128) tokens
    b32_dyn   batch 32, 32 SST-2 dev sentences (seeded sample), padded to the longest of them
    b32_128   batch 32, 32 texts of exactly 128 tokens each

When the shared data is absent (a bare checkout), deterministic pseudo-sentences are generated from
a fixed vocabulary instead, and the report says so.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.prepare import DATA_DIR
from benchmarks.systems import BatchEncoder

__all__ = ["CASES", "Case", "Texts", "load_texts", "make_cases", "task_stream"]

CASES = ("b1_pair", "b1_128", "b32_dyn", "b32_128")


@dataclass(frozen=True)
class Texts:
    singles: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    source: str


@dataclass(frozen=True)
class Case:
    """One input shape: ``rows`` = [text or [text_a, text_b], ...] and the padded length they produce."""

    name: str
    description: str
    rows: tuple[Any, ...] = field(repr=False)
    batch: int
    seq: int  # padded length after tokenization (dynamic padding)
    mean_tokens: float

    def payload(self, task: str) -> dict[str, Any]:
        return {"kind": "batch", "rows": [[task, r] for r in self.rows]}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "batch": self.batch,
            "seq": self.seq,
            "mean_tokens": self.mean_tokens,
        }


def _synthetic(n: int, seed: int) -> list[str]:
    from adapterdeploy.models.tiny import TINY_WORDS

    rng = random.Random(seed)
    return [" ".join(rng.choice(TINY_WORDS) for _ in range(rng.randint(4, 30))) for _ in range(n)]


def load_texts(data_dir: Path = DATA_DIR) -> Texts:
    """SST-2 dev sentences and MRPC test pairs (read with adapterdeploy.datasets), or a synthetic stand-in."""
    sst2, mrpc = data_dir / "sst2" / "dev.tsv", data_dir / "mrpc" / "test.tsv"
    if sst2.is_file() and mrpc.is_file():
        from adapterdeploy.datasets import read_dataset

        singles = tuple(ex.text for ex in read_dataset(sst2).examples)
        pairs = tuple((ex.text, ex.text_pair or "") for ex in read_dataset(mrpc).examples)
        return Texts(singles, pairs, f"{sst2} and {mrpc}")
    a, b = _synthetic(900, 1), _synthetic(900, 2)
    return Texts(tuple(_synthetic(900, 0)), tuple(zip(a, b, strict=True)), "synthetic (shared data not found)")


def _long_text(singles: tuple[str, ...], start: int, encode: BatchEncoder, tokens: int) -> str:
    """Consecutive sentences joined until the text tokenizes to at least ``tokens`` tokens."""
    parts: list[str] = []
    i = start
    while True:
        parts.append(singles[i % len(singles)])
        i += 1
        text = " ".join(parts)
        if encode.length(text) >= tokens:
            return text


def make_cases(texts: Texts, tokenizer_file: str, max_length: int = 128, seed: int = 0) -> dict[str, Case]:
    encode = BatchEncoder(tokenizer_file, max_length)

    def shape(name: str, desc: str, rows: list[Any]) -> Case:
        enc = encode(rows)
        lens = enc["attention_mask"].sum(axis=1)
        return Case(name, desc, tuple(rows), len(rows), int(enc["input_ids"].shape[1]), float(lens.mean()))

    pairs = list(texts.pairs[:400])
    pairs.sort(key=lambda p: encode.length(p))
    rng = random.Random(seed)
    dyn = rng.sample(list(texts.singles), 32)
    longs = [_long_text(texts.singles, 37 * i, encode, max_length) for i in range(32)]
    return {
        "b1_pair": shape("b1_pair", "batch 1, a sentence pair of median length (MRPC)", [list(pairs[len(pairs) // 2])]),
        "b1_128": shape("b1_128", f"batch 1, {max_length} tokens", [longs[0]]),
        "b32_dyn": shape("b32_dyn", "batch 32, SST-2 sentences, dynamic padding", dyn),
        "b32_128": shape("b32_128", f"batch 32 x {max_length} tokens", longs),
    }


def task_stream(texts: Texts, tasks: list[str], rows: int, seed: int) -> list[list[Any]]:
    """``rows`` requests [task, text]: tasks drawn uniformly at random (``seed``), texts from SST-2.

    The texts depend on ``rows`` only, not on the tasks or the seed, so streams over different numbers of
    tasks carry the same texts (the same padding and work) and differ only in how tasks are mixed.
    """
    text_rng, task_rng = random.Random(0), random.Random(seed)
    return [[task_rng.choice(tasks), text_rng.choice(texts.singles)] for _ in range(rows)]
