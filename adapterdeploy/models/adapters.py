"""Bottleneck adapters in PyTorch: the module, the site math, and the hooks into a BERT-family encoder.

The adapter math lives in one function, :func:`adapter_site`, used both for training (one task, weights
shaped ``[H, m]``) and for export (a bank of tasks gathered per row, weights shaped ``[B, H, m]``): the
same code gives the PyTorch reference and the ONNX graph, so parity is by construction.

Semantics (see ``adapterdeploy.config`` for the residual / LayerNorm options):

    a[r] = up_b[t[r]] + act(h[r] @ down_w[t[r]] + down_b[t[r]]) @ up_w[t[r]]

where ``t[r]`` is the task of row ``r``. Weights are kept in "x @ W" layout (``down_w: [H, m]``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# A stacked site's lower adapter lives in the context (and the bank) under its site key + LOWER_SUFFIX.
from adapterdeploy.config import FUSION_SLOT, FUSION_SUFFIX, LOWER_SUFFIX, AdapterConfig, SiteOptions
from adapterdeploy.models.fusion import fused_output
from adapterdeploy.models.lora import install_lora_sites

__all__ = [
    "ADAPTER_LN_EPS",
    "LOWER_SUFFIX",
    "AdapterContext",
    "BottleneckAdapter",
    "activation_fn",
    "adapter_site",
    "adapter_up",
    "fusion_site",
    "install_adapter_sites",
    "layer_norm",
    "site_input",
    "site_with_lower",
]

# nn.LayerNorm's default, which AdapterHub's adapter LayerNorms use too.
ADAPTER_LN_EPS = 1e-5

# Param names of one site (all optional but the four projections).
SITE_PARAMS = ("down_w", "down_b", "up_w", "up_b", "ln_before_w", "ln_before_b", "ln_after_w", "ln_after_b")


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    """Activation by name. ``gelu`` is the exact (erf) form, as in BERT and AdapterHub."""
    return {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}[name]


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm over the last axis with shared ``[H]`` or per-row ``[B, 1, H]`` affine weights."""
    # int(): H is static; the ONNX tracer would otherwise record a dynamic normalized_shape, which it cannot export.
    shape = (int(x.shape[-1]),)
    if weight.dim() == 1:
        return F.layer_norm(x, shape, weight, bias, eps)
    return F.layer_norm(x, shape, None, None, eps) * weight + bias


def site_input(
    h: Tensor, residual: Tensor | None, ln: Callable[[Tensor], Tensor] | None, opts: SiteOptions
) -> tuple[Tensor, Tensor]:
    """The adapter's input ``x`` and the residual ``res`` it is added to (the library's ``pre_forward``)."""
    res = h
    x = h
    if opts.original_ln_before and ln is not None and residual is not None:
        added = h + residual
        if opts.residual_before_ln == "post_add":
            res = added
        x = ln(added)
    if opts.residual_before_ln is False:
        res = x
    return x, res


def adapter_up(x: Tensor, p: dict[str, Tensor], act: Callable[[Tensor], Tensor]) -> Tensor:
    """``a = up(act(down(ln_before(x))))``: the adapter's output before any residual (the library's ``up``)."""
    z = x
    if "ln_before_w" in p:
        z = layer_norm(z, p["ln_before_w"], p["ln_before_b"], ADAPTER_LN_EPS)
    a = act(torch.matmul(z, p["down_w"]) + p["down_b"])
    return torch.matmul(a, p["up_w"]) + p["up_b"]


def adapter_site(
    h: Tensor,
    residual: Tensor | None,
    ln: Callable[[Tensor], Tensor] | None,
    p: dict[str, Tensor],
    opts: SiteOptions,
    act: Callable[[Tensor], Tensor],
) -> Tensor:
    """One adapter site: see the semantics block in ``adapterdeploy.config``.

    Args:
        h: the sub-layer's projected output (or the whole layer's output for the ``layer`` site).
        residual: the sub-layer's residual input; None for the ``layer`` site.
        ln: the sub-layer's LayerNorm (base or per-task), None for the ``layer`` site.
        p: this site's weights, ``[H, m]`` for one task or ``[B, H, m]`` gathered per row.
        opts: residual / LayerNorm options.
        act: the bottleneck activation.
    """
    x, res = site_input(h, residual, ln, opts)
    a = adapter_up(x, p, act)
    if opts.adapter_residual_before_ln:
        out = a + res
        if "ln_after_w" in p:
            out = layer_norm(out, p["ln_after_w"], p["ln_after_b"], ADAPTER_LN_EPS)
    else:
        if "ln_after_w" in p:
            a = layer_norm(a, p["ln_after_w"], p["ln_after_b"], ADAPTER_LN_EPS)
        out = a + res
    if opts.original_ln_after and ln is not None and residual is not None:
        out = ln(out + residual)
    return out


