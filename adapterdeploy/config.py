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
from adapterdeploy.validation import MAX_BOTTLENECK, MAX_LABELS

__all__ = [
    "ACTIVATIONS",
    "CLS_ONLY_FEATURES",
    "CLS_ONLY_INPUT",
    "FUSION_SLOT",
    "FUSION_SUFFIX",
    "LORA_MODULES",
    "LOWER_SUFFIX",
    "NO_BOTTLENECK",
    "PLACEMENTS",
    "RANK_AXIS",
    "SITES_BY_PLACEMENT",
    "TOKENS_OUTPUT",
    "TOKEN_CLASSIFICATION",
    "AdapterConfig",
    "AdapterSignature",
    "HeadConfig",
    "PeftSpec",
    "SiteOptions",
    "combine_signatures",
    "signature_misfit",
]

PLACEMENTS = ("after_layer", "pfeiffer", "houlsby")
# "none": no bottleneck adapter at all (a task that only carries PEFT LoRA / IA3 deltas, see PeftSpec).
NO_BOTTLENECK = "none"
# Where in a layer the adapters sit: "attn" = attention output (before its residual LayerNorm),
# "ffn" = feed-forward output (before its residual LayerNorm), "layer" = after the whole layer.
SITES_BY_PLACEMENT: dict[str, tuple[str, ...]] = {
    "after_layer": ("layer",),
    "pfeiffer": ("ffn",),
    "houlsby": ("attn", "ffn"),
    NO_BOTTLENECK: (),
}
# The linear layers of a BERT-family layer that PEFT deltas may sit on (our names; see models/lora.py).
LORA_MODULES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
# Axis of the LoRA rank in each PEFT bank input (T axis included): lora_a [T, in, R], lora_b [T, R, out].
RANK_AXIS = {"lora_a": 2, "lora_b": 1}
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
# A Stack's lower adapter at a site: bank inputs ``bank.{layer}.{site}_lower.*`` (models/stack.py).
LOWER_SUFFIX = "_lower"
# AdapterFusion (models/fusion.py): slot j >= 1 of a fused site is ``bank.{layer}.{site}_fuse{j}.*`` (slot 0 is
# the site's own ``bank.{layer}.{site}.*``); the fusion attention weights are ``bank.{layer}.{site}_fusion.*``.
FUSION_SLOT = "_fuse"
FUSION_SUFFIX = "_fusion"
POOLINGS = ("cls", "mean", "pooler")
# "token_classification": a tagging head, one label per word (first-subword labelling; runtime/tagging.py).
TOKEN_CLASSIFICATION = "token_classification"
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression", TOKEN_CLASSIFICATION)
# Which output of the adapted graph a head reads: a sequence head its pooling's, a token head every token's.
FEATURE_OF_POOLING = {"cls": "cls", "mean": "mean", "pooler": "pooled"}
TOKENS_OUTPUT = "tokens"
# The adapted graph's optional bool input (default False): True computes its last layer at the first token only,
# for batches that read only the first-token features (CLS_ONLY_FEATURES); then "mean" / "tokens" are not valid.
CLS_ONLY_INPUT = "cls_only"
CLS_ONLY_FEATURES = frozenset({"cls", "pooled"})
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
            raise ConfigError(f"residual_before_ln must be true, false or 'post_add', got {self.residual_before_ln!r}")


