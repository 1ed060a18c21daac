"""Import an AdapterFusion (``Fuse("a", "b", ...)``) trained with the AdapterHub ``adapters`` library.

Reads what ``save_adapter_fusion(dir, "a,b", with_head=...)`` wrote (``adapter_fusion_config.json`` +
``model_adapter_fusion.safetensors`` / ``pytorch_model_adapter_fusion.bin``, the head when saved with it) and
each fused adapter's ``save_adapter`` directory. Each adapter is read as :mod:`adapterdeploy.models.adapterhub`
reads a single one (scaling folded, options kept); the fusion's query / key / value weights are folded as
:mod:`adapterdeploy.models.fusion` explains. The result is one task checkpoint whose ``fusion`` lists the
adapters in the fusion's order (``adapter_names``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adapterdeploy.errors import ArtifactError, ConfigError, FingerprintMismatchError, UnsupportedAdapterError
from adapterdeploy.models.adapterhub import (
    FUSION_CONFIG,
    HEAD_CONFIG,
    AdapterHubImportWarning,
    _adapter,
    _check_base,
    _head,
    _load_tensors,
    library_logits,
    parity_with_library,
)
from adapterdeploy.models.base import BaseModel
from adapterdeploy.models.checkpoint import TaskCheckpoint
from adapterdeploy.models.fusion import FUSED_PREFIX, FUSION_PREFIX, FusionSpec, fold_fusion, fusion_options
from adapterdeploy.validation import check_task_name, read_json_object

__all__ = ["fusion_reference_logits", "import_adapterhub_fusion", "verify_fusion_import"]

FUSION_WEIGHTS = ("model_adapter_fusion.safetensors", "pytorch_model_adapter_fusion.bin")
_FUSION_KEY = re.compile(
    r"(?:^|\.)encoder\.layer\.(\d+)\.(attention\.output|output)\.adapter_fusion_layer\.(.+)\.(query|key|value)\."
    r"(weight|bias)$"
)
_SITES = {"attention.output": "attn", "output": "ffn"}


def _fusion_meta(fusion_dir: Path) -> tuple[str, list[str], dict]:
    cfg_file = fusion_dir / FUSION_CONFIG
    if not cfg_file.is_file():
        raise ArtifactError(
            f"{fusion_dir} has no {FUSION_CONFIG}: pass the directory written by save_adapter_fusion as --fusion"
        )
    meta = read_json_object(cfg_file)
    names = meta.get("adapter_names")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise ArtifactError(f"{cfg_file}: 'adapter_names' must list the >= 2 fused adapters, got {names!r:.120}")
    if len(set(names)) != len(names):
        raise ArtifactError(f"{cfg_file}: 'adapter_names' repeats an adapter: {names}")
    return str(meta.get("name") or ",".join(names)), names, meta


def _fusion_weights(
    base: BaseModel, fusion_dir: Path, name: str, options: dict, sites: set[tuple[int, str]]
) -> dict[str, Tensor]:
    """The folded attention weights of every fused site, keyed ``fusion_w.{layer}.{site}.fuse_qk`` ..."""
    sd, weights_file = _load_tensors(fusion_dir, FUSION_WEIGHTS)
    found: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, t in sd.items():
        m = _FUSION_KEY.search(key)
        if m is None:
            raise UnsupportedAdapterError(f"{weights_file}: {key!r} is not an AdapterFusion weight we know")
        if m.group(3) != name:  # adapters 1.3 saves every fusion whose name starts with this one's ("a,b,c")
            continue
        found.setdefault((int(m.group(1)), _SITES[m.group(2)]), {})[f"{m.group(4)}.{m.group(5)}"] = t.detach()
    if set(found) != sites:
        raise ArtifactError(
            f"{weights_file}: fusion layers at {sorted(found)}, but the fused adapters sit at {sorted(sites)}"
        )
    H = base.hidden_size
    out: dict[str, Tensor] = {}
    for (layer, site), w in sorted(found.items()):
        want = [p for p in ("query", "key") if options[p]] + (["value"] if options["value"] else [])
        missing = [f"{p}.weight" for p in want if f"{p}.weight" not in w]
        if missing or any(t.shape[-1] != H for t in w.values()):
            raise FingerprintMismatchError(
                f"{weights_file}: layer {layer} {site}: missing {missing} or weights not of hidden size {H} "
                f"(shapes {[tuple(t.shape) for t in w.values()]})"
            )
        folded = fold_fusion(
            options,
            H,
            (w["query.weight"], w.get("query.bias", torch.zeros(H))) if options["query"] else None,
            (w["key.weight"], w.get("key.bias", torch.zeros(H))) if options["key"] else None,
            w.get("value.weight") if options["value"] else None,
        )
        out.update({f"{FUSION_PREFIX}{layer}.{site}.{k}": v for k, v in folded.items()})
    return out


def import_adapterhub_fusion(
    base: BaseModel,
    fusion_dir: str | Path,
    adapter_dirs: Sequence[str | Path],
    head_dir: str | Path | None = None,
    task_name: str | None = None,
    *,
    max_length: int = 128,
    text_pair: bool = False,
) -> TaskCheckpoint:
    """``Fuse(a, b, ...)`` from ``save_adapter_fusion`` + one ``save_adapter`` directory per fused adapter.

    The head comes from ``head_dir`` if given, else from ``fusion_dir`` (``with_head=True``). The adapters
    may be given in any order; the fusion's ``adapter_names`` order is kept (slot 0 = the first).
    """
    fusion_dir = Path(fusion_dir)
    name, names, meta = _fusion_meta(fusion_dir)
    where = str(fusion_dir / FUSION_CONFIG)
    options = fusion_options(meta.get("config", "dynamic"), where)
    warning = _check_base(base, meta, fusion_dir / FUSION_CONFIG)
    loaded = {}
    for d in adapter_dirs:
        cfg, weights, info = _adapter(base, Path(d))
        if info["adapter_name"] in loaded:
            raise ConfigError(f"--adapter {d}: adapter {info['adapter_name']!r} was given twice")
        loaded[info["adapter_name"]] = (cfg, weights, info)
    missing, extra = [n for n in names if n not in loaded], sorted(set(loaded) - set(names))
    if missing or extra:
        raise ConfigError(
            f"--fusion {fusion_dir} fuses {names}; the --adapter directories hold {sorted(loaded)} "
            f"(missing {missing}, not fused {extra}): pass one --adapter DIR per fused adapter"
        )
    first = loaded[names[0]][0]
    for n in names[1:]:
        cfg = loaded[n][0]
        if cfg.signature() != first.signature() or cfg.adapter_layers(base.num_layers) != first.adapter_layers(
            base.num_layers
        ):
            raise UnsupportedAdapterError(
                f"--fusion {fusion_dir}: adapters {names[0]!r} and {n!r} differ in placement, activation, site options "
                f"or layers ({first.signature().describe_difference(cfg.signature())}); adapterdeploy fuses adapters "
                "of one config (their bottleneck sizes may differ)"
            )
    if first.site.ln_after:
        raise UnsupportedAdapterError(
            f"--fusion {fusion_dir}: the fused adapters have an adapter LayerNorm after (ln_after), which "
            "adapterdeploy's fusion sites do not run; fuse adapters without ln_after"
        )
    sites = {(int(k.split(".")[1]), k.split(".")[2]) for k in loaded[names[0]][1] if k.endswith(".down.weight")}
    weights = dict(loaded[names[0]][1])
    for j, n in enumerate(names[1:], start=1):
        weights.update({f"{FUSED_PREFIX}{j}.{k.removeprefix('adapters.')}": v for k, v in loaded[n][1].items()})
    weights.update(_fusion_weights(base, fusion_dir, name, options, sites))
    has_head = head_dir is not None or (fusion_dir / HEAD_CONFIG).is_file()
    if not has_head:
        raise ArtifactError(
            f"{fusion_dir} has no {HEAD_CONFIG}: save the fusion with save_adapter_fusion(..., with_head=True) "
            "or pass the directory written by save_head with --head DIR"
        )
    head_cfg, head_weights, head_info = _head(base, Path(head_dir) if head_dir is not None else fusion_dir)
    task = task_name or name.replace(",", "-")
    check_task_name(task, f"{fusion_dir}: the fusion's name (pass --task NAME to choose another)")
    spec = FusionSpec(
        name=name, adapter_names=tuple(names), adapters=tuple(loaded[n][0] for n in names), options=options
    )
    sources = {n: {k: v for k, v in loaded[n][2].items() if k != "warning"} for n in names}
    ckpt = TaskCheckpoint(
        name=task,
        base=base.spec,
        adapter=first,
        head=head_cfg,
        max_length=max_length,
        text_pair=text_pair,
        weights={**weights, **head_weights},
        training={
            "imported_from": {
                **head_info,
                "config_name": f"Fuse({', '.join(names)}) of {loaded[names[0]][2]['config_name']}",
                "fusion": {"name": name, "dir": str(fusion_dir), "config": meta.get("config")},
                "adapters": sources,
            }
        },
        source="adapterhub",
        fusion=spec,
    )
    ckpt.build_model(base)  # strict names and shapes, or ArtifactError
    for w in {warning, *(loaded[n][2]["warning"] for n in names)} - {None}:
        warnings.warn(w, AdapterHubImportWarning, stacklevel=2)
    return ckpt


def fusion_reference_logits(
    base_dir: str | Path,
    fusion_dir: str | Path,
    adapter_dirs: Sequence[str | Path],
    head_dir: str | Path | None,
    batches: list[dict[str, Tensor]],
) -> list[Tensor]:
    """Logits of the fusion run by the adapters library itself (its own loaders), per batch."""

    def load(model: Any) -> tuple[Any, str]:
        from adapters.composition import Fuse

        for d in adapter_dirs:
            model.load_adapter(str(d), with_head=False, use_safetensors=True)
        # (AdapterModel.load_adapter_fusion returns None in adapters 1.3: the name comes from the config file.)
        model.load_adapter_fusion(str(fusion_dir), with_head=head_dir is None, use_safetensors=True)
        name, names, _ = _fusion_meta(Path(fusion_dir))
        if head_dir is not None:
            model.load_head(str(head_dir), load_as=name, use_safetensors=True)
        return Fuse(*names), name

    return library_logits(base_dir, load, batches)


def verify_fusion_import(
    ckpt: TaskCheckpoint,
    base: BaseModel,
    fusion_dir: str | Path,
    adapter_dirs: Sequence[str | Path],
    head_dir: str | Path | None,
    tol: float = 1e-4,
) -> float:
    """Max abs logit difference between the imported fusion and the adapters library; ParityError above ``tol``."""
    return parity_with_library(
        ckpt,
        base,
        lambda batches: fusion_reference_logits(base.path, fusion_dir, adapter_dirs, head_dir, batches),
        tol,
        "the imported fusion's",
        "the adapter_fusion_config.json",
    )
