"""Embeddings from the hot featurizer: the base model's (``task=None``) or a task's adapted featurizer's.

Why here and not a second model: the adapted graph already pools every row (``cls``, ``mean`` and, with a
pooler, ``pooled``), so an embedding is one more kind of row in the same mixed forward as predictions.
The base model is the bank row whose every adapter weight is zero: for the signatures where a zero adapter
adds nothing (:func:`zero_adapter_is_base`), that row computes exactly the plain encoder, so
``embed(texts)`` on the embedded all-MiniLM-L6-v2 is sentence-transformers' embedding (mean pooling,
then L2 normalisation), from the same sessions that serve the tasks.

Semantics (row r, pooled features f from the adapted graph, eps = 1e-12 as torch's F.normalize):
    v[r] = f[pooling][r] / max(||f[pooling][r]||_2, eps)        pooling: mean | cls | pooler
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from adapterdeploy.config import AdapterSignature
from adapterdeploy.errors import InputError
from adapterdeploy.runtime.heads import FEATURE_OF_POOLING

__all__ = ["EMBED_POOLINGS", "Embed", "Embedding", "l2_normalize", "zero_adapter_is_base"]

EMBED_POOLINGS = tuple(FEATURE_OF_POOLING)  # cls, mean, pooler
NORM_EPS = 1e-12


@dataclass(frozen=True)
class Embed:
    """The target of an embedding row: whose featurizer (``None``: the base model) and which pooling.

    Used in place of a task name in ``Deployment.predict_mixed`` rows, so embeddings and predictions of
    any tasks share one forward (and one server batch).
    """

    task: str | None = None
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.task is not None and not isinstance(self.task, str):
            raise InputError(f"an embedding's task is a task name or None (the base model), got {self.task!r:.60}")
        if self.pooling not in EMBED_POOLINGS:
            raise InputError(f"unknown pooling {self.pooling!r:.40}; choose one of {', '.join(EMBED_POOLINGS)}")

    @property
    def feature(self) -> str:
        """The adapted graph's output this pooling reads."""
        return FEATURE_OF_POOLING[self.pooling]


@dataclass(frozen=True, eq=False)
class Embedding:
    """One row's L2-normalised embedding (float32 ``[H]``) and whether its text was truncated."""

    task: str | None
    pooling: str
    vector: np.ndarray
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return {
            "task": self.task,
            "pooling": self.pooling,
            "embedding": [float(x) for x in self.vector],
            "truncated": self.truncated,
        }


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (float32; a zero row stays zero), as torch's ``F.normalize``."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, NORM_EPS)


def zero_adapter_is_base(signature: AdapterSignature) -> bool:
    """Whether an all-zero bank row makes every adapter site compute what the plain encoder computes.

    Follows config.py's site semantics with ``a = 0`` (tracked symbolically; the exporter's numeric
    ``zero_adapter_is_identity`` agrees on every option combination, see the tests). Per-task LayerNorms
    replace the base's, so a zero row there is not the base model.
    """
    s = signature.site
    if signature.per_task_layernorm or (s.ln_after and s.adapter_residual_before_ln):
        return False
    sublayer = signature.placement != "after_layer"  # "layer" sites have no residual input and no LayerNorm
    x = "LN(h+r)" if s.original_ln_before and sublayer else "h"
    res = "h+r" if s.original_ln_before and sublayer and s.residual_before_ln == "post_add" else "h"
    if s.residual_before_ln is False:
        res = x
    # a = 0, and ln_after(0) = 0 for a zero row, so out = res.
    if s.original_ln_after and sublayer:
        return res == "h"  # LN(out + r) == LN(h + r)
    return res == ("LN(h+r)" if sublayer else "h")
