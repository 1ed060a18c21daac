"""AdapterFusion (Pfeiffer et al. 2021; the adapters library's ``Fuse``): N adapters combined per site by attention.

The adapters library (``BottleneckLayer.compose_fuse`` + ``BertFusion``, eval mode) computes at each site:

    x, res  = pre_forward(h, r, LN)               (the site's input and residual: ``site_input``)
    u_j     = s_j * up_j(act(down_j(x)))           (each fused adapter's ``up``, before any residual)
    q       = x Wq^T + bq                          (query: the sub-layer output after the original LN)
    k_j     = u_j Wk^T + bk,  v_j = u_j Wv^T       (keys and values from each adapter's output)
    p       = softmax_j(q . k_j / T)               (T = 1: the default config has no temperature)
    out     = sum_j p_j v_j + res
    y       = LN(out + r)                          (post_forward of the last adapter)

Here the attention weights are folded once, at import (exact in real arithmetic, float64 at import):

    q . k_j = (x Wq^T Wk + bq Wk) . u_j + q . bk   and   q . bk  is the same for every j: softmax drops it;
    sum_j p_j (u_j Wv^T) = (sum_j p_j u_j) Wv^T    (Wv has no bias and sum_j p_j = 1)

so a site stores ``fuse_qk = Wq^T Wk [H, H]``, ``fuse_qb = bq Wk [H]`` and ``fuse_v = Wv^T [H, H]`` (x @ W
layout) and runs 2 H x H products per token instead of 2 + 2N (the library's key and value projections of
every adapter's output). ``query`` / ``key`` / ``value`` = false in the config are identity matrices.

In a deployment every site of a fusion featurizer is a fusion site with N slots (the most any task fuses)
and two more bank inputs per task: ``fuse_mask [N]`` (0 for the task's slots, -1e9 for unused ones: their
softmax weight is exactly 0) and ``fuse_gate [1]``: 1 for a fusion task, 0 for a plain one, whose row is

    out = g * ((sum_j p_j u_j) fuse_v) + (1 - g) * u_0 + res   =  u_0 + res   for g = 0

which is exactly the plain adapter site (no adapter LayerNorm after: fusion featurizers refuse ``ln_after``).
All-zero fusion rows are therefore a plain task, and plain and fusion rows share one mixed forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from adapterdeploy.config import FUSION_SLOT, FUSION_SUFFIX, AdapterConfig
from adapterdeploy.errors import ConfigError, UnsupportedAdapterError

__all__ = [
    "FUSED_PREFIX",
    "FUSION_PREFIX",
    "FUSION_WEIGHTS",
    "MASKED",
    "FusionSpec",
    "fold_fusion",
    "fused_output",
    "fusion_options",
    "fusion_params",
]

# Checkpoint weight names: slot j >= 1 under ``fused.{j}.{layer}.{site}.*``, attention ``fusion_w.{layer}.{site}.*``.
FUSED_PREFIX = "fused."
FUSION_PREFIX = "fusion_w."
FUSION_WEIGHTS = ("fuse_qk", "fuse_qb", "fuse_v")
# Added to the score of an unused slot: exp(-1e9 - max) is exactly 0 in fp32 and fp16.
MASKED = -1e9

# The library's default ("dynamic") AdapterFusionConfig, for files that omit a key.
DYNAMIC = {
    "key": True,
    "query": True,
    "value": True,
    "query_before_ln": False,
    "regularization": True,
    "residual_before": False,
    "temperature": False,
    "value_before_softmax": True,
    "value_initialized": True,
    "dropout_prob": None,
}
STATIC = {**DYNAMIC, "value": False, "regularization": False, "value_initialized": False}
# Options that change the inference math and are not implemented; each is refused by name.
REFUSED = {
    "query_before_ln": "a query taken before the sub-layer's LayerNorm",
    "residual_before": "the residual added to the values before the attention",
    "temperature": "a temperature that the library decays on every forward call (so no fixed function to export)",
}


@dataclass(frozen=True)
class FusionSpec:
    """A fusion task's composition: the fusion's name, the fused adapters in slot order, the library options.

    ``adapters[0]`` is the task's own ``adapter`` config (slot 0, weights under ``adapters.*``).
    """

    name: str
    adapter_names: tuple[str, ...]
    adapters: tuple[AdapterConfig, ...]
    options: dict[str, Any]

    def __post_init__(self) -> None:
        if len(self.adapter_names) != len(self.adapters) or len(self.adapters) < 2:
            raise ConfigError(f"a fusion needs >= 2 adapters with one config each, got {list(self.adapter_names)}")

    @property
    def n(self) -> int:
        return len(self.adapters)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "adapters": [
                {"name": n, "config": c.to_dict()} for n, c in zip(self.adapter_names, self.adapters, strict=True)
            ],
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, d: Any) -> FusionSpec:
        if not isinstance(d, dict) or not isinstance(d.get("adapters"), list) or not isinstance(d.get("name"), str):
            raise ConfigError(f"fusion must be an object with 'name' and 'adapters', got {d!r:.120}")
        entries = d["adapters"]
        if not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in entries):
            raise ConfigError("fusion.adapters must be a list of {name, config} objects")
        return cls(
            name=d["name"],
            adapter_names=tuple(e["name"] for e in entries),
            adapters=tuple(AdapterConfig.from_dict(e.get("config") or {}) for e in entries),
            options=dict(d.get("options") or {}),
        )


def fusion_options(raw: Any, where: str) -> dict[str, Any]:
    """The saved AdapterFusionConfig completed with the library's defaults; unimplemented options refused."""
    if isinstance(raw, str):
        named = {"dynamic": DYNAMIC, "static": STATIC}
        if raw not in named:
            raise UnsupportedAdapterError(f"{where}: fusion config {raw!r} is unknown; expected 'dynamic' or 'static'")
        raw = named[raw]
    if not isinstance(raw, dict):
        raise UnsupportedAdapterError(f"{where}: the fusion 'config' must be an object, got {raw!r:.80}")
    cfg = {**DYNAMIC, **raw}
    for key, what in REFUSED.items():
        if cfg[key]:
            raise UnsupportedAdapterError(
                f"{where}: fusion option {key}={cfg[key]!r} ({what}) is not supported; adapterdeploy runs the "
                f"library's default fusion config ({key}=false), with or without query / key / value projections"
            )
    for key in ("key", "query", "value", "value_before_softmax"):
        if not isinstance(cfg[key], bool):
            raise UnsupportedAdapterError(f"{where}: fusion option {key} must be true or false, got {cfg[key]!r}")
    return cfg