def site_with_lower(
    h: Tensor,
    residual: Tensor | None,
    ln: Callable[[Tensor], Tensor] | None,
    p: dict[str, Tensor] | None,
    lower: dict[str, Tensor],
    opts: SiteOptions,
    act: Callable[[Tensor], Tensor],
) -> Tensor:
    """A Stack site (the adapters library's ``Stack(lower, upper)``): the upper adapter reads the lower's output.

    Semantics (``BottleneckLayer.compose_stack``: each adapter's ``pre_forward`` + ``forward``, then the last
    adapter's ``post_forward`` once):

        y1  = site(h,  r, LN, lower)  without the final ``LN(out + r)`` step
        y   = site(y1, r, LN, upper)  (with it)        -- or site(h, ...lower) in full when no upper here
    """
    if p is None:
        return adapter_site(h, residual, ln, lower, opts, act)
    y1 = adapter_site(h, residual, ln, lower, replace(opts, original_ln_after=False), act)
    return adapter_site(y1, residual, ln, p, opts, act)


def fusion_site(
    h: Tensor,
    residual: Tensor | None,
    ln: Callable[[Tensor], Tensor] | None,
    key: str,
    params: dict[str, dict[str, Tensor]],
    opts: SiteOptions,
    act: Callable[[Tensor], Tensor],
) -> Tensor:
    """An AdapterFusion site (the adapters library's ``Fuse``); ``params`` holds its N slots and attention.

    Slot 0 is ``params[key]``, slot j >= 1 ``params[key + "_fuse{j}"]``, the attention ``params[key + "_fusion"]``
    (see :mod:`adapterdeploy.models.fusion` for the semantics and why the weights are folded).
    """
    x, res = site_input(h, residual, ln, opts)
    f = params[key + FUSION_SUFFIX]
    slots = [params[key]] + [params[f"{key}{FUSION_SLOT}{j}"] for j in range(1, int(f["fuse_mask"].shape[-1]))]
    out = fused_output(x, [adapter_up(x, p, act) for p in slots], f) + res
    if opts.original_ln_after and ln is not None and residual is not None:
        out = ln(out + residual)
    return out


class BottleneckAdapter(nn.Module):
    """``h + up(act(down(h)))`` with near-identity init: weights N(0, init_std), biases 0."""

    def __init__(self, hidden_size: int, bottleneck: int, opts: SiteOptions, init_std: float = 1e-3) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        self.ln_before = nn.LayerNorm(hidden_size, eps=ADAPTER_LN_EPS) if opts.ln_before else None
        self.ln_after = nn.LayerNorm(hidden_size, eps=ADAPTER_LN_EPS) if opts.ln_after else None
        for lin in (self.down, self.up):
            nn.init.normal_(lin.weight, mean=0.0, std=init_std)
            nn.init.zeros_(lin.bias)

    @property
    def bottleneck(self) -> int:
        return self.down.out_features

    def site_params(self) -> dict[str, Tensor]:
        """Weights in "x @ W" layout, as :func:`adapter_site` and the ONNX bank take them."""
        p = {
            "down_w": self.down.weight.t(),
            "down_b": self.down.bias,
            "up_w": self.up.weight.t(),
            "up_b": self.up.bias,
        }
        if self.ln_before is not None:
            p["ln_before_w"], p["ln_before_b"] = self.ln_before.weight, self.ln_before.bias
        if self.ln_after is not None:
            p["ln_after_w"], p["ln_after_b"] = self.ln_after.weight, self.ln_after.bias
        return p