@dataclass(frozen=True)
class PeftSpec:
    """A task's PEFT deltas on the encoder's linear layers (imported by ``adapterdeploy import-peft``).

    ``lora``: modules (of :data:`LORA_MODULES`) carrying a LoRA delta, every one at ``rank`` (smaller ranks are
    zero-padded at import: exact). ``ia3``: ``"module.in"`` (input scaling, PEFT's feedforward modules) or
    ``"module.out"`` (output scaling) entries. ``info`` records the PEFT config it came from (type, alpha,
    rslora, ...), for people; the weights alone define the math (scaling is folded into LoRA's B).
    """

    lora: tuple[str, ...] = ()
    ia3: tuple[str, ...] = ()
    rank: int = 0
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora", tuple(sorted(set(self.lora))))
        object.__setattr__(self, "ia3", tuple(sorted(set(self.ia3))))
        bad = [m for m in self.lora if m not in LORA_MODULES]
        bad += [e for e in self.ia3 if e.rsplit(".", 1)[0] not in LORA_MODULES or not e.endswith((".in", ".out"))]
        if bad:
            raise ConfigError(f"unknown PEFT module(s) {bad}; known: {', '.join(LORA_MODULES)} (ia3 as module.in/.out)")
        if self.lora and self.rank < 1:
            raise ConfigError(f"a LoRA task needs rank >= 1, got {self.rank}")

    def to_dict(self) -> dict[str, Any]:
        return {"lora": list(self.lora), "ia3": list(self.ia3), "rank": self.rank, "info": dict(self.info)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PeftSpec:
        unknown = set(d) - {"lora", "ia3", "rank", "info"}
        if unknown:
            raise ConfigError(f"unknown peft config keys {sorted(unknown)}")
        return cls(
            lora=tuple(d.get("lora", ())),
            ia3=tuple(d.get("ia3", ())),
            rank=int(d.get("rank", 0)),
            info=dict(d.get("info") or {}),
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
    peft: PeftSpec | None = None

    def __post_init__(self) -> None:
        if self.placement not in (*PLACEMENTS, NO_BOTTLENECK):
            raise ConfigError(f"unknown placement {self.placement!r}; choose one of {', '.join(PLACEMENTS)}")
        if isinstance(self.peft, dict):
            object.__setattr__(self, "peft", PeftSpec.from_dict(self.peft))
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        rf = self.reduction_factor
        if rf is not None and (isinstance(rf, bool) or not isinstance(rf, int | float)):
            raise ConfigError(f"reduction_factor must be a number, got {rf!r:.40}")
        if self.bottleneck is None and (self.reduction_factor is None or self.reduction_factor <= 0):
            raise ConfigError("give a positive --reduction-factor or an explicit --bottleneck size")
        if self.bottleneck is not None and (
            isinstance(self.bottleneck, bool)
            or not isinstance(self.bottleneck, int)
            or not 1 <= self.bottleneck <= MAX_BOTTLENECK
        ):
            raise ConfigError(f"bottleneck must be an integer in 1..{MAX_BOTTLENECK}, got {self.bottleneck!r:.40}")
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
        size = max(1, int(hidden_size // self.reduction_factor))
        if size > MAX_BOTTLENECK:
            raise ConfigError(
                f"reduction_factor {self.reduction_factor} gives a bottleneck of {size} for hidden size "
                f"{hidden_size}, more than {MAX_BOTTLENECK}; use a reduction factor >= 1"
            )
        return size

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
            return SiteOptions(
                original_ln_before=False,
                original_ln_after=False,
                residual_before_ln=True,
                ln_before=self.site.ln_before,
                ln_after=self.site.ln_after,
                adapter_residual_before_ln=self.site.adapter_residual_before_ln,
            )
        return self.site

    def signature(self) -> AdapterSignature:
        return AdapterSignature(
            placement=self.placement,
            activation=self.activation,
            site=self.site_options(),
            per_task_layernorm=self.per_task_layernorm,
            lora=self.peft.lora if self.peft else (),
            ia3=self.peft.ia3 if self.peft else (),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        if self.peft is None:
            d.pop("peft")  # bottleneck-only configs keep their pre-PEFT JSON
        else:
            d["peft"] = self.peft.to_dict()
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
        if isinstance(d.get("peft"), dict):
            d["peft"] = PeftSpec.from_dict(d["peft"])
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
    # AdapterFusion: the number of adapter slots per site (0 = no fusion), ``models/fusion.py``. A fusion
    # featurizer also serves plain tasks (fusion rows zero = the plain site). Left out of the JSON when 0.
    fusion: int = 0
    # PEFT modules with LoRA / IA3 bank inputs (PeftSpec); left out of the JSON when empty, likewise.
    lora: tuple[str, ...] = ()
    ia3: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora", tuple(sorted(set(self.lora))))
        object.__setattr__(self, "ia3", tuple(sorted(set(self.ia3))))

    @property
    def sites(self) -> tuple[str, ...]:
        return SITES_BY_PLACEMENT[self.placement]

    @property
    def has_bottleneck(self) -> bool:
        return self.placement != NO_BOTTLENECK

    def bottleneck_part(self) -> AdapterSignature:
        """The signature without its PEFT modules and fusion slots (what bottleneck tasks must agree on)."""
        return replace(self, lora=(), ia3=(), fusion=0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.stack:
            del d["stack"]
        if not self.fusion:
            del d["fusion"]
        for k in ("lora", "ia3"):  # omitted when empty: bottleneck-only fingerprints stay what they were
            if d[k]:
                d[k] = list(d[k])
            else:
                d.pop(k)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdapterSignature:
        d = dict(d)
        d["site"] = SiteOptions(**d["site"])
        for k in ("lora", "ia3"):
            d[k] = tuple(d.get(k, ()))
        return cls(**d)

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def describe_difference(self, other: AdapterSignature) -> str:
        a, b = _flatten(self.to_dict()), _flatten(other.to_dict())
        diffs = [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        return "; ".join(diffs) or "none"


def combine_signatures(named: list[tuple[str, AdapterSignature]]) -> AdapterSignature:
    """The one featurizer signature serving every task: bottleneck parts must agree, PEFT modules unite.

    Tasks without a bottleneck adapter (PEFT-only) take the bottleneck part of the others (their rows there
    are zero; the caller checks that a zero adapter is the identity for that site form). Raises ConfigError
    naming the two tasks whose bottleneck signatures differ.
    """
    with_bn = [(n, s) for n, s in named if s.has_bottleneck]
    first_name, first = with_bn[0] if with_bn else named[0]
    for name, sig in with_bn[1:]:
        if sig.bottleneck_part() != first.bottleneck_part():
            raise ConfigError(
                f"tasks {first_name!r} and {name!r} have different adapter signatures "
                f"({first.describe_difference(sig)}); tasks in one deployment share one featurizer graph, "
                "so export them into separate deployments (separate --out)"
            )
    lora = tuple(sorted({m for _, s in named for m in s.lora}))
    ia3 = tuple(sorted({m for _, s in named for m in s.ia3}))
    return replace(first, lora=lora, ia3=ia3, fusion=max(s.fusion for _, s in named))


def signature_misfit(task: AdapterSignature, featurizer: AdapterSignature) -> str | None:
    """Why a task cannot run on an existing featurizer (None when it can): differing bottleneck part, or
    PEFT modules the featurizer graph has no bank input for."""
    if task.has_bottleneck and task.bottleneck_part() != featurizer.bottleneck_part():
        return featurizer.bottleneck_part().describe_difference(task.bottleneck_part())
    if task.fusion > featurizer.fusion:
        return (
            f"the task fuses {task.fusion} adapters, the featurizer has {featurizer.fusion} fusion slots per site"
            + (" (it was exported without fusion tasks)" if not featurizer.fusion else "")
        )
    extra = sorted(set(task.lora) - set(featurizer.lora)) + sorted(set(task.ia3) - set(featurizer.ia3))
    if extra:
        return (
            f"the featurizer has no PEFT bank input for {extra} (its LoRA modules: {list(featurizer.lora)}, "
            f"IA3: {list(featurizer.ia3)})"
        )
    return None


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
    Multi-label classification scores each label with ``sigmoid(out)`` and turns it on at
    ``>= thresholds[c]`` (one per label, tuned on the eval file by the trainer; 0.5 by default).
    Token classification (``--head tagging``) applies the same dense layers to every token's last hidden
    state instead of a pooled vector (``pooling`` is unused): ``out[s] = head(h[s])``, softmax per token.
    """

    problem_type: str = "single_label_classification"
    num_labels: int = 2
    labels: tuple[str, ...] = ()
    pooling: str = "cls"
    hidden_layers: int = 0
    hidden_activation: str = "tanh"
    thresholds: tuple[float, ...] = ()

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
        if len(set(labels)) != len(labels):
            dupes = sorted({x for x in labels if labels.count(x) > 1})
            raise ConfigError(f"label names must be unique, {dupes[:5]} repeat; a prediction could not tell them apart")
        object.__setattr__(self, "labels", labels)
        thresholds = tuple(float(t) for t in self.thresholds)
        if self.problem_type != "multi_label_classification":
            if thresholds:
                raise ConfigError(f"thresholds are for multi-label heads; this head is {self.problem_type}")
        else:
            thresholds = thresholds or (0.5,) * self.num_labels
            if len(thresholds) != self.num_labels or not all(0.0 < t < 1.0 for t in thresholds):
                raise ConfigError(
                    f"a multi-label head needs {self.num_labels} thresholds in (0, 1), one per label; "
                    f"got {list(thresholds)}"
                )
        object.__setattr__(self, "thresholds", thresholds)

    @property
    def multi_label(self) -> bool:
        return self.problem_type == "multi_label_classification"

    @property
    def token_level(self) -> bool:
        """A tagging head: logits per token, read from the adapted graph's ``tokens`` output."""
        return self.problem_type == TOKEN_CLASSIFICATION

    @property
    def feature(self) -> str:
        """The adapted graph output this head reads (``tokens`` for a tagging head, else its pooling's)."""
        return TOKENS_OUTPUT if self.token_level else FEATURE_OF_POOLING[self.pooling]

    @property
    def out_features(self) -> int:
        return 1 if self.problem_type == "regression" else self.num_labels

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["thresholds"] = list(self.thresholds)
        if not self.thresholds:
            del d["thresholds"]  # task.json of other heads stays as before
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown head config keys {sorted(unknown)}")
        d = dict(d)
        labels = d.get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ConfigError(f"labels must be a list of strings, got {labels!r:.80}")
        for key in ("num_labels", "hidden_layers"):
            value = d.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{key} must be an integer, got {value!r:.40}")
        if not 0 <= d.get("num_labels", 2) <= MAX_LABELS:
            raise ConfigError(f"num_labels {d['num_labels']} is out of range (at most {MAX_LABELS})")
        d["labels"] = tuple(labels)
        d["thresholds"] = tuple(d.get("thresholds") or ())
        return cls(**d)

    def with_labels(self, labels: tuple[str, ...]) -> HeadConfig:
        thresholds = self.thresholds if len(self.thresholds) == len(labels) else ()
        return replace(
            self,
            labels=labels,
            num_labels=len(labels) if self.problem_type != "regression" else 1,
            thresholds=thresholds,
        )