def fold_fusion(
    options: dict[str, Any],
    hidden: int,
    query: tuple[Tensor, Tensor] | None,
    key: tuple[Tensor, Tensor] | None,
    value: Tensor | None,
) -> dict[str, Tensor]:
    """The library's query / key / value Linear weights (``(weight, bias)``, value without bias) folded into
    ``fuse_qk``, ``fuse_qb``, ``fuse_v`` (see the module docstring); missing projections are identities."""
    eye = torch.eye(hidden, dtype=torch.float64)
    wq_t, bq = (query[0].double().t(), query[1].double()) if options["query"] and query else (eye, torch.zeros(hidden))
    wk = key[0].double() if options["key"] and key else eye
    wv_t = value.double().t() if options["value"] and value is not None else eye
    return {
        "fuse_qk": (wq_t @ wk).float().contiguous(),
        "fuse_qb": (bq.double() @ wk).float().contiguous(),
        "fuse_v": wv_t.float().contiguous(),
    }


def fused_output(x: Tensor, ups: list[Tensor], f: dict[str, Tensor]) -> Tensor:
    """``g * ((sum_j p_j u_j) fuse_v) + (1 - g) * u_0`` with ``p = softmax((x fuse_qk + fuse_qb) . u_j + mask)``.

    Shapes: one task ``x [B, S, H]`` with weights ``[H, H]``, ``[H]``, mask ``[N]``, gate ``[1]``; or banked rows
    gathered per row (``[B, H, H]``, ``[B, 1, H]``, ``[B, 1, N]``, ``[B, 1, 1]``).
    """
    q = torch.matmul(x, f["fuse_qk"]) + f["fuse_qb"]
    u = torch.stack(ups, dim=-2)  # [B, S, N, H]
    scores = torch.matmul(u, q.unsqueeze(-1)).squeeze(-1) + f["fuse_mask"]  # [B, S, N]
    p = torch.softmax(scores, dim=-1)
    ctx = torch.matmul(torch.matmul(p.unsqueeze(-2), u).squeeze(-2), f["fuse_v"])
    g = f["fuse_gate"]
    return g * ctx + (1.0 - g) * ups[0]


def fusion_params(fused: nn.ModuleDict, fusion_w: nn.ModuleDict, n: int) -> dict[str, dict[str, Tensor]]:
    """One task's fusion context entries: slots ``{layer}.{site}_fuse{j}`` and ``{layer}.{site}_fusion``
    (mask 0 for all N slots, gate 1), beside slot 0's ``{layer}.{site}`` that the caller fills."""
    params: dict[str, dict[str, Tensor]] = {}
    for j, layers in fused.items():
        for i, sites in layers.items():
            for site, adapter in sites.items():
                params[f"{i}.{site}{FUSION_SLOT}{j}"] = adapter.site_params()
    for i, sites in fusion_w.items():
        for site, w in sites.items():
            ref = w["fuse_qk"]
            params[f"{i}.{site}{FUSION_SUFFIX}"] = {
                **dict(w.items()),
                "fuse_mask": torch.zeros(n, dtype=ref.dtype, device=ref.device),
                "fuse_gate": torch.ones(1, dtype=ref.dtype, device=ref.device),
            }
    return params
