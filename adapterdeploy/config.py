"""Adapter and head configuration: small frozen dataclasses that round-trip through JSON.

Pure Python (no torch): like artifacts.py it is shared by models, exporter and runtime.

Semantics of one adapter *site* (the same math in torch, in the ONNX graphs and in every backend):

    h   : output of the sub-layer's dense projection (after dropout)      [.., S, H]
    r   : the sub-layer's residual input (None for the ``layer`` site)
    LN  : the sub-layer's LayerNorm (base weights, or the task's own when per_task_layernorm)

    res = h                                   if residual_before_ln is True
    x   = LN(h + r)                           if original_ln_before, else h
    res = h + r                               if residual_before_ln == "post_add"
    res = x                                   if residual_before_ln is False
    a   = up(act(down(ln_before(x))))         (ln_before / ln_after are the adapter's own LayerNorms)
    out = ln_after(a + res)                   if adapter_residual_before_ln
    out = ln_after(a) + res                   otherwise
    y   = LN(out + r)                         if original_ln_after (and r is not None), else out

Our native placements use the simplest form, ``y = LN(h + up(act(down(h))) + r)`` for ``pfeiffer`` /
``houlsby`` and ``y = h + up(act(down(h)))`` for ``after_layer``; AdapterHub imports keep their options.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from adapterdeploy.errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "LOWER_SUFFIX",
    "PLACEMENTS",
    "SITES_BY_PLACEMENT",
    "AdapterConfig",
    "AdapterSignature",
    "HeadConfig",
    "SiteOptions",
]

PLACEMENTS = ("after_layer", "pfeiffer", "houlsby")
# Where in a layer the adapters sit: "attn" = attention output (before its residual LayerNorm),
# "ffn" = feed-forward output (before its residual LayerNorm), "layer" = after the whole layer.
SITES_BY_PLACEMENT: dict[str, tuple[str, ...]] = {
    "after_layer": ("layer",),
    "pfeiffer": ("ffn",),
    "houlsby": ("attn", "ffn"),
}
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
# A Stack's lower adapter at a site: bank inputs ``bank.{layer}.{site}_lower.*`` (models/stack.py).
LOWER_SUFFIX = "_lower"
POOLINGS = ("cls", "mean", "pooler")
PROBLEM_TYPES = ("single_label_classification", "regression")
HEAD_ACTIVATIONS = ("tanh", "relu", "gelu")


@dataclass(frozen=True)
class SiteOptions:
    """How an adapter site combines with the sub-layer's residual and LayerNorm (see module docstring)."""

    original_ln_before: bool = False
    original_ln_after: bool = True
    residual_before_ln: bool | Literal["post_add"] = True
    adapter_residual_before_ln: bool = False
    ln_before: bool = False
    ln_after: bool = False

    def __post_init__(self) -> None:
        if self.residual_before_ln not in (True, False, "post_add"):
            raise ConfigError(
                f"residual_before_ln must be true, false or 'post_add', got {self.residual_before_ln!r}"
            )


