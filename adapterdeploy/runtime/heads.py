"""Task heads in numpy, from the weights in the task's ``adapters.safetensors``.

A head is small (0-2 dense layers over a pooled vector) so running it in numpy, once per task group of a
batch, costs less than one onnxruntime call, and it needs no session per task (sessions with their own
thread pools are what made batch-1 latency 3x worse). ``head.onnx`` is used only when a task file carries
no head weights (an unusual head the exporter could not express as dense layers); it then runs on
onnxruntime's shared global thread pool.

Semantics (weights in "x @ W" layout, as in the bank):
    z   = features[pooling]              cls: h[:, 0]; mean: masked mean of h; pooler: tanh(h[:, 0] W_p + b_p)
    z   = act(z @ hidden_i.w + hidden_i.b) for each hidden layer i (act: tanh | relu | gelu(erf))
    out = z @ out.w + out.b
    classification: p = softmax(out), label = labels[argmax p], score = max p
    regression:     value = out[0]
    multi-label:    p = sigmoid(out), labels = [labels[c] for c if p[c] >= thresholds[c]],
                    label = labels[argmax p], score = max p          (adapterdeploy/multilabel.py)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from adapterdeploy.config import FEATURE_OF_POOLING, HeadConfig
from adapterdeploy.errors import ArtifactError
from adapterdeploy.multilabel import predict_on, sigmoid
from adapterdeploy.runtime.prediction import Prediction

__all__ = ["FEATURE_OF_POOLING", "Head", "erf", "predictions_from_logits"]


def erf(x: np.ndarray) -> np.ndarray:
    """erf to ~1.2e-7 absolute (Numerical Recipes' erfc Chebyshev fit); numpy has none and scipy is not a dep."""
    x64 = np.asarray(x, dtype=np.float64)
    z = np.abs(x64)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = (
        -z * z
        - 1.26551223
        + t
        * (
            1.00002368
            + t
            * (
                0.37409196
                + t
                * (
                    0.09678418
                    + t
                    * (
                        -0.18628806
                        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))
                    )
                )
            )
        )
    )
    ans = 1.0 - t * np.exp(poly)
    return np.where(x64 >= 0, ans, -ans).astype(np.asarray(x).dtype)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "gelu": _gelu,
}


@dataclass(frozen=True)
class Head:
    """One task's head: config + dense weights (float32), or an onnxruntime session for ``head.onnx``."""

    config: HeadConfig
    hidden: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    out_w: np.ndarray | None = None
    out_b: np.ndarray | None = None
    session: Any = None  # onnxruntime.InferenceSession for head.onnx, when there are no dense weights

    @classmethod
    def from_tensors(
        cls,
        task: str,
        config: HeadConfig,
        tensors: Mapping[str, np.ndarray],
        hidden_size: int,
        session_factory: Callable[[], Any] | None = None,
    ) -> Head:
        """Dense head from ``head.*`` tensors; falls back to ``session_factory()`` (head.onnx) when absent."""
        if "head.out.w" not in tensors:
            if session_factory is None:
                raise ArtifactError(
                    f"task {task!r} has neither head weights (head.out.w) nor a head.onnx; re-export it"
                )
            return cls(config=config, session=session_factory())
        hidden = []
        for i in range(config.hidden_layers):
            w, b = tensors.get(f"head.hidden.{i}.w"), tensors.get(f"head.hidden.{i}.b")
            if w is None or b is None:
                raise ArtifactError(
                    f"task {task!r} declares {config.hidden_layers} hidden head layers but lacks "
                    f"head.hidden.{i}.w/.b; re-export it"
                )
            if tuple(w.shape) != (hidden_size, hidden_size) or tuple(b.shape) != (hidden_size,):
                raise ArtifactError(
                    f"task {task!r}: head.hidden.{i}.w/.b have shapes {list(w.shape)} / "
                    f"{list(b.shape)}, expected [{hidden_size}, {hidden_size}] / [{hidden_size}] "
                    "(the featurizer's hidden size); the task file is inconsistent: re-export it"
                )
            hidden.append((_f32(w), _f32(b)))
        if "head.out.b" not in tensors:
            raise ArtifactError(
                f"task {task!r} has head.out.w but no head.out.b; the task file is inconsistent: re-export it"
            )
        out_w, out_b = _f32(tensors["head.out.w"]), _f32(tensors["head.out.b"])
        if out_w.shape != (hidden_size, config.out_features) or out_b.shape != (config.out_features,):
            raise ArtifactError(
                f"task {task!r}: head.out.w has shape {list(out_w.shape)}, expected [{hidden_size}, "
                f"{config.out_features}] ({len(config.labels)} labels); the task file is inconsistent"
            )
        return cls(config=config, hidden=tuple(hidden), out_w=out_w, out_b=out_b)

    @property
    def nbytes(self) -> int:
        arrays = [a for pair in self.hidden for a in pair] + [a for a in (self.out_w, self.out_b) if a is not None]
        return sum(a.nbytes for a in arrays)

    @property
    def feature(self) -> str:
        """Which output of the adapted graph this head reads (``tokens`` for a tagging head)."""
        return self.config.feature

    def logits(self, features: np.ndarray) -> np.ndarray:
        """``[rows, H]`` pooled features -> ``[rows, out]`` float32 logits (a tagging head: ``[tokens, H]``)."""
        z = np.asarray(features, dtype=np.float32)
        if self.session is not None:
            return np.asarray(self.session.run(None, {self.session.get_inputs()[0].name: z})[0], dtype=np.float32)
        act = ACTIVATIONS[self.config.hidden_activation]
        for w, b in self.hidden:
            z = act(z @ w + b)
        assert self.out_w is not None and self.out_b is not None
        return z @ self.out_w + self.out_b


def predictions_from_logits(
    task: str, config: HeadConfig, logits: np.ndarray, truncated: np.ndarray
) -> list[Prediction]:
    """Prediction rows from one task group's logits (see the module's Semantics)."""
    if config.problem_type == "regression":
        return [
            Prediction(task=task, label=None, score=float(v), probabilities=None, value=float(v), truncated=bool(tr))
            for v, tr in zip(logits[:, 0], truncated, strict=True)
        ]
    if config.multi_label:
        scores = sigmoid(logits)
        on = predict_on(scores, config.thresholds)
        names = config.labels
        return [
            Prediction(
                task=task,
                label=names[int(p.argmax())],
                score=float(p.max()),
                probabilities={lab: float(v) for lab, v in zip(names, p, strict=True)},
                value=None,
                truncated=bool(tr),
                labels=tuple(n for n, o in zip(names, row, strict=True) if o),
            )
            for p, row, tr in zip(scores, on, truncated, strict=True)
        ]
    x = logits.astype(np.float64)
    x = np.exp(x - x.max(axis=1, keepdims=True))
    probs = x / x.sum(axis=1, keepdims=True)
    labels = config.labels
    # Python floats and bools once per array (tolist) rather than per element: a fan-out builds a few
    # predictions for each of many tasks, where numpy's per-element conversions were a visible share.
    return [
        Prediction(
            task=task,
            label=labels[k],
            score=p[k],
            probabilities=dict(zip(labels, p, strict=True)),
            value=None,
            truncated=tr,
        )
        for p, k, tr in zip(probs.tolist(), probs.argmax(axis=1).tolist(), truncated.tolist(), strict=True)
    ]


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)