@dataclass
class AdapterContext:
    """The adapter weights in effect for the current forward pass, keyed ``"{layer}.{site}"``.

    One context per base encoder (installed once, shared by every model built on that base). The caller
    (a training model, or the exporter's banked featurizer) fills it right before calling the encoder and
    clears it after; the wrapped sub-layers read it. ``layernorms`` holds per-task replacements of the
    base LayerNorms, keyed ``"{layer}.attn"`` / ``"{layer}.ffn"``, as ``(weight, bias)``. With an empty
    context the encoder computes exactly what the original did.
    """

    opts: SiteOptions = field(default_factory=SiteOptions)
    act: Callable[[Tensor], Tensor] = F.relu
    params: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    layernorms: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def activate(
        self,
        config: AdapterConfig,
        params: dict[str, dict[str, Tensor]],
        layernorms: dict[str, tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        self.opts = config.site_options()
        self.act = activation_fn(config.activation)
        self.params = params
        self.layernorms = layernorms or {}

    def clear(self) -> None:
        self.params = {}
        self.layernorms = {}


class AdaptedSublayerOutput(nn.Module):
    """Drop-in for BertSelfOutput / BertOutput (and their RoBERTa / ELECTRA twins).

    Keeps the attribute names ``dense``, ``dropout``, ``LayerNorm`` so the base state dict is unchanged.
    """

    def __init__(self, original: nn.Module, key: str, ctx: AdapterContext) -> None:
        super().__init__()
        self.dense = original.dense
        self.dropout = original.dropout
        self.LayerNorm = original.LayerNorm
        self._key = key
        self._ctx = ctx

    def _ln(self) -> Callable[[Tensor], Tensor]:
        own = self._ctx.layernorms.get(self._key)
        if own is None:
            return self.LayerNorm
        eps = self.LayerNorm.eps
        return lambda x: layer_norm(x, own[0], own[1], eps)

    def forward(self, hidden_states: Tensor, input_tensor: Tensor) -> Tensor:
        h = self.dropout(self.dense(hidden_states))
        ln = self._ln()
        p = self._ctx.params.get(self._key)
        lower = self._ctx.params.get(self._key + LOWER_SUFFIX)
        if lower is not None:
            return site_with_lower(h, input_tensor, ln, p, lower, self._ctx.opts, self._ctx.act)
        if p is None:
            return ln(h + input_tensor)
        if self._key + FUSION_SUFFIX in self._ctx.params:
            return fusion_site(h, input_tensor, ln, self._key, self._ctx.params, self._ctx.opts, self._ctx.act)
        return adapter_site(h, input_tensor, ln, p, self._ctx.opts, self._ctx.act)


def _layer_output_hook(key: str, ctx: AdapterContext) -> Callable:
    def hook(_module: nn.Module, _args: tuple, output: object) -> object:
        p = ctx.params.get(key)
        lower = ctx.params.get(key + LOWER_SUFFIX)
        if p is None and lower is None:
            return output
        h = output[0] if isinstance(output, tuple) else output
        if lower is not None:
            y = site_with_lower(h, None, None, p, lower, ctx.opts, ctx.act)  # type: ignore[arg-type]
        else:
            y = adapter_site(h, None, None, p, ctx.opts, ctx.act)  # type: ignore[arg-type]
        return (y, *output[1:]) if isinstance(output, tuple) else y

    return hook


def install_adapter_sites(encoder: nn.Module) -> AdapterContext:
    """Wrap every layer of a HF BERT-family encoder (once) so it reads adapters from its context.

    Idempotent: a second call returns the context installed by the first, so several task models can
    share one frozen base in memory.
    """
    existing = getattr(encoder, "_adapterdeploy_ctx", None)
    if existing is not None:
        return existing
    ctx = AdapterContext()
    for i, layer in enumerate(encoder.encoder.layer):
        layer.attention.output = AdaptedSublayerOutput(layer.attention.output, f"{i}.attn", ctx)
        layer.output = AdaptedSublayerOutput(layer.output, f"{i}.ffn", ctx)
        layer.register_forward_hook(_layer_output_hook(f"{i}.layer", ctx))
    install_lora_sites(encoder.encoder.layer, ctx)  # PEFT deltas on the linear layers (identity when absent)
    encoder._adapterdeploy_ctx = ctx
    return ctx