@dataclass(frozen=True)
class AdapterConfig:
    """One task's adapter layout.

    ``bottleneck`` wins over ``reduction_factor`` when both are given. ``layers`` = None means every
    layer; a subset is AdapterDrop-style training (layers outside it carry no adapter).
    """

    placement: str = "after_layer"
    reduction_factor: float | None = 16.0
    bottleneck: int | None = None
    activation: str = "relu"
    layers: tuple[int, ...] | None = None
    per_task_layernorm: bool = False
    site: SiteOptions = field(default_factory=SiteOptions)
    init_std: float = 1e-3

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"unknown placement {self.placement!r}; choose one of {', '.join(PLACEMENTS)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}"
            )
        if self.bottleneck is None and (self.reduction_factor is None or self.reduction_factor <= 0):
            raise ConfigError("give a positive --reduction-factor or an explicit --bottleneck size")
        if self.bottleneck is not None and self.bottleneck < 1:
            raise ConfigError(f"bottleneck must be >= 1, got {self.bottleneck}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(sorted({int(i) for i in self.layers})))
        if isinstance(self.site, dict):
            object.__setattr__(self, "site", SiteOptions(**self.site))

    @property
    def sites(self) -> tuple[str, ...]:
        return SITES_BY_PLACEMENT[self.placement]

    def bottleneck_size(self, hidden_size: int) -> int:
        if self.bottleneck is not None:
            return self.bottleneck
        assert self.reduction_factor is not None
        return max(1, int(hidden_size // self.reduction_factor))

    def adapter_layers(self, num_layers: int) -> tuple[int, ...]:
        layers = tuple(range(num_layers)) if self.layers is None else self.layers
        bad = [i for i in layers if not 0 <= i < num_layers]
        if bad:
            raise ConfigError(
                f"adapter layers {bad} out of range: the base has {num_layers} layers (0..{num_layers - 1})"
            )
        return layers

    def site_options(self) -> SiteOptions:
        """The effective options; the ``layer`` site has no residual input nor LayerNorm of its own."""
        if self.placement == "after_layer":
            return SiteOptions(original_ln_before=False, original_ln_after=False, residual_before_ln=True,
                               ln_before=self.site.ln_before, ln_after=self.site.ln_after,
                               adapter_residual_before_ln=self.site.adapter_residual_before_ln)
        return self.site

    def signature(self) -> AdapterSignature:
        return AdapterSignature(
            placement=self.placement,
            activation=self.activation,
            site=self.site_options(),
            per_task_layernorm=self.per_task_layernorm,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdapterConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown adapter config keys {sorted(unknown)}")
        d = dict(d)
        if d.get("layers") is not None:
            d["layers"] = tuple(d["layers"])
        if isinstance(d.get("site"), dict):
            d["site"] = SiteOptions(**d["site"])
        return cls(**d)


@dataclass(frozen=True)
class AdapterSignature:
    """What must be identical for tasks to share one featurizer graph.

    The bottleneck size and the set of adapted layers may differ between tasks (zero padding is exact);
    the placement, activation, site options and per-task LayerNorms change the graph itself.
    """

    placement: str
    activation: str
    site: SiteOptions
    per_task_layernorm: bool
    # Stack: a second (lower) adapter slot before each site's adapter, e.g. a shared language adapter
    # (``models/stack.py``). Left out of the JSON when False, so older fingerprints stay the same.
    stack: bool = False

    @property
    def sites(self) -> tuple[str, ...]:
        return SITES_BY_PLACEMENT[self.placement]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.stack:
            del d["stack"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdapterSignature:
        d = dict(d)
        d["site"] = SiteOptions(**d["site"])
        return cls(**d)

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def describe_difference(self, other: AdapterSignature) -> str:
        a, b = _flatten(self.to_dict()), _flatten(other.to_dict())
        diffs = [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        return "; ".join(diffs) or "none"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass(frozen=True)
class HeadConfig:
    """A sequence-level head: pooling, 0-2 hidden dense layers, then the output layer.

    Semantics: ``z = pool(h); for each hidden layer: z = act(W z + b); out = W_o z + b_o``;
    classification scores are ``softmax(out)``, regression reads ``out[0]``. ``pooler`` pooling is the
    base model's own pooler, ``tanh(W_p h[CLS] + b_p)``, with the base's (frozen) weights.
    """

    problem_type: str = "single_label_classification"
    num_labels: int = 2
    labels: tuple[str, ...] = ()
    pooling: str = "cls"
    hidden_layers: int = 0
    hidden_activation: str = "tanh"

    def __post_init__(self) -> None:
        if self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"unknown problem_type {self.problem_type!r}; choose one of {', '.join(PROBLEM_TYPES)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        if not 0 <= self.hidden_layers <= 2:
            raise ConfigError(f"a head has 0 to 2 hidden dense layers, got {self.hidden_layers}")
        if self.hidden_activation not in HEAD_ACTIVATIONS:
            raise ConfigError(
                f"unknown head activation {self.hidden_activation!r}; choose one of {', '.join(HEAD_ACTIVATIONS)}"
            )
        if self.problem_type == "regression":
            if self.num_labels != 1:
                object.__setattr__(self, "num_labels", 1)
        elif self.num_labels < 2:
            raise ConfigError(f"classification needs at least 2 labels, got {self.num_labels}")
        labels = tuple(str(x) for x in self.labels)
        if not labels:
            labels = ("value",) if self.problem_type == "regression" else tuple(str(i) for i in range(self.num_labels))
        if self.problem_type != "regression" and len(labels) != self.num_labels:
            raise ConfigError(f"{len(labels)} label names given for {self.num_labels} labels")
        object.__setattr__(self, "labels", labels)

    @property
    def out_features(self) -> int:
        return 1 if self.problem_type == "regression" else self.num_labels

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = list(self.labels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown head config keys {sorted(unknown)}")
        d = dict(d)
        d["labels"] = tuple(d.get("labels") or ())
        return cls(**d)

    def with_labels(self, labels: tuple[str, ...]) -> HeadConfig:
        return replace(self, labels=labels, num_labels=len(labels) if self.problem_type != "regression" else 1)
