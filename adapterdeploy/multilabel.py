"""Multi-label classification in pure numpy: sigmoid scores, per-label thresholds, their tuning and metrics.

Shared by the trainer (threshold tuning on the eval file), the runtime (predictions) and ``check --eval``,
so every stage decides "label on" the same way. No torch, no scikit-learn (the runtime installs numpy only);
the F1 definitions follow scikit-learn's ``f1_score(average="micro" | "macro")`` on multi-hot arrays.

Semantics (logits z [n, C], gold multi-hot y [n, C], thresholds t [C]):

    p[i, c]      = 1 / (1 + exp(-z[i, c]))                          (independent sigmoids, BCE training)
    on[i, c]     = p[i, c] >= t[c]
    micro_f1     = 2 TP / (2 TP + FP + FN) over every (row, label)   0 when the denominator is 0
    macro_f1     = mean over labels of the per-label binary F1
    subset_accuracy = mean over rows of all(on[i] == y[i])
    tuned t[c]   = argmax over the grid G of F1 of label c on the eval rows; ties -> the value closest
                   to 0.5; a label never positive in the eval rows keeps 0.5
    G            = 0.05, 0.10, ..., 0.95
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLD",
    "THRESHOLD_GRID",
    "multilabel_metrics",
    "predict_on",
    "sigmoid",
    "tune_thresholds",
]

DEFAULT_THRESHOLD = 0.5
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (float64)."""
    z = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def predict_on(probs: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Boolean ``[n, C]``: which labels are on."""
    return np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)[None, :]


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def multilabel_metrics(gold: np.ndarray, on: np.ndarray) -> dict[str, float]:
    """micro_f1, macro_f1 and subset_accuracy of boolean predictions ``on`` against multi-hot ``gold``."""
    y = np.asarray(gold).astype(bool)
    p = np.asarray(on).astype(bool)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"gold has shape {y.shape} but the predictions {p.shape}; both must be [rows, labels]")
    if y.shape[0] == 0:
        raise ValueError("cannot compute a metric over 0 rows")
    tp, fp, fn = (y & p).sum(0), (~y & p).sum(0), (y & ~p).sum(0)
    return {
        "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "macro_f1": float(_f1(tp, fp, fn).mean()),
        "subset_accuracy": float(np.mean(np.all(y == p, axis=1))),
    }


def tune_thresholds(gold: np.ndarray, probs: np.ndarray, grid: Sequence[float] = THRESHOLD_GRID) -> tuple[float, ...]:
    """Per-label thresholds that maximise each label's F1 on these rows (see the module's Semantics)."""
    y = np.asarray(gold).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 2:
        raise ValueError(f"gold has shape {y.shape} but probs {p.shape}; both must be [rows, labels]")
    g = np.asarray(sorted(grid, key=lambda t: (abs(t - DEFAULT_THRESHOLD), t)), dtype=np.float64)
    on = p[None, :, :] >= g[:, None, None]  # [G, n, C]
    tp = (on & y[None]).sum(1)
    fp = (on & ~y[None]).sum(1)
    fn = (~on & y[None]).sum(1)
    f1 = _f1(tp, fp, fn)  # [G, C]; argmax takes the first best, i.e. the one closest to 0.5
    best = g[np.argmax(f1, axis=0)]
    return tuple(float(t) if y[:, c].any() else DEFAULT_THRESHOLD for c, t in enumerate(best))
