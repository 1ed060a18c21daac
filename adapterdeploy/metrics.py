"""Evaluation metrics in pure numpy: the trainer and the runtime's ``check --eval`` report the same numbers.

No torch, no scikit-learn, no scipy: the runtime installs numpy only. The definitions follow
scikit-learn's (``accuracy_score``, ``f1_score``, ``matthews_corrcoef``) and scipy's (``pearsonr``,
``spearmanr``) so the figures compare with published GLUE numbers.

Semantics (y = gold labels, p = predicted labels, n rows, C = confusion matrix C[gold, pred]):

    accuracy = mean(y == p)
    f1 (binary, positive label 1) = 2 tp / (2 tp + fp + fn)              0 when tp + fp + fn == 0
    f1 (macro, > 2 labels)        = mean over labels present in y or p of the per-label binary F1
    mcc = (c s - sum_k t_k p_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2))
          with c = trace(C), s = n, t_k = row sums, p_k = column sums;   0 when the denominator is 0
    pearson  = cov(x, y) / (std(x) std(y))                                 nan when either is constant
    spearman = pearson(rank(x), rank(y)), ties get their average rank      nan when either is constant

Undefined correlations are nan (not 0): a constant prediction has no correlation, and saying 0 would
hide it. :func:`json_safe` turns nan into None for JSON files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "MAIN_METRICS",
    "UNBALANCED_MAJORITY_SHARE",
    "accuracy",
    "classification_metrics",
    "compute_metrics",
    "f1_score",
    "json_safe",
    "main_metric_name",
    "matthews_corrcoef",
    "pearson",
    "regression_metrics",
    "spearman",
]

MAIN_METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman", "micro_f1", "macro_f1", "entity_f1")
# Above this share of the most frequent label, accuracy rewards always answering that label
# (CoLA: 70% acceptable, MRPC: 67.5% paraphrase), so the main metric becomes Matthews correlation.
UNBALANCED_MAJORITY_SHARE = 0.6


def _labels(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values but y_pred has {p.size}; they must be the same rows")
    if t.size == 0:
        raise ValueError("cannot compute a metric over 0 rows")
    return t, p


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Share of rows whose predicted label equals the gold label."""
    t, p = _labels(y_true, y_pred)
    return float(np.mean(t == p))


def _binary_f1(t: np.ndarray, p: np.ndarray, positive: Any) -> float:
    tp = int(np.sum((t == positive) & (p == positive)))
    fp = int(np.sum((t != positive) & (p == positive)))
    fn = int(np.sum((t == positive) & (p != positive)))
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def f1_score(y_true: ArrayLike, y_pred: ArrayLike, *, average: str = "binary", pos_label: Any = 1) -> float:
    """F1 of the positive label (``average="binary"``) or the unweighted mean over labels (``"macro"``).

    Macro averages over the labels that occur in either ``y_true`` or ``y_pred`` (as scikit-learn does
    when it is not given the label list).
    """
    t, p = _labels(y_true, y_pred)
    if average == "binary":
        return _binary_f1(t, p, pos_label)
    if average == "macro":
        labels = np.union1d(t, p)
        return float(np.mean([_binary_f1(t, p, k) for k in labels]))
    raise ValueError(f"average must be 'binary' or 'macro', got {average!r}")


def matthews_corrcoef(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Matthews correlation (the multi-class R_K form); 1 perfect, 0 chance level, -1 inverse."""
    t, p = _labels(y_true, y_pred)
    labels, inverse = np.unique(np.concatenate([t, p]), return_inverse=True)
    k = labels.size
    ti, pi = inverse[: t.size], inverse[t.size :]
    conf = np.zeros((k, k), dtype=np.float64)
    np.add.at(conf, (ti, pi), 1.0)
    t_sum = conf.sum(axis=1)
    p_sum = conf.sum(axis=0)
    correct = np.trace(conf)
    s = float(t.size)
    cov_tp = correct * s - float(np.dot(t_sum, p_sum))
    cov_pp = s * s - float(np.dot(p_sum, p_sum))
    cov_tt = s * s - float(np.dot(t_sum, t_sum))
    denom = math.sqrt(cov_pp * cov_tt)
    return float(cov_tp / denom) if denom else 0.0


def _values(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    b = np.asarray(y, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"x has {a.size} values but y has {b.size}; they must be the same rows")
    if a.size < 2:
        raise ValueError(f"a correlation needs at least 2 rows, got {a.size}")
    return a, b


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation; nan when either side is constant."""
    a, b = _values(x, y)
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b)) / denom if denom else math.nan


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start index of each run of equal values; every member of a run gets the run's mean rank (1-based).
    starts = np.flatnonzero(np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]]))
    ends = np.concatenate([starts[1:], [x.size]])
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant."""
    a, b = _values(x, y)
    return pearson(_average_ranks(a), _average_ranks(b))


def classification_metrics(y_true: ArrayLike, y_pred: ArrayLike, num_labels: int = 2) -> dict[str, float]:
    """accuracy, f1 (binary F1 of label 1 for 2 labels, macro F1 above) and mcc."""
    average = "binary" if num_labels <= 2 else "macro"
    return {
        "accuracy": accuracy(y_true, y_pred),
        "f1": f1_score(y_true, y_pred, average=average),
        "mcc": matthews_corrcoef(y_true, y_pred),
    }


def regression_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """pearson, spearman and mse."""
    a, b = _values(y_true, y_pred)
    return {"pearson": pearson(a, b), "spearman": spearman(a, b), "mse": float(np.mean((a - b) ** 2))}


def compute_metrics(problem_type: str, y_true: ArrayLike, y_pred: ArrayLike, num_labels: int = 2) -> dict[str, float]:
    """The metrics of a problem type (``single_label_classification`` or ``regression``; multi-label:
    ``y_true`` and ``y_pred`` are multi-hot ``[rows, labels]``)."""
    if problem_type == "multi_label_classification":
        from adapterdeploy.multilabel import multilabel_metrics

        return multilabel_metrics(np.asarray(y_true), np.asarray(y_pred))
    if problem_type == "regression":
        return regression_metrics(y_true, y_pred)
    return classification_metrics(y_true, y_pred, num_labels)


def main_metric_name(problem_type: str, label_counts: Mapping[Any, int] | Sequence[int] | None = None) -> str:
    """The metric that picks the best epoch: pearson for regression, micro F1 for multi-label (see
    adapterdeploy/multilabel.py); for classification mcc when the most frequent label holds more than
    ``UNBALANCED_MAJORITY_SHARE`` of the rows, else accuracy."""
    if problem_type == "regression":
        return "pearson"
    if problem_type == "multi_label_classification":
        return "micro_f1"
    if problem_type == "token_classification":  # tagging: seqeval-style entity F1 (adapterdeploy/bio.py)
        return "entity_f1"
    counts = list(label_counts.values()) if isinstance(label_counts, Mapping) else list(label_counts or [])
    total = sum(counts)
    if total and max(counts) / total > UNBALANCED_MAJORITY_SHARE:
        return "mcc"
    return "accuracy"


def json_safe(value: Any) -> Any:
    """A copy of nested dicts / lists with nan and inf replaced by None (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
