"""PEFT-style deltas (LoRA, IA3) on the linear layers of a BERT-family encoder, read from an adapter context.

Like the bottleneck sites (:mod:`adapterdeploy.models.adapters`), one function holds the math,
:func:`lora_linear`, used by the training / reference model (one task: ``A [in, r]``) and by the banked
featurizer (rows gathered per task: ``A [B, in, r]``), so the PyTorch reference and the ONNX graph agree
by construction.

Semantics (per row ``r``, task ``t = t[r]``; every term is optional, absent = zero):

    x'   = x + x * ia3_in[t]                      (PEFT IA3 on a feed-forward module scales the input)
    y    = x' W + b + (x' @ lora_a[t]) @ lora_b[t]  (LoRA; PEFT's scaling alpha/r or alpha/sqrt(r) is folded
                                                      into lora_b at import)
    y    = y + y * ia3_out[t]                     (PEFT IA3 elsewhere scales the output, bias included)

IA3 is stored as ``l - 1`` so that an all-zero row is exactly "no adapter", as for the other bank rows;
LoRA with a smaller rank is zero-padded (zero columns of A meet zero rows of B: exact).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapterdeploy.config import LORA_MODULES

__all__ = ["LORA_LEAVES", "LoraLinear", "fold_peft", "install_lora_sites", "lora_linear", "module_dims", "slot_modules"]

# The bank leaves of one module: LoRA factors ("x @ W" layout) and IA3 deltas.
LORA_LEAVES = ("lora_a", "lora_b", "ia3_in", "ia3_out")


def lora_linear(x: Tensor, linear: nn.Linear, p: dict[str, Tensor]) -> Tensor:
    """One linear layer with this module's PEFT deltas ``p`` (see the module docstring); ``p`` may instead
    hold ``weight`` / ``bias`` with the deltas already folded in (:func:`fold_peft`, standalone graphs)."""
    if "weight" in p:
        return F.linear(x, p["weight"], p["bias"])
    if "ia3_in" in p:
        x = x + x * p["ia3_in"]
    y = F.linear(x, linear.weight, linear.bias)
    if "lora_a" in p:
        y = y + torch.matmul(torch.matmul(x, p["lora_a"]), p["lora_b"])
    if "ia3_out" in p:
        y = y + y * p["ia3_out"]
    return y


def fold_peft(linear: nn.Linear, p: dict[str, Tensor]) -> dict[str, Tensor]:
    """One task's deltas merged into the layer's weights (LoRA and IA3 are mergeable): ``{weight, bias}``.

    From the semantics above: ``y = (x (1 + d_in)) (W^T + A B) + b``, then ``* (1 + d_out)``, so
    ``W' = ((W + (A B)^T) * (1 + d_in)[None, :]) * (1 + d_out)[:, None]`` and ``b' = b * (1 + d_out)``.
    """
    w = linear.weight.detach().clone()
    b = linear.bias.detach().clone() if linear.bias is not None else torch.zeros(w.shape[0])
    if "lora_a" in p:
        w = w + torch.matmul(p["lora_a"], p["lora_b"]).t()
    if "ia3_in" in p:
        w = w * (1 + p["ia3_in"])[None, :]
    if "ia3_out" in p:
        w = w * (1 + p["ia3_out"])[:, None]
        b = b * (1 + p["ia3_out"])
    return {"weight": w.contiguous(), "bias": b.contiguous()}


class LoraLinear(nn.Linear):
    """An ``nn.Linear`` (sharing the original's parameters, so state-dict names do not change) that adds the
    deltas found in its context under ``key`` (``"{layer}.{module}"``); with none it is the original layer."""

    def __init__(self, original: nn.Linear, key: str, ctx: object) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = original.in_features, original.out_features
        self.weight = original.weight
        self.bias = original.bias
        self._key = key
        self._ctx = ctx

    def forward(self, x: Tensor) -> Tensor:
        p = self._ctx.params.get(self._key)  # type: ignore[attr-defined]
        return F.linear(x, self.weight, self.bias) if p is None else lora_linear(x, self, p)


def slot_modules(layer: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """``{our module name: (parent module, attribute)}`` for the six linear layers of one encoder layer."""
    return {
        "query": (layer.attention.self, "query"),
        "key": (layer.attention.self, "key"),
        "value": (layer.attention.self, "value"),
        "attn_out": (layer.attention.output, "dense"),
        "ffn_in": (layer.intermediate, "dense"),
        "ffn_out": (layer.output, "dense"),
    }


def module_dims(hidden_size: int, intermediate_size: int) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each module of :data:`LORA_MODULES`."""
    dims = {m: (hidden_size, hidden_size) for m in LORA_MODULES}
    dims["ffn_in"] = (hidden_size, intermediate_size)
    dims["ffn_out"] = (intermediate_size, hidden_size)
    return dims


def install_lora_sites(
    layers: nn.ModuleList | list[nn.Module], ctx: object, layer_ids: list[int] | None = None
) -> None:
    """Make the six linear layers of each given layer read PEFT deltas from ``ctx`` (replacing any earlier
    wrapper, so a copied encoder can be rebound to a new context)."""
    ids = list(range(len(layers))) if layer_ids is None else layer_ids
    for i in ids:
        for name, (parent, attr) in slot_modules(layers[i]).items():
            setattr(parent, attr, LoraLinear(getattr(parent, attr), f"{i}.{name}", ctx))
