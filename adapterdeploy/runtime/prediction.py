"""The one result type every runtime entry point returns: a frozen, JSON-ready ``Prediction`` per input row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Entity", "Prediction", "WordLabel"]


@dataclass(frozen=True)
class WordLabel:
    """A tagging task's label for one word: ``text[start:end] == word`` (character offsets in the input)."""

    word: str
    start: int
    end: int
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"word": self.word, "start": self.start, "end": self.end, "label": self.label, "score": self.score}


@dataclass(frozen=True)
class Entity:
    """Consecutive words merged into one span by their BIO / IOB tags (``label`` without the ``B-`` / ``I-``)."""

    word: str
    start: int
    end: int
    label: str
    score: float  # mean of the merged words' scores

    def to_dict(self) -> dict[str, Any]:
        return {"word": self.word, "start": self.start, "end": self.end, "label": self.label, "score": self.score}


@dataclass(frozen=True)
class Prediction:
    """One row's result for one task.

    Classification: ``label`` is the arg-max label, ``score`` its probability, ``probabilities`` maps every
    label (in the task's label order) to its probability and ``value`` is None.
    Regression: ``value`` is the predicted number, ``score`` repeats it (so a consumer that only reads
    ``score`` still gets the output), ``label`` and ``probabilities`` are None.
    Multi-label: ``probabilities`` are independent sigmoid scores, ``labels`` the labels at or over their
    thresholds (possibly none), ``label`` / ``score`` the highest-scoring label (on or not).
    Tagging (token classification): ``tokens`` holds one :class:`WordLabel` per word of the text (the label
    of its first subword), ``label`` is None and ``score`` the mean of the words' scores (0.0 without words);
    ``entities`` holds the merged BIO spans when asked for (``spans=True``; see runtime/tagging.py).
    ``truncated`` says the row was longer than the deployment's max_length and was cut to fit (a tagging
    row then has no words past the cut).
    """

    task: str
    label: str | None
    score: float
    probabilities: dict[str, float] | None = None
    value: float | None = None
    truncated: bool = False
    labels: tuple[str, ...] | None = None
    tokens: tuple[WordLabel, ...] | None = None
    entities: tuple[Entity, ...] | None = None

    @property
    def is_regression(self) -> bool:
        return self.value is not None

    @property
    def is_tagging(self) -> bool:
        return self.tokens is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (a fresh copy: callers may mutate it); ``labels`` only for multi-label,
        ``tokens`` only for tagging, ``entities`` only when spans were asked for."""
        d: dict[str, Any] = {
            "task": self.task,
            "label": self.label,
            "score": self.score,
            "probabilities": dict(self.probabilities) if self.probabilities is not None else None,
            "value": self.value,
            "truncated": self.truncated,
        }
        if self.labels is not None:
            d["labels"] = list(self.labels)
        if self.tokens is not None:
            d["tokens"] = [w.to_dict() for w in self.tokens]
        if self.entities is not None:
            d["entities"] = [e.to_dict() for e in self.entities]
        return d
