"""The PEFT part of the adapter bank: LoRA factors and IA3 deltas as per-task bank rows, gathered per row.

Bank inputs of one adapted layer ``i`` (after its bottleneck ones), for each module of the signature:

    bank.{i}.{module}.lora_a   [T, in, R]     (R = the bank's rank: dynamic, every task zero-padded to it)
    bank.{i}.{module}.lora_b   [T, R, out]    (PEFT's scaling folded in)
    bank.{i}.{module}.ia3_in   [T, in]        (l - 1; PEFT feed-forward modules scale the input)
    bank.{i}.{module}.ia3_out  [T, out]       (l - 1; other IA3 modules scale the output)

Semantics per row r (t = task_index[r]), in the linear layer itself (models/lora.py, one implementation for
the reference and the graph): ``y = x W + b + (x @ lora_a[t]) @ lora_b[t]``, IA3 as ``x + x * d`` /
``y + y * d``. A task without a delta on a module has zero rows there, which is exactly "no delta": bottleneck
tasks, LoRA tasks and IA3 tasks share one bank.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from adapterdeploy.config import RANK_AXIS, AdapterSignature

__all__ = ["bank_rank", "pad_rank", "peft_dynamic_axes", "peft_keys", "peft_rows"]


def _ia3_sides(signature: AdapterSignature) -> dict[str, list[str]]:
    sides: dict[str, list[str]] = {}
    for entry in signature.ia3:
        module, side = entry.rsplit(".", 1)
        sides.setdefault(module, []).append(side)
    return sides


def peft_keys(signature: AdapterSignature, layer: int) -> list[str]:
    """This layer's PEFT bank inputs, in input order (modules sorted, then lora_a, lora_b, ia3_in, ia3_out)."""
    sides = _ia3_sides(signature)
    keys = []
    for module in sorted(set(signature.lora) | set(sides)):
        if module in signature.lora:
            keys += [f"bank.{layer}.{module}.lora_a", f"bank.{layer}.{module}.lora_b"]
        keys += [f"bank.{layer}.{module}.ia3_{side}" for side in sorted(sides.get(module, []))]
    return keys


def peft_dynamic_axes(leaf: str) -> dict[int, str] | None:
    """Named dynamic axes of a PEFT bank input (None for a non-PEFT leaf)."""
    if leaf in RANK_AXIS:
        return {0: "tasks", RANK_AXIS[leaf]: "rank"}
    if leaf in ("ia3_in", "ia3_out"):
        return {0: "tasks"}
    return None


def peft_rows(
    model: torch.nn.Module, signature: AdapterSignature, layer: int, dims: dict[str, tuple[int, int]]
) -> dict[str, Tensor]:
    """One task's PEFT rows for ``layer`` (no T axis, its own rank for every module: the runtime reads one rank
    per task); zeros where it has no delta."""
    own = model.lora[str(layer)] if str(layer) in model.lora else {}  # type: ignore[attr-defined]
    peft = model.adapter_config.peft  # type: ignore[attr-defined]
    rank = peft.rank if peft is not None and peft.rank > 0 else 1
    rows: dict[str, Tensor] = {}
    for key in peft_keys(signature, layer):
        _, _, module, leaf = key.split(".")
        t = own[module][leaf] if module in own and leaf in own[module] else None
        if t is None:
            d_in, d_out = dims[module]
            t = {
                "lora_a": torch.zeros(d_in, rank),
                "lora_b": torch.zeros(rank, d_out),
                "ia3_in": torch.zeros(d_in),
                "ia3_out": torch.zeros(d_out),
            }[leaf]
        rows[key] = t.detach().clone().float().contiguous()
    return rows


def pad_rank(t: Tensor, leaf: str, rank: int) -> Tensor:
    """Zero-pad one task row (no T axis) along its rank axis to ``rank``."""
    if leaf == "lora_a":
        return F.pad(t, (0, rank - t.shape[-1]))
    if leaf == "lora_b":
        return F.pad(t, (0, 0, 0, rank - t.shape[0]))
    return t


def bank_rank(rows: Sequence[dict[str, Tensor]], keys: Sequence[str]) -> int:
    """The largest LoRA rank among task rows (1 when there is no LoRA input)."""
    return max((int(r[k].shape[-1]) for r in rows for k in keys if k.endswith(".lora_a")), default=1)
