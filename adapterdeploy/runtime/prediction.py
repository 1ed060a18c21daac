"""The one result type every runtime entry point returns: a frozen, JSON-ready ``Prediction`` per input row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Prediction"]


@dataclass(frozen=True)
class Prediction:
    """One row's result for one task.

    Classification: ``label`` is the arg-max label, ``score`` its probability, ``probabilities`` maps every
    label (in the task's label order) to its probability and ``value`` is None.
    Regression: ``value`` is the predicted number, ``score`` repeats it (so a consumer that only reads
    ``score`` still gets the output), ``label`` and ``probabilities`` are None.
    Multi-label: ``probabilities`` are independent sigmoid scores, ``labels`` the labels at or over their
    thresholds (possibly none), ``label`` / ``score`` the highest-scoring label (on or not).
    ``truncated`` says the row was longer than the deployment's max_length and was cut to fit.
    """

    task: str
    label: str | None
    score: float
    probabilities: dict[str, float] | None = None
    value: float | None = None
    truncated: bool = False
    labels: tuple[str, ...] | None = None

    @property
    def is_regression(self) -> bool:
        return self.probabilities is None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (a fresh copy: callers may mutate it); ``labels`` only for multi-label."""
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
        return d
