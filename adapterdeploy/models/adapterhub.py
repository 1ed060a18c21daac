"""Import a bottleneck adapter + classification, multi-label or tagging head saved by AdapterHub's ``adapters``.

A ``tagging`` head (``add_tagging_head``) is the same stack of layers applied to every token's hidden state; it
becomes a ``token_classification`` head (runtime: one label per word, runtime/tagging.py).

Reads what ``model.save_adapter(dir, name, with_head=True)`` (or ``save_adapter`` + ``save_head``) writes:
``adapter_config.json`` + ``pytorch_adapter.bin`` / ``adapter.safetensors`` and ``head_config.json`` +
``pytorch_model_head.bin`` / ``model_head.safetensors``. Pickled ``.bin`` files are read only through
``torch.load(weights_only=True)``. The ``adapters`` library itself is needed only by
:func:`adapterhub_reference_logits` (the optional cross-check); the import reads JSON and tensors.

Semantics (the adapters library's ``Adapter.pre_forward / forward / post_forward``, eval mode):

    h, r, LN  = sub-layer output (after dense + dropout), its residual input, its LayerNorm
    res       = h                  if residual_before_ln is True
    x         = LN(h + r)          if original_ln_before, else h
    res       = h + r              if residual_before_ln == "post_add"   (needs original_ln_before)
    res       = x                  if residual_before_ln is False
    a         = s * up(act(down(ln_before(x))))        s = scaling: float, learned [1] or channel [H]
    out       = ln_after(a + res)  if adapter_residual_before_ln, else ln_after(a) + res
    y         = LN(out + r)        if original_ln_after, else out

which is :func:`adapterdeploy.models.adapters.adapter_site` once ``s`` is folded into ``up``:
``s * (W x + b) = (diag(s) W) x + s * b`` (exact up to float rounding). ``mh_adapter`` is our ``attn``
site, ``output_adapter`` our ``ffn`` site. The head ``ClassificationHead(layers=L)`` is
``z = pooled; (L - 1) x [z = act(W z + b)]; logits = W_o z + b_o`` over CLS or the base's pooler.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adapterdeploy.config import TOKEN_CLASSIFICATION, AdapterConfig, HeadConfig, SiteOptions
from adapterdeploy.errors import ArtifactError, ConfigError, FingerprintMismatchError, UnsupportedAdapterError
from adapterdeploy.models.base import BaseModel
from adapterdeploy.models.checkpoint import TaskCheckpoint
from adapterdeploy.validation import check_task_name, read_json_object

__all__ = [
    "AdapterHubImportWarning",
    "adapterhub_reference_logits",
    "import_adapterhub",
    "library_logits",
    "verify_import",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter.safetensors", "pytorch_adapter.bin")
HEAD_CONFIG = "head_config.json"
HEAD_WEIGHTS = ("model_head.safetensors", "pytorch_model_head.bin")
FUSION_CONFIG = "adapter_fusion_config.json"

SUPPORTED = "adapterdeploy imports the bottleneck configs seq_bn (Pfeiffer) and double_seq_bn (Houlsby)"

# BnConfig defaults (adapters 1.3), for files written by older versions that omit a key.
_BN_DEFAULTS: dict[str, Any] = {
    "original_ln_before": False,
    "original_ln_after": True,
    "ln_before": False,
    "ln_after": False,
    "is_parallel": False,
    "scaling": 1.0,
    "use_gating": False,
    "residual_before_ln": True,
    "adapter_residual_before_ln": False,
    "inv_adapter": None,
    "leave_out": [],
    "phm_layer": False,
    "stochastic_depth": 0.0,
    "reduction_factor": 16,
    "cross_adapter": False,
}
_SEQ_BN = {
    **_BN_DEFAULTS,
    "original_ln_before": True,
    "mh_adapter": False,
    "output_adapter": True,
    "non_linearity": "relu",
}
_DOUBLE_SEQ_BN = {**_BN_DEFAULTS, "mh_adapter": True, "output_adapter": True, "non_linearity": "swish"}
# Config names the library accepts as strings, for hand-written adapter_config.json files.
_NAMED_CONFIGS = {"seq_bn": _SEQ_BN, "pfeiffer": _SEQ_BN, "double_seq_bn": _DOUBLE_SEQ_BN, "houlsby": _DOUBLE_SEQ_BN}
_ARCHITECTURES = {
    "lora": "LoRA",
    "prefix_tuning": "prefix tuning",
    "prompt_tuning": "prompt tuning",
    "reft": "ReFT",
    "union": "a ConfigUnion (MAM / UniPELT style)",
}
# adapters' non_linearity (transformers' get_activation names) -> our activation; others are refused.
_NON_LINEARITIES = {"relu": "relu", "gelu": "gelu", "swish": "silu", "silu": "silu", "tanh": "tanh"}
_HEAD_ACTIVATIONS = ("tanh", "relu", "gelu")

_SITE_KEY = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.(attention\.output|output)\.adapters\.([^.]+)\.(.+)$")
_HEAD_KEY = re.compile(r"^heads\.(.+)\.(\d+)\.(weight|bias)$")


class AdapterHubImportWarning(UserWarning):
    """The import worked but something deserves a look (e.g. the adapter was saved from another model name)."""


def _load_tensors(directory: Path, names: tuple[str, str]) -> tuple[dict[str, Tensor], Path]:
    """Safetensors if present, else the pickle through ``torch.load(weights_only=True)`` (no code runs)."""
    safe, pickled = (directory / n for n in names)
    if not safe.is_file() and not pickled.is_file():
        raise ArtifactError(f"{directory} has neither {names[0]} nor {names[1]}; was it written by save_adapter?")
    path = safe if safe.is_file() else pickled
    try:
        if path is safe:
            from safetensors.torch import load_file

            sd: Any = load_file(str(safe), device="cpu")
        else:
            sd = torch.load(str(pickled), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's UnpicklingError, safetensors' errors, OSError
        raise ArtifactError(f"cannot read the weights in {path}: {exc}") from exc
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ArtifactError(f"{path} is not a state dict of tensors")
    return dict(sd), path


def _adapter_files(adapter_dir: Path) -> Path:
    if not adapter_dir.is_dir():
        raise ArtifactError(f"adapter directory {adapter_dir} does not exist")
    if (adapter_dir / ADAPTER_CONFIG).is_file():
        return adapter_dir / ADAPTER_CONFIG
    if (adapter_dir / FUSION_CONFIG).is_file():
        fusion = read_json_object(adapter_dir / FUSION_CONFIG)
        raise UnsupportedAdapterError(
            f"{adapter_dir} holds an AdapterFusion ({fusion.get('name', '?')!r} over {fusion.get('adapter_names')}); "
            f"fusion is not supported: {SUPPORTED}. Import each fused adapter on its own instead"
        )
    subdirs = sorted(p.name for p in adapter_dir.iterdir() if (p / ADAPTER_CONFIG).is_file())
    hint = f"; it has adapters in the sub-directories {subdirs}: pass one of them" if subdirs else ""
    raise ArtifactError(f"{adapter_dir} has no {ADAPTER_CONFIG}: not a directory written by save_adapter{hint}")


def _config_name(cfg: dict[str, Any]) -> str:
    """What the library would call this bottleneck config, for messages."""
    base = "double_seq_bn" if cfg.get("mh_adapter") and cfg.get("output_adapter") else "seq_bn"
    if cfg.get("phm_layer"):
        return "compacter" if base == "double_seq_bn" else "compacter++"
    if cfg.get("is_parallel"):
        return "par_bn"
    if cfg.get("inv_adapter"):
        return f"{base}_inv"
    return base


def _bottleneck_options(raw: Any, where: Path) -> tuple[dict[str, Any], str]:
    """The saved config as a complete BnConfig dict, refusing every method or option we cannot run exactly."""
    if isinstance(raw, str):
        if raw not in _NAMED_CONFIGS:
            raise UnsupportedAdapterError(f"{where}: adapter config {raw!r} is not supported; {SUPPORTED}")
        raw = _NAMED_CONFIGS[raw]
    if not isinstance(raw, dict):
        raise ArtifactError(f"{where}: 'config' must be an object or a config name, got {raw!r}")
    arch = raw.get("architecture")
    if arch not in (None, "bottleneck"):
        what = _ARCHITECTURES.get(arch, f"architecture {arch!r}")
        if arch == "lora" and raw.get("composition_mode") == "scale":
            what = "IA3 (a LoRA-architecture config with composition_mode 'scale')"
        elif arch == "union":
            parts = [c.get("architecture") or _config_name(c) for c in raw.get("configs", []) if isinstance(c, dict)]
            what = f"a ConfigUnion of {parts} (MAM / UniPELT style)"
        raise UnsupportedAdapterError(
            f"{where}: the adapter is {what} (architecture {arch!r}), not supported; {SUPPORTED}"
        )
    cfg = {**_BN_DEFAULTS, **raw}
    name = _config_name(cfg)
    refused = [
        ("phm_layer", cfg["phm_layer"], "PHM (Compacter) layers"),
        ("is_parallel", cfg["is_parallel"], "parallel adapters"),
        ("inv_adapter", cfg["inv_adapter"], "invertible embedding adapters"),
        ("use_gating", cfg["use_gating"], "gated adapters (UniPELT)"),
        ("stochastic_depth", cfg["stochastic_depth"], "stochastic depth"),
    ]
    for key, value, label in refused:
        if value:
            raise UnsupportedAdapterError(
                f"{where}: adapter config {name!r} uses {label} ({key}={value!r}), not supported; "
                f"{SUPPORTED} without {key}"
            )
    if not cfg.get("output_adapter"):
        raise UnsupportedAdapterError(
            f"{where}: adapter config {name!r} has output_adapter={cfg.get('output_adapter')!r}, "
            f"mh_adapter={cfg.get('mh_adapter')!r}: only FFN-output (seq_bn) or attention+FFN (double_seq_bn) "
            "adapters are supported"
        )
    act = cfg.get("non_linearity")
    if not isinstance(act, str) or act.lower() not in _NON_LINEARITIES:
        raise UnsupportedAdapterError(
            f"{where}: adapter config {name!r} has non_linearity={act!r}, not supported; "
            f"supported: {', '.join(_NON_LINEARITIES)}"
        )
    rbl = cfg["residual_before_ln"]
    if rbl != "post_add":
        cfg["residual_before_ln"] = bool(rbl)
    elif not cfg["original_ln_before"]:
        raise UnsupportedAdapterError(
            f"{where}: residual_before_ln='post_add' needs original_ln_before=True (the adapters library cannot "
            "run this config either: its residual is never set)"
        )
    scaling = cfg["scaling"]
    numeric = isinstance(scaling, int | float) and not isinstance(scaling, bool)
    if not numeric and scaling not in ("learned", "channel"):
        raise UnsupportedAdapterError(f"{where}: unknown scaling {scaling!r}; expected a number, 'learned', 'channel'")
    return cfg, name


def _bottleneck_size(reduction_factor: Any, hidden: int, layers: list[int], where: Path) -> tuple[int, float | None]:
    """Bottleneck size as the library computes it (``int(H // rf)``, at least 1): one size for every layer."""

    def size(rf: Any) -> int:
        if isinstance(rf, bool) or not isinstance(rf, int | float) or rf <= 0:
            raise ArtifactError(f"{where}: reduction_factor must be a positive number, got {rf!r}")
        return max(1, int(hidden // rf))

    if isinstance(reduction_factor, Mapping):
        per_layer = {}
        for i in layers:
            rf = reduction_factor.get(str(i), reduction_factor.get("default"))
            if rf is None:
                raise ArtifactError(f"{where}: reduction_factor {dict(reduction_factor)} has no entry for layer {i}")
            per_layer[i] = size(rf)
        if len(set(per_layer.values())) > 1:
            raise UnsupportedAdapterError(
                f"{where}: reduction_factor {dict(reduction_factor)} gives bottleneck sizes {per_layer} per layer; "
                "adapterdeploy needs one bottleneck size per task"
            )
        return next(iter(per_layer.values())), None
    return size(reduction_factor), float(reduction_factor)


def _site_weights(sd: dict[str, Tensor], cfg: dict[str, Any], prefix: str, where: Path) -> dict[str, Tensor]:
    """One site's tensors in our names (``down.weight`` ...), with the scaling folded into ``up``."""
    own = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    downs = [k for k, v in own.items() if re.fullmatch(r"adapter_down\.\d+\.weight", k) and v.dim() == 2]
    if len(downs) != 1 or "adapter_up.weight" not in own:
        raise ArtifactError(f"{where}: cannot find the down / up projections under {prefix}* (keys {sorted(own)})")
    down = downs[0].rsplit(".", 1)[0]
    out = {
        "down.weight": own[f"{down}.weight"],
        "down.bias": own[f"{down}.bias"],
        "up.weight": own["adapter_up.weight"],
        "up.bias": own["adapter_up.bias"],
    }
    if cfg["ln_before"]:  # the library registers it twice: adapter_norm_before and adapter_down.0
        ln = "adapter_norm_before" if "adapter_norm_before.weight" in own else "adapter_down.0"
        out["ln_before.weight"], out["ln_before.bias"] = own[f"{ln}.weight"], own[f"{ln}.bias"]
    if cfg["ln_after"]:
        out["ln_after.weight"], out["ln_after.bias"] = own["adapter_norm_after.weight"], own["adapter_norm_after.bias"]
    if cfg["scaling"] in ("learned", "channel"):
        if "scaling" not in own:
            raise ArtifactError(f"{where}: scaling={cfg['scaling']!r} but {prefix}scaling is missing")
        s = own["scaling"].reshape(-1)
    else:
        s = torch.tensor([float(cfg["scaling"])])
    if not torch.all(s == 1):
        s = s.to(out["up.weight"].dtype)
        out["up.weight"] = out["up.weight"] * s[:, None]
        out["up.bias"] = out["up.bias"] * s
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def _adapter(base: BaseModel, adapter_dir: Path) -> tuple[AdapterConfig, dict[str, Tensor], dict[str, Any]]:
    cfg_file = _adapter_files(adapter_dir)
    meta = read_json_object(cfg_file)
    cfg, config_name = _bottleneck_options(meta.get("config"), cfg_file)
    warning = _check_base(base, meta, cfg_file)
    sd, weights_file = _load_tensors(adapter_dir, ADAPTER_WEIGHTS)
    found: dict[str, dict[tuple[int, str], str]] = {}  # adapter name -> (layer, hub site) -> key prefix
    unknown = []
    for key in sd:
        m = _SITE_KEY.search(key)
        if m is None:
            unknown.append(key)
        else:
            found.setdefault(m.group(3), {})[(int(m.group(1)), m.group(2))] = key[: m.start(4)]
    if unknown:
        raise UnsupportedAdapterError(
            f"{weights_file}: weights outside the bottleneck adapter sites, e.g. {unknown[:3]}; {SUPPORTED}"
        )
    name = meta.get("name") if meta.get("name") in found else (next(iter(found)) if len(found) == 1 else None)
    if name is None:
        raise ArtifactError(f"{weights_file}: expected one adapter ({meta.get('name')!r}), found {sorted(found)}")
    sites = found[name]
    layers = sorted({i for i, _ in sites})
    leave_out = {int(i) for i in cfg.get("leave_out") or []}
    expected = [i for i in range(base.num_layers) if i not in leave_out]
    if not layers or layers[-1] >= base.num_layers or layers != expected:
        raise FingerprintMismatchError(
            f"{cfg_file}: the adapter has weights for layers {layers} (leave_out {sorted(leave_out)}), but --base "
            f"{base.path} has {base.num_layers} layers, so it would carry adapters in {expected}: the adapter was "
            "trained on a base with a different number of layers; pass the --base it was trained on"
        )
    placement = "houlsby" if cfg.get("mh_adapter") else "pfeiffer"
    ours = {"attention.output": "attn", "output": "ffn"}
    want = {"attn", "ffn"} if placement == "houlsby" else {"ffn"}
    weights: dict[str, Tensor] = {}
    for i in layers:
        have = {ours[s] for li, s in sites if li == i}
        if have != want:
            raise ArtifactError(f"{weights_file}: layer {i} has adapter sites {sorted(have)}, expected {sorted(want)}")
        for hub, site in ours.items():
            if site in want:
                for k, v in _site_weights(sd, cfg, sites[(i, hub)], weights_file).items():
                    weights[f"adapters.{i}.{site}.{k}"] = v
    m_size, rf = _bottleneck_size(cfg["reduction_factor"], base.hidden_size, layers, cfg_file)
    shapes = {tuple(v.shape) for k, v in weights.items() if k.endswith("down.weight")}
    if shapes != {(m_size, base.hidden_size)}:
        raise FingerprintMismatchError(
            f"{weights_file}: down projections have shapes {sorted(shapes)}, expected ({m_size}, {base.hidden_size}) "
            f"for hidden size {base.hidden_size} and reduction_factor {cfg['reduction_factor']!r}"
        )
    site = SiteOptions(
        original_ln_before=bool(cfg["original_ln_before"]),
        original_ln_after=bool(cfg["original_ln_after"]),
        residual_before_ln=cfg["residual_before_ln"],
        adapter_residual_before_ln=bool(cfg["adapter_residual_before_ln"]),
        ln_before=bool(cfg["ln_before"]),
        ln_after=bool(cfg["ln_after"]),
    )
    config = AdapterConfig(
        placement=placement,
        reduction_factor=rf,
        bottleneck=m_size,
        activation=_NON_LINEARITIES[cfg["non_linearity"].lower()],
        layers=None if layers == list(range(base.num_layers)) else tuple(layers),
        site=site,
    )
    info = {
        "adapter_name": name,
        "config_name": config_name,
        "config": meta.get("config"),
        "model_name": meta.get("model_name"),
        "model_class": meta.get("model_class"),
        "library_version": meta.get("version"),
        "adapter_weights": str(weights_file),
        "warning": warning,
    }
    return config, weights, info


def _check_base(base: BaseModel, meta: dict[str, Any], where: Path) -> str | None:
    """Hidden size and model type must match --base; another model name of the same shape returns a warning."""
    hidden, model_type = meta.get("hidden_size"), meta.get("model_type")
    if hidden is not None and int(hidden) != base.hidden_size:
        raise FingerprintMismatchError(
            f"{where}: the adapter was trained on a model with hidden size {hidden}, but --base {base.path} has "
            f"hidden size {base.hidden_size}; pass the --base it was trained on ({meta.get('model_name')!r})"
        )
    if model_type is not None and model_type != base.model_type:
        raise FingerprintMismatchError(
            f"{where}: the adapter was trained on a {model_type!r} model ({meta.get('model_name')!r}), but --base "
            f"{base.path} is a {base.model_type!r} model; pass the --base it was trained on"
        )
    saved = str(meta.get("model_name") or "")
    if saved:
        ours = {base.path.name, str(base.path)}
        try:
            ours.add(str(json.loads((base.path / "config.json").read_text()).get("_name_or_path") or ""))
        except (OSError, json.JSONDecodeError):
            pass
        if saved not in ours and Path(saved).name not in {Path(n).name for n in ours if n}:
            return (
                f"{where}: the adapter was saved from model {saved!r}; --base is {base.path} (same type and size, "
                "so the weights load, but an adapter only works on the base model it was trained on)"
            )
    return None


def _head(base: BaseModel, head_dir: Path) -> tuple[HeadConfig, dict[str, Tensor], dict[str, Any]]:
    cfg_file = head_dir / HEAD_CONFIG
    if not cfg_file.is_file():
        raise ArtifactError(
            f"no {HEAD_CONFIG} in {head_dir}: save the adapter with save_adapter(..., with_head=True) or pass the "
            "directory written by save_head with --head DIR"
        )
    meta = read_json_object(cfg_file)
    cfg = meta.get("config")
    if not isinstance(cfg, dict):
        raise UnsupportedAdapterError(
            f"{cfg_file}: the head was saved from a static-head model ({meta.get('model_class')!r}); re-create it "
            "with an AdapterModel's add_classification_head and save that"
        )
    head_type = cfg.get("head_type")
    if head_type not in ("classification", "multilabel_classification", "tagging"):
        raise UnsupportedAdapterError(
            f"{cfg_file}: head type {head_type!r} is not supported; adapterdeploy imports 'classification' heads "
            "(single-label classification, or regression with num_labels=1), 'multilabel_classification' and "
            "'tagging' (token classification) heads"
        )
    if meta.get("hidden_size") is not None and int(meta["hidden_size"]) != base.hidden_size:
        raise FingerprintMismatchError(
            f"{cfg_file}: the head was built for hidden size {meta['hidden_size']}, --base has {base.hidden_size}"
        )
    num_labels, n_layers = int(cfg.get("num_labels", 2)), int(cfg.get("layers", 2))
    act = cfg.get("activation_function")
    act = act.lower() if isinstance(act, str) and act else None
    if n_layers < 1:
        raise ArtifactError(f"{cfg_file}: a classification head needs layers >= 1, got {n_layers}")
    if n_layers > 1 and act is not None and act not in _HEAD_ACTIVATIONS:
        raise UnsupportedAdapterError(
            f"{cfg_file}: head activation_function {act!r} is not supported; supported: {', '.join(_HEAD_ACTIVATIONS)}"
        )
    sd, weights_file = _load_tensors(head_dir, HEAD_WEIGHTS)
    names = {m.group(1) for k in sd if (m := _HEAD_KEY.match(k))}
    name = meta.get("name") if meta.get("name") in names else (next(iter(names)) if len(names) == 1 else None)
    if name is None:
        raise ArtifactError(f"{weights_file}: expected one head ({meta.get('name')!r}), found {sorted(names)}")
    # The head is an nn.Sequential of Dropout / Linear / activation: its Linear layers are the 2-D weights.
    idx = sorted(
        {int(m.group(2)) for k, v in sd.items() if (m := _HEAD_KEY.match(k)) and m.group(1) == name and v.dim() == 2}
    )
    if len(idx) != n_layers:
        raise ArtifactError(f"{weights_file}: head {name!r} has {len(idx)} linear layers, its config says {n_layers}")
    lin = []
    for i in idx:
        w = sd[f"heads.{name}.{i}.weight"].detach().float()
        b = sd.get(f"heads.{name}.{i}.bias")
        lin.append((w, b.detach().float() if b is not None else torch.zeros(w.shape[0])))
    H = base.hidden_size
    if any(w.shape != (H, H) for w, _ in lin[:-1]) or lin[-1][0].shape != (num_labels, H):
        raise FingerprintMismatchError(
            f"{weights_file}: head layer shapes {[tuple(w.shape) for w, _ in lin]} do not fit hidden size {H} "
            f"and num_labels {num_labels}"
        )
    if act is None and len(lin) > 1:  # no activation: the layers compose into one affine map, exactly
        w, b = lin[0]
        for w2, b2 in lin[1:]:
            w, b = w2 @ w, w2 @ b + b2
        lin = [(w, b)]
    if len(lin) - 1 > 2:
        raise UnsupportedAdapterError(f"{cfg_file}: head has layers={n_layers}; adapterdeploy heads have at most 3")
    label2id = cfg.get("label2id") or {}
    labels: tuple[str, ...] = ()
    if num_labels > 1 and sorted(label2id.values()) == list(range(num_labels)):
        labels = tuple(str(k) for k, _ in sorted(label2id.items(), key=lambda kv: kv[1]))
    tagging = head_type == "tagging"  # the same layers on every token's hidden state (no pooling)
    if tagging and num_labels < 2:
        raise ArtifactError(f"{cfg_file}: a tagging head needs num_labels >= 2, got {num_labels}")
    use_pooler = bool(cfg.get("use_pooler", False)) and not tagging
    if use_pooler and not base.has_pooler:
        raise ConfigError(
            f"{cfg_file}: the head reads the base model's pooler (use_pooler=True), but {base.path} has no pooler "
            "weights; pass the --base the adapter was trained on"
        )
    multi = head_type == "multilabel_classification"
    if multi and num_labels < 2:
        raise ArtifactError(f"{cfg_file}: a multi-label head needs num_labels >= 2, got {num_labels}")
    head = HeadConfig(
        # The library's multi-label head is trained with BCE on independent sigmoids; thresholds start at 0.5.
        problem_type="multi_label_classification"
        if multi
        else TOKEN_CLASSIFICATION
        if tagging
        else "regression"
        if num_labels == 1
        else "single_label_classification",
        num_labels=max(num_labels, 1),
        labels=labels,
        pooling="pooler" if use_pooler else "cls",
        hidden_layers=len(lin) - 1,
        hidden_activation=act or "tanh",
    )
    weights = {}
    for j, (w, b) in enumerate(lin[:-1]):
        weights[f"head.hidden.{j}.weight"], weights[f"head.hidden.{j}.bias"] = w.contiguous(), b.contiguous()
    weights["head.out.weight"], weights["head.out.bias"] = lin[-1][0].contiguous(), lin[-1][1].contiguous()
    info = {"head_name": name, "head_config": cfg, "head_weights": str(weights_file)}
    return head, weights, info


def import_adapterhub(
    base: BaseModel,
    adapter_dir: str | Path,
    head_dir: str | Path | None = None,
    task_name: str | None = None,
    *,
    max_length: int = 128,
    text_pair: bool = False,
) -> TaskCheckpoint:
    """Convert an AdapterHub bottleneck adapter (+ classification head) into our task checkpoint for ``base``.

    The head is read from ``head_dir`` if given, else from ``adapter_dir`` (``with_head=True``). The
    result is checked by building the model on ``base`` with strict weight names. Raises
    :class:`UnsupportedAdapterError` for methods / options we cannot represent exactly.
    """
    adapter_dir = Path(adapter_dir)
    adapter_cfg, weights, info = _adapter(base, adapter_dir)
    head_cfg, head_weights, head_info = _head(base, Path(head_dir) if head_dir is not None else adapter_dir)
    name = task_name or info["adapter_name"]
    check_task_name(name, f"{adapter_dir}: the adapter's name (pass --task NAME to choose another)")
    ckpt = TaskCheckpoint(
        name=name,
        base=base.spec,
        adapter=adapter_cfg,
        head=head_cfg,
        max_length=max_length,
        text_pair=text_pair,
        weights={**weights, **head_weights},
        training={"imported_from": {**info, **head_info}},
        source="adapterhub",
    )
    ckpt.build_model(base)  # strict names and shapes, or ArtifactError
    if info["warning"]:
        warnings.warn(info["warning"], AdapterHubImportWarning, stacklevel=2)
    return ckpt


def library_logits(
    base_dir: str | Path, load: Callable[[Any], tuple[Any, str]], batches: list[dict[str, Tensor]]
) -> list[Tensor]:
    """Logits of a model the ``adapters`` library builds itself (the ``adapterhub`` extra), per batch.

    ``load(model)`` loads the adapters and head into the library's ``AutoAdapterModel`` of ``base_dir`` (with
    transformers' logging quiet) and returns (the adapter setup to activate, the head's name). Used to
    cross-check imports: the library loads the files its own way (``load_adapter`` / ``load_head``, which
    read pickles only with ``weights_only=True``; ``use_safetensors`` prefers the safetensors files).
    """
    try:
        from adapters import AutoAdapterModel
    except ImportError as exc:
        raise ConfigError(
            "the cross-check needs the adapters library: pip install 'adapterdeploy[adapterhub]'; or pass --no-verify"
        ) from exc
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoAdapterModel.from_pretrained(str(base_dir), attn_implementation="eager")
        setup, head = load(model)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.set_active_adapters(setup)
    model.active_head = head
    model.eval()
    with torch.no_grad():
        return [model(**batch).logits for batch in batches]


def adapterhub_reference_logits(
    base_dir: str | Path, adapter_dir: str | Path, head_dir: str | Path | None, batches: list[dict[str, Tensor]]
) -> list[Tensor]:
    """Logits of the same adapter run by the ``adapters`` library itself, per batch."""

    def load(model: Any) -> tuple[Any, str]:
        name = model.load_adapter(str(adapter_dir), with_head=head_dir is None, use_safetensors=True)
        if head_dir is not None:
            model.load_head(str(head_dir), load_as=name, use_safetensors=True)
        return name, name

    return library_logits(base_dir, load, batches)


# Cross-check inputs: padded rows of different lengths, single texts and pairs (token types matter).
_CHECK_TEXTS = [
    ("the movie was good", None),
    ("a very bad film and a boring plot , it was terrible and the actors were worse", None),
    ("the story was great", "i really like this film"),
    ("no", "the market is down two percent this year and people say shares are too high"),
]


def verify_import(
    ckpt: TaskCheckpoint, base: BaseModel, adapter_dir: str | Path, head_dir: str | Path | None, tol: float = 1e-4
) -> float:
    """Run the imported task and the ``adapters`` library on the same batch; return the max abs logit diff.

    Raises :class:`ParityError` above ``tol``. Needs the ``adapterhub`` extra.
    """
    return parity_with_library(
        ckpt,
        base,
        lambda batches: adapterhub_reference_logits(base.path, adapter_dir, head_dir, batches),
        tol,
        "the imported task's",
        "the adapter_config.json",
    )


def parity_with_library(
    ckpt: TaskCheckpoint, base: BaseModel, reference: Any, tol: float, what: str, report_with: str
) -> float:
    """Max abs logit difference between ``ckpt`` and ``reference(batches)`` (the adapters library's logits)
    on the check texts (singles and pairs); :class:`ParityError` above ``tol``."""
    from adapterdeploy.errors import ParityError

    tok = base.load_tokenizer()
    singles = [t for t, p in _CHECK_TEXTS if p is None]
    pairs = [(t, p) for t, p in _CHECK_TEXTS if p is not None]
    batches = [
        dict(tok(singles, padding=True, return_tensors="pt")),
        dict(tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")),
    ]
    model = ckpt.build_model(base)
    with torch.no_grad():
        ours = [model(**b) for b in batches]
    refs = reference(batches)
    diff = max(float((o - r).abs().max()) for o, r in zip(ours, refs, strict=True))
    if diff > tol:
        raise ParityError(
            f"{what} logits differ from the adapters library's by {diff:.3g} (tolerance {tol:g}); "
            f"please report this with {report_with}",
            {"logits": diff},
        )
    return diff
