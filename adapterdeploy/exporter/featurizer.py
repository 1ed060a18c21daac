"""The banked featurizer in PyTorch: the modules that become ``trunk.onnx``, ``adapted.onnx`` and standalone graphs.

Why a copy of the base: the featurizer replaces the sub-layer outputs of layers [K, L) with
:class:`BankedSublayerOutput` (same math, fusion-friendly node order). Working on a deep copy leaves the
caller's base (and the PyTorch reference models built on it for parity) untouched.

Semantics (per row ``r`` of the adapted batch, ``t = task_index[r]``, ``u = row_source[r]``):

    h0[r]   = hidden[u]                      (trunk output: embeddings + layers [0, K), no adapters)
    W[r]    = bank[t]                        (Gather; biases / LayerNorm rows become [B, 1, *])
    h[r]    = layers [K, L) of h0[r], each adapter site reading W[r] (config.py's site semantics)
    cls[r]  = h[r, 0];  mean[r] = sum_s h[r, s] m[u, s] / max(sum_s m[u, s], 1);  pooled[r] = pooler(h[r])
    tokens[r] = h[r]                         (every token, for tagging heads)

For the native sub-layer sites (``y = LN(d + a(d) + res)`` with ``d = x W + b``) the graph is written as
``LN((x W + (up(act(down(d))) + up_b + b)) + res)``: the same value, but the LayerNorm's input is an
``Add`` whose parent is the dense ``MatMul``, which is the pattern onnxruntime's Attention and
SkipLayerNormalization fusions look for. In the textbook order ``(d + a) + res`` an adapter on the
attention output hides that MatMul (measured on MiniLM, houlsby at K = 2: 0 of 4 Attention fusions,
against 4 of 4 in this order). A task with a smaller bottleneck is zero-padded to the bank's ``m``:
the padded units compute ``act(0)`` and meet zero rows of ``up``, so the padding adds exactly 0.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapterdeploy.config import FUSION_SLOT, FUSION_SUFFIX, TOKENS_OUTPUT, AdapterSignature, SiteOptions
from adapterdeploy.errors import ExportError
from adapterdeploy.exporter.lora_bank import bank_rank, pad_rank, peft_dynamic_axes, peft_keys, peft_rows
from adapterdeploy.models.adapters import (
    LOWER_SUFFIX,
    AdaptedSublayerOutput,
    AdapterContext,
    activation_fn,
    adapter_site,
    fusion_site,
    site_with_lower,
)
from adapterdeploy.models.base import BaseModel
from adapterdeploy.models.encoder import EncoderWithAdapters, TaskHead, mean_pool
from adapterdeploy.models.fusion import FUSION_WEIGHTS, MASKED
from adapterdeploy.models.lora import LORA_LEAVES, LoraLinear, fold_peft, install_lora_sites, module_dims, slot_modules

__all__ = [
    "Adapted",
    "AdaptedLayer",
    "BankedSublayerOutput",
    "HeadGraph",
    "StandaloneModel",
    "Trunk",
    "bank_dynamic_axes",
    "bank_keys",
    "copy_encoder",
    "fusion_friendly",
    "fusion_slot",
    "head_rows",
    "is_fusion_key",
    "outputs_for",
    "query_attention",
    "shared_until",
    "stack_bank",
    "supports_query_subset",
    "task_rows",
    "zero_adapter_is_identity",
]

SITE_WEIGHTS = ("down_w", "down_b", "up_w", "up_b")
# A fusion site's bank inputs besides its slots: folded attention, slot mask [N], gate [1] (models/fusion.py).
FUSION_BANK = (*FUSION_WEIGHTS, "fuse_mask", "fuse_gate")
SUBLAYER_SITES = ("attn", "ffn")


def bank_keys(signature: AdapterSignature, adapted_layers: Sequence[int]) -> tuple[str, ...]:
    """The adapted graph's bank inputs, in input order (the BANK KEYS of artifacts.py)."""
    names = list(SITE_WEIGHTS)
    if signature.site.ln_before:
        names += ["ln_before_w", "ln_before_b"]
    if signature.site.ln_after:
        names += ["ln_after_w", "ln_after_b"]
    keys: list[str] = []
    for layer in adapted_layers:
        keys += [f"bank.{layer}.{site}.{n}" for site in signature.sites for n in names]
        for site in signature.sites if signature.fusion else ():  # AdapterFusion (models/fusion.py)
            for j in range(1, signature.fusion):
                keys += [f"bank.{layer}.{site}{FUSION_SLOT}{j}.{n}" for n in names]
            keys += [f"bank.{layer}.{site}{FUSION_SUFFIX}.{n}" for n in FUSION_BANK]
        if signature.stack:  # the lower adapter of a Stack (models/stack.py), same site options
            keys += [f"bank.{layer}.{site}{LOWER_SUFFIX}.{n}" for site in signature.sites for n in names]
        if signature.per_task_layernorm:
            keys += [f"bank.{layer}.{s}_ln.{p}" for s in SUBLAYER_SITES for p in ("w", "b")]
        keys += peft_keys(signature, layer)
    return tuple(keys)


def bank_dynamic_axes(key: str) -> dict[int, str]:
    """Named dynamic axes of one bank input: ``tasks`` always, ``bottleneck`` on the adapter projections
    (``lower_bottleneck`` on a Stack's lower adapter, whose size is independent of the task's), ``rank`` on
    LoRA factors."""
    leaf = key.rsplit(".", 1)[1]
    peft = peft_dynamic_axes(leaf)
    if peft is not None:
        return peft
    m = "lower_bottleneck" if LOWER_SUFFIX + "." in key else "bottleneck"
    return {
        "down_w": {0: "tasks", 2: m},
        "down_b": {0: "tasks", 1: m},
        "up_w": {0: "tasks", 1: m},
    }.get(leaf, {0: "tasks"})


def outputs_for(base: BaseModel) -> tuple[str, ...]:
    """The adapted graph's outputs: pooled features, then ``tokens`` (every token's last hidden state).

    ``tokens`` is last so that existing index-based readers keep their positions. Its value is computed for
    the pooled outputs anyway; the runtime requests it only for batches holding a tagging task, so sequence
    batches never copy ``[rows, S, H]`` out of the session.
    """
    pooled = ("cls", "mean", "pooled") if base.has_pooler else ("cls", "mean")
    return (*pooled, TOKENS_OUTPUT)


def fusion_friendly(opts: SiteOptions) -> bool:
    """True for the native site form ``LN(d + a(d) + res)``, which can be rewritten in fusion order."""
    return (
        not opts.original_ln_before
        and opts.original_ln_after
        and opts.residual_before_ln is True
        and not opts.ln_before
        and not opts.ln_after
    )


def zero_adapter_is_identity(signature: AdapterSignature, hidden_size: int = 16) -> bool:
    """Whether a site with all-zero adapter weights computes exactly what a site without adapter does.

    Decides if a task without an adapter in some adapted layer can share the bank with zero rows there.
    Checked numerically on random inputs (cheap, and true to the implementation rather than to a proof).
    Without bottleneck sites (PEFT-only) there is nothing to check; PEFT rows are zero-exact by construction.
    """
    if not signature.has_bottleneck:
        return True
    gen = torch.Generator().manual_seed(0)
    h, r = torch.randn(2, 3, hidden_size, generator=gen), torch.randn(2, 3, hidden_size, generator=gen)
    ln = nn.LayerNorm(hidden_size)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5, generator=gen)
        ln.bias.uniform_(-0.5, 0.5, generator=gen)
        p = {
            "down_w": torch.zeros(hidden_size, 4),
            "down_b": torch.zeros(4),
            "up_w": torch.zeros(4, hidden_size),
            "up_b": torch.zeros(hidden_size),
        }
        for which in ("ln_before", "ln_after"):
            if getattr(signature.site, which):
                p[f"{which}_w"], p[f"{which}_b"] = torch.ones(hidden_size), torch.zeros(hidden_size)
        act = activation_fn(signature.activation)
        if signature.placement == "after_layer":
            plain = torch.equal(adapter_site(h, None, None, p, signature.site, act), h)
            return plain and (
                not signature.stack or torch.equal(site_with_lower(h, None, None, p, p, signature.site, act), h)
            )
        plain = torch.equal(adapter_site(h, r, ln, p, signature.site, act), ln(h + r))
        if signature.fusion:  # a plain task's zero fusion rows (gate 0) leave its site as it was
            n, zero_hh = signature.fusion, torch.zeros(hidden_size, hidden_size)
            fused = {"0.ffn": p, **{f"0.ffn{FUSION_SLOT}{j}": p for j in range(1, n)}}
            fused["0.ffn" + FUSION_SUFFIX] = {
                "fuse_qk": zero_hh,
                "fuse_qb": torch.zeros(hidden_size),
                "fuse_v": zero_hh,
                "fuse_mask": torch.zeros(n),
                "fuse_gate": torch.zeros(1),
            }
            plain = plain and torch.equal(fusion_site(h, r, ln, "0.ffn", fused, signature.site, act), ln(h + r))
        # A zero lower adapter under a zero upper one must leave the site as it was, too.
        return plain and (
            not signature.stack or torch.equal(site_with_lower(h, r, ln, p, p, signature.site, act), ln(h + r))
        )


def task_rows(
    model: EncoderWithAdapters, signature: AdapterSignature, adapted_layers: Sequence[int]
) -> dict[str, Tensor]:
    """One task's bank rows (no T axis, its own bottleneck m), for every key of the bank.

    Layers where the task has no adapter get zero projections (identity LayerNorms for adapter LNs) and,
    with per-task LayerNorms, the base's own LayerNorm weights: both reproduce "no adapter" exactly
    (for adapter LNs only when :func:`zero_adapter_is_identity`; the exporter checks).
    """
    H = model.base_info.hidden_size
    m = model.adapter_config.bottleneck_size(H)
    dims = module_dims(H, int(model.base.config.intermediate_size))
    slots = [("", model.adapters, m)]
    if signature.stack:
        low = model.lower_config
        slots.append((LOWER_SUFFIX, model.lower, low.bottleneck_size(H) if low is not None else 1))
    fusion = model.fusion
    if fusion is not None:  # every slot of a fusion task padded to its widest adapter: one m per task
        m = max(c.bottleneck_size(H) for c in fusion.adapters)
        slots = [("", model.adapters, m)]
    for j in range(1, signature.fusion):
        mods = model.fused[str(j)] if fusion is not None and str(j) in model.fused else {}
        slots.append((f"{FUSION_SLOT}{j}", mods, m if fusion is not None else 1))
    rows: dict[str, Tensor] = {}
    for layer in adapted_layers:
        for suffix, modules, size in slots:
            for site in signature.sites:
                prefix = f"bank.{layer}.{site}{suffix}"
                sites = modules[str(layer)] if str(layer) in modules else None
                if sites is not None and site in sites:  # PEFT-only tasks have no bottleneck sites
                    params = {k: v.detach().clone().contiguous() for k, v in sites[site].site_params().items()}
                    params = _pad_site(params, size)
                else:
                    params = {
                        "down_w": torch.zeros(H, size),
                        "down_b": torch.zeros(size),
                        "up_w": torch.zeros(size, H),
                        "up_b": torch.zeros(H),
                    }
                    for which in ("ln_before", "ln_after"):
                        if getattr(signature.site, which):
                            params[f"{which}_w"], params[f"{which}_b"] = torch.ones(H), torch.zeros(H)
                rows.update({f"{prefix}.{k}": v.float() for k, v in params.items()})
        if signature.fusion:
            rows.update(_fusion_rows(model, signature, layer, H))
        if signature.per_task_layernorm:
            base_layer = model.base.encoder.layer[layer]
            base_lns = {"attn": base_layer.attention.output.LayerNorm, "ffn": base_layer.output.LayerNorm}
            own = model.layernorms[str(layer)] if str(layer) in model.layernorms else base_lns
            for s in SUBLAYER_SITES:
                rows[f"bank.{layer}.{s}_ln.w"] = own[s].weight.detach().clone().float()
                rows[f"bank.{layer}.{s}_ln.b"] = own[s].bias.detach().clone().float()
        rows.update(peft_rows(model, signature, layer, dims))
    return rows


def _pad_site(params: dict[str, Tensor], m: int) -> dict[str, Tensor]:
    """A site's projections zero-padded to bottleneck ``m`` (exact: see the module docstring)."""
    extra = m - int(params["down_w"].shape[-1])
    if extra <= 0:
        return params
    return {
        **params,
        "down_w": F.pad(params["down_w"], (0, extra)),
        "down_b": F.pad(params["down_b"], (0, extra)),
        "up_w": F.pad(params["up_w"], (0, 0, 0, extra)),
    }


def _fusion_rows(model: EncoderWithAdapters, signature: AdapterSignature, layer: int, H: int) -> dict[str, Tensor]:
    """A task's fusion rows at one layer: folded attention, mask over the featurizer's N slots (unused slots
    ``MASKED``) and gate 1; all zeros (gate 0) for a plain task, which is then its plain site exactly."""
    rows: dict[str, Tensor] = {}
    n_task = model.fusion.n if model.fusion is not None else 0
    for site in signature.sites:
        prefix = f"bank.{layer}.{site}{FUSION_SUFFIX}"
        own = model.fusion_w[str(layer)][site] if n_task and str(layer) in model.fusion_w else None
        for k in FUSION_WEIGHTS:
            shape = (H, H) if k != "fuse_qb" else (H,)
            rows[f"{prefix}.{k}"] = own[k].detach().clone().float() if own is not None else torch.zeros(shape)
        mask = torch.zeros(signature.fusion)
        if own is not None:
            mask[n_task:] = MASKED
        rows[f"{prefix}.fuse_mask"] = mask
        rows[f"{prefix}.fuse_gate"] = torch.ones(1) if own is not None else torch.zeros(1)
    return rows


def is_fusion_key(key: str) -> bool:
    """A bank key of a fusion slot >= 1 or of a fusion attention (``bank.3.ffn_fuse2.down_w``, ``..._fusion.*``)."""
    site = key.split(".")[2]
    return FUSION_SUFFIX in site or FUSION_SLOT in site


def fusion_slot(key: str) -> int:
    """The fusion slot of a fusion bank key: j for ``bank.3.ffn_fuse{j}.*``, 0 for the attention rows."""
    site = key.split(".")[2]
    return int(site.rsplit(FUSION_SLOT, 1)[1]) if FUSION_SLOT in site and FUSION_SUFFIX not in site else 0


def head_rows(head: TaskHead) -> dict[str, Tensor]:
    """The head's weights in "x @ W" layout: ``head.hidden.{i}.w [H, H]``, ``head.out.w [H, out]``."""
    rows = {}
    for i, lin in enumerate(head.hidden):
        rows[f"head.hidden.{i}.w"] = lin.weight.detach().t().contiguous().float()
        rows[f"head.hidden.{i}.b"] = lin.bias.detach().clone().float()
    rows["head.out.w"] = head.out.weight.detach().t().contiguous().float()
    rows["head.out.b"] = head.out.bias.detach().clone().float()
    return rows


def stack_bank(rows: Sequence[dict[str, Tensor]], keys: Sequence[str]) -> list[Tensor]:
    """Stack task rows into bank tensors ``[T, ...]``, zero-padding each task to the largest bottleneck / rank."""
    m = max((int(r[k].shape[-1]) for r in rows for k in keys if k.endswith(".down_w")), default=1)
    rank = bank_rank(rows, keys)
    out = []
    for key in keys:
        leaf = key.rsplit(".", 1)[1]
        parts = []
        for r in rows:
            t = r[key]
            if leaf in ("down_w", "down_b"):
                t = F.pad(t, (0, m - t.shape[-1]))
            elif leaf == "up_w":
                t = F.pad(t, (0, 0, 0, m - t.shape[0]))
            parts.append(pad_rank(t, leaf, rank))
        out.append(torch.stack(parts))
    return out


class BankedSublayerOutput(AdaptedSublayerOutput):
    """A BertSelfOutput / BertOutput that reads adapters from a context, in fusion-friendly node order.

    Same attribute names (``dense``, ``dropout``, ``LayerNorm``) as the original. With no adapter for
    its key it is the original sub-layer; with adapters of a non-native form it is ``adapter_site``.
    """

    # Set by :class:`Adapted` for one call when this sub-layer is where layer K's per-task part begins: the
    # dense output and the residual arrive per unique text and are gathered to the batch's rows here.
    rows: Tensor | None = None

    def _rows(self, x: Tensor) -> Tensor:
        return x if self.rows is None else torch.index_select(x, 0, self.rows)

    def forward(self, hidden_states: Tensor, input_tensor: Tensor) -> Tensor:
        own = self._ctx.layernorms.get(self._key)
        shape, eps = tuple(self.LayerNorm.normalized_shape), self.LayerNorm.eps
        take = self._rows

        def ln(x: Tensor) -> Tensor:  # static normalized_shape: the tracer would make x.shape[-1] dynamic
            if own is None:
                return self.LayerNorm(x)
            if own[0].dim() == 1:
                return F.layer_norm(x, shape, own[0], own[1], eps)
            return F.layer_norm(x, shape, None, None, eps) * own[0] + own[1]

        p = self._ctx.params.get(self._key)
        lower = self._ctx.params.get(self._key + LOWER_SUFFIX)
        if lower is not None:  # Stack: the generic site order (the fusion-order rewrite covers one adapter)
            return site_with_lower(
                take(self.dense(hidden_states)), take(input_tensor), ln, p, lower, self._ctx.opts, self._ctx.act
            )
        if p is None:
            return ln(take(self.dense(hidden_states)) + take(input_tensor))
        if self._key + FUSION_SUFFIX in self._ctx.params:  # AdapterFusion: every site of the featurizer
            return fusion_site(
                take(self.dense(hidden_states)),
                take(input_tensor),
                ln,
                self._key,
                self._ctx.params,
                self._ctx.opts,
                self._ctx.act,
            )
        if not fusion_friendly(self._ctx.opts) or _has_peft(self.dense, self._ctx):
            return adapter_site(
                take(self.dense(hidden_states)), take(input_tensor), ln, p, self._ctx.opts, self._ctx.act
            )
        bias = self.dense.bias
        h_raw = take(torch.matmul(hidden_states, self.dense.weight.t()))
        a = self._ctx.act(torch.matmul(h_raw + bias, p["down_w"]) + p["down_b"])
        a = torch.matmul(a, p["up_w"]) + (p["up_b"] + bias)
        return ln((h_raw + a) + take(input_tensor))


def _has_peft(dense: nn.Module, ctx: AdapterContext) -> bool:
    """Whether this dense layer carries PEFT deltas now (then the bottleneck site uses the plain node order)."""
    return isinstance(dense, LoraLinear) and dense._key in ctx.params


def copy_encoder(base: BaseModel) -> nn.Module:
    """A private deep copy of the HF encoder without the adapter hooks a shared base may carry."""
    hf = copy.deepcopy(base.model)
    hf.eval()
    for layer in hf.encoder.layer:
        layer._forward_hooks.clear()
    if hasattr(hf, "_adapterdeploy_ctx"):
        del hf._adapterdeploy_ctx
    return hf


def _extended_mask(hf: nn.Module, mask: Tensor, dtype: torch.dtype) -> Tensor:
    """HF's eager additive mask ``(1 - m[:, None, None, :]) * finfo.min`` (the pattern ORT's fusion expects)."""
    return hf.get_extended_attention_mask(mask, tuple(mask.shape), dtype=dtype)


class AdaptedLayer(nn.Module):
    """One HF layer plus its ``layer`` adapter site (after_layer placement), under one module scope so the
    exported node names of the adapter carry the layer index."""

    def __init__(self, layer: nn.Module, key: str, ctx: AdapterContext) -> None:
        super().__init__()
        self.layer = layer
        self._key = key
        self._ctx = ctx

    def forward(
        self,
        h: Tensor,
        ext: Tensor,
        rows: Tensor | None = None,
        queries: Tensor | None = None,
        folded: Tensor | None = None,
    ) -> Tensor:
        """``rows``: the layer ran once per unique text; gather its output to the batch's rows before the adapter.
        ``queries``: the token positions whose output is computed (:func:`query_attention`); None: every token.
        ``folded``: :func:`query_attention`'s bool scalar of that name."""
        if queries is None:
            h = self.layer(h, attention_mask=ext)[0]
        else:
            h = self.layer.feed_forward_chunk(query_attention(self.layer.attention, h, ext, queries, folded))
        if rows is not None:
            h = torch.index_select(h, 0, rows)
        p = self._ctx.params.get(self._key)
        lower = self._ctx.params.get(self._key + LOWER_SUFFIX)
        if lower is not None:
            return site_with_lower(h, None, None, p, lower, self._ctx.opts, self._ctx.act)
        return h if p is None else adapter_site(h, None, None, p, self._ctx.opts, self._ctx.act)


def query_attention(
    attention: nn.Module, h: Tensor, ext: Tensor, queries: Tensor, folded: Tensor | None = None
) -> Tensor:
    """A BERT attention block's output at the token positions ``queries`` only, ``[B, q, H]``: their queries
    against every token's key and value (under the full mask ``ext``), then the attention output sub-layer
    (with its adapter site) on those positions, the residual taken from ``h`` at them.

    Everything after the attention is per token, so the adapted graph's last layer with ``queries = [0]``
    gives the exact CLS state that ``cls`` / ``pooled`` read at a fraction of the work (the ``cls_only``
    input). HF's eager self-attention math, written out because HF's module has no query subset; the
    layer's own ``query`` / ``key`` / ``value`` modules are called, so PEFT wrappers still apply. Only for
    absolute position embeddings (:func:`supports_query_subset`).

    ``folded`` (a bool scalar, traced: the graph holds both forms): True computes the scores and the values
    with the key and value projections folded into the few queries instead of projecting every token
    (:func:`_folded_attention`); False, HF's form. Each form runs on its own slice of the queries and keys,
    and the one not chosen gets empty slices, so it costs a few empty nodes. The caller passes it only when
    the key and value projections have one weight for every row (no per-task PEFT delta on them:
    :func:`foldable_key_value`).
    """
    sa = attention.self
    B, nh, d = h.shape[0], sa.num_attention_heads, sa.attention_head_size
    hq = torch.index_select(h, 1, queries)
    q = sa.query(hq).view(B, -1, nh, d).transpose(1, 2)  # [B, nh, q, d]
    if folded is None:
        context = _projected_attention(sa, q, h, ext)
    else:
        # Two slices per axis, one of them empty: [0, split) for HF's form, [split, n) for the folded one.
        n_q, n_k = torch._shape_as_tensor(q)[2], torch._shape_as_tensor(h)[1]
        zero = torch.zeros_like(n_q)
        split_q, split_k = torch.where(folded, zero, n_q), torch.where(folded, zero, n_k)
        hf_q, fold_q = torch.arange(split_q), torch.arange(split_q, n_q)
        hf_k, fold_k = torch.arange(split_k), torch.arange(split_k, n_k)
        context = torch.cat(
            (
                _projected_attention(
                    sa, torch.index_select(q, 2, hf_q), torch.index_select(h, 1, hf_k), torch.index_select(ext, 3, hf_k)
                ),
                _folded_attention(
                    sa,
                    torch.index_select(q, 2, fold_q),
                    torch.index_select(h, 1, fold_k),
                    torch.index_select(ext, 3, fold_k),
                ),
            ),
            dim=2,
        )
    return attention.output(context.transpose(1, 2).reshape(B, -1, nh * d), hq)


def _projected_attention(sa: nn.Module, q: Tensor, h: Tensor, ext: Tensor) -> Tensor:
    """HF's form: every token's key and value projected, ``softmax(q k^T / sqrt(d) + ext) v`` ``[B, nh, q, d]``."""
    B, nh, d = h.shape[0], sa.num_attention_heads, sa.attention_head_size
    k = sa.key(h).view(B, -1, nh, d).transpose(1, 2)
    v = sa.value(h).view(B, -1, nh, d).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d) + ext  # ext [B, 1, 1, S]
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _folded_attention(sa: nn.Module, q: Tensor, h: Tensor, ext: Tensor) -> Tensor:
    """The same context as :func:`_projected_attention` without projecting the keys and values, ``[B, nh, q, d]``.

    Per head, ``q . (W_k x + b_k) = (W_k^T q) . x + q . b_k``: the last term is the same for every key, so
    softmax drops it, and the scores are ``x`` against the query folded into the hidden space. The context
    is ``sum_j p_j (W_v x_j + b_v) = W_v (sum_j p_j x_j) + b_v sum_j p_j``. Per query that is ``O(S H nh)``
    work instead of ``O(S H^2)`` for the projections: for the one CLS query, most of the last layer's
    attention cost. Exact in real arithmetic; in fp32 the sums are only reordered.
    """
    # Sizes are spelled out, as tensors (no -1: one of the two forms runs on empty slices, where -1 is
    # ambiguous; and the tracer keeps them dynamic instead of baking in the sample's). Heads and rows are laid
    # out so that every product is one GEMM per head or per row (nh + B of them) rather than one per (row,
    # head): onnxruntime runs a broadcast MatMul as one small GEMM per broadcast slice.
    B, S, H = torch._shape_as_tensor(h)
    nq = torch._shape_as_tensor(q)[2]
    nh, d = sa.num_attention_heads, sa.attention_head_size
    by_head = q.transpose(0, 1).reshape(nh, B * nq, d)  # [nh, B q, d]
    w_k = sa.key.weight.view(nh, d, -1)  # per head: k_h = x W_k[h]^T (nn.Linear stores [out, in])
    w_v = sa.value.weight.view(nh, d, -1).transpose(1, 2)  # [nh, H, d]
    folded_q = torch.matmul(by_head, w_k).view(nh, B, nq, H).transpose(0, 1).reshape(B, nh * nq, H)  # [B, nh q, H]
    scores = torch.matmul(folded_q, h.transpose(1, 2)).view(B, nh, nq, S) / math.sqrt(d) + ext
    p = torch.softmax(scores, dim=-1)  # [B, nh, q, S]
    mixed = torch.matmul(p.reshape(B, nh * nq, S), h).view(B, nh, nq, H)  # sum_j p_j x_j: [B, nh, q, H]
    context = torch.matmul(mixed.transpose(0, 1).reshape(nh, B * nq, H), w_v).view(nh, B, nq, d).transpose(0, 1)
    if sa.value.bias is None:
        return context
    return context + torch.sum(p, dim=-1, keepdim=True) * sa.value.bias.view(nh, 1, d)


def foldable_key_value(layer: nn.Module, keys: Sequence[str], index: int) -> bool:
    """Whether layer ``index``'s key and value projections have one weight for every row (what
    :func:`_folded_attention` folds): linear layers (our LoRA sites are, adding nothing without deltas) that
    no bank input of ``keys`` gives a per-task PEFT delta."""
    sa = layer.attention.self
    per_task = any(k.split(".")[1:3] in ([str(index), "key"], [str(index), "value"]) for k in keys)
    return not per_task and all(isinstance(getattr(sa, a, None), nn.Linear) for a in ("key", "value"))


def supports_query_subset(layer: nn.Module) -> bool:
    """Whether :func:`query_attention` is exact for this HF layer: BERT-style self-attention with absolute
    positions (relative position scores depend on the query positions: those layers always run whole)."""
    sa = getattr(getattr(layer, "attention", None), "self", None)
    return (
        sa is not None
        and all(hasattr(sa, a) for a in ("query", "key", "value", "num_attention_heads", "attention_head_size"))
        and getattr(sa, "position_embedding_type", "absolute") == "absolute"
        and not getattr(sa, "is_decoder", False)
        and hasattr(layer, "feed_forward_chunk")
    )


class Trunk(nn.Module):
    """Embeddings (+ ELECTRA's projection) and layers [0, K): no adapter, shared by every task."""

    def __init__(self, base: BaseModel, adapter_drop: int, hf: nn.Module | None = None) -> None:
        super().__init__()
        hf = hf if hf is not None else copy_encoder(base)
        self.hf = hf
        self.embeddings = hf.embeddings
        self.project = getattr(hf, "embeddings_project", None)
        self.layers = nn.ModuleDict({str(i): hf.encoder.layer[i] for i in range(adapter_drop)})

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        h = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        if self.project is not None:
            h = self.project(h)
        if not len(self.layers):  # K = 0: the mask is unused here; onnx_graphs keeps it a graph input
            return h
        ext = _extended_mask(self.hf, attention_mask, h.dtype)
        for layer in self.layers.values():
            h = layer(h, attention_mask=ext)[0]
        return h


class Adapted(nn.Module):
    """Layers [K, L) with adapter weights read per row from bank inputs, then cls / mean (/ pooled).

    ``forward(hidden, attention_mask, row_source, task_index, *bank)`` is the adapted graph;
    :meth:`encode` runs the layers with given (banked or single-task) weights, for standalone graphs.
    """

    def __init__(
        self, base: BaseModel, adapter_drop: int, signature: AdapterSignature, hf: nn.Module | None = None
    ) -> None:
        super().__init__()
        hf = hf if hf is not None else copy_encoder(base)
        self.hf = hf
        self.signature = signature
        self.adapted_layers = tuple(range(adapter_drop, base.num_layers))
        self.keys = bank_keys(signature, self.adapted_layers)
        self.ctx = AdapterContext(opts=signature.site, act=activation_fn(signature.activation))
        for i in self.adapted_layers:
            layer = hf.encoder.layer[i]
            layer.attention.output = BankedSublayerOutput(layer.attention.output, f"{i}.attn", self.ctx)
            layer.output = BankedSublayerOutput(layer.output, f"{i}.ffn", self.ctx)
        install_lora_sites(hf.encoder.layer, self.ctx, list(self.adapted_layers))  # rebind to this context
        self.layers = nn.ModuleDict(
            {str(i): AdaptedLayer(hf.encoder.layer[i], f"{i}.layer", self.ctx) for i in self.adapted_layers}
        )
        self.pooler = hf.pooler if base.has_pooler else None
        self.output_names = outputs_for(base)
        self.shared_until = shared_until(self.keys, adapter_drop)
        # The adapted graph takes the optional ``cls_only`` input (query_attention on the last layer) when that is
        # exact; not when the last layer is also layer K and the rows are gathered inside it (fan-out sharing):
        # that layer then runs whole, as before.
        self.cls_only = (
            bool(self.adapted_layers)
            and all(supports_query_subset(hf.encoder.layer[i]) for i in self.adapted_layers[-1:])
            and (len(self.adapted_layers) > 1 or self.shared_until is None)
        )
        last = self.adapted_layers[-1] if self.adapted_layers else -1
        self.fold_last = self.cls_only and foldable_key_value(hf.encoder.layer[last], self.keys, last)

    def gather(self, bank: Sequence[Tensor], task_index: Tensor) -> tuple[dict, dict]:
        """Per-row weights: ``bank[task_index]``; 2-D bank inputs come out as ``[B, 1, X]``."""
        col = task_index.unsqueeze(1)
        params: dict[str, dict[str, Tensor]] = {}
        lns: dict[str, list[Tensor]] = {}
        for key, t in zip(self.keys, bank, strict=True):
            g = torch.index_select(t, 0, task_index) if t.dim() == 3 else F.embedding(col, t)
            _, layer, site, leaf = key.split(".")
            if site.endswith("_ln"):
                lns.setdefault(f"{layer}.{site[:-3]}", []).append(g)
            else:
                params.setdefault(f"{layer}.{site}", {})[leaf] = g
        return params, {k: (v[0], v[1]) for k, v in lns.items()}

    def encode(
        self,
        h: Tensor,
        mask: Tensor,
        params: dict,
        lns: dict,
        rows: Tensor | None = None,
        unique_mask: Tensor | None = None,
        queries: Tensor | None = None,
        folded: Tensor | None = None,
    ) -> Tensor:
        """Layers [K, L) with ``params`` / ``lns`` (one row each per row of the batch); every token's last state.

        Without ``rows``, ``h`` has one row per batch row (standalone graphs). With ``rows`` (row_source),
        ``h`` and ``unique_mask`` are per unique text and ``mask`` per row: layer K runs once per text up to
        :attr:`shared_until` and the gather to the rows happens there, so a fan-out of one text to n tasks
        computes that part once instead of n times (for after_layer adapters all of layer K).
        ``queries``: the last layer's output only at these token positions (``[B, q, H]``; see :attr:`cls_only`),
        its attention in :func:`query_attention`'s ``folded`` form when that bool scalar is True.
        """
        if rows is not None and self.shared_until is None:
            h, rows = torch.index_select(h, 0, rows), None
        ext = _extended_mask(self.hf, mask, h.dtype)
        ext_k = _extended_mask(self.hf, unique_mask, h.dtype) if rows is not None and unique_mask is not None else ext
        self.ctx.params, self.ctx.layernorms = params, lns
        try:
            last = len(self.layers) - 1
            for i, layer in enumerate(self.layers.values()):
                q, f = (queries, folded) if i == last else (None, None)
                h = self._layer(layer, h, ext_k if i == 0 else ext, rows if i == 0 else None, q, f)
        finally:
            self.ctx.clear()
        return h

    def _layer(
        self,
        layer: AdaptedLayer,
        h: Tensor,
        ext: Tensor,
        rows: Tensor | None,
        queries: Tensor | None = None,
        folded: Tensor | None = None,
    ) -> Tensor:
        """One adapted layer; ``rows`` are gathered where :attr:`shared_until` says (set on that sub-layer)."""
        site = self.shared_until if rows is not None else None
        module = {"attn": layer.layer.attention.output, "ffn": layer.layer.output}.get(site or "")
        if module is not None:
            module.rows = rows
        try:
            return layer(h, ext, rows if site == "layer" else None, queries, folded)
        finally:
            if module is not None:
                module.rows = None

    def features(self, h: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
        out = (h[:, 0], mean_pool(h, mask))
        out = (*out, self.pooler(h)) if self.pooler is not None else out
        return (*out, h)  # tokens

    def forward(
        self, hidden: Tensor, attention_mask: Tensor, row_source: Tensor, task_index: Tensor, *bank: Tensor
    ) -> tuple[Tensor, ...]:
        """The adapted graph. With :attr:`cls_only`, ``bank`` ends with the bool scalar ``cls_only`` (one more
        than :attr:`keys`): True computes the last layer at the first token only (``queries = [0]``), so ``cls``
        and ``pooled`` are exact and ``mean`` / ``tokens`` cover that one token (a caller that reads them feeds
        False, the default the exported graph holds as an initializer)."""
        flag = bank[len(self.keys)] if len(bank) > len(self.keys) else None
        bank = bank[: len(self.keys)]
        mask = torch.index_select(attention_mask, 0, row_source)
        params, lns = self.gather(bank, task_index)
        queries = None
        if flag is not None:
            seq = torch._shape_as_tensor(hidden)[1]  # traced: the sequence length stays dynamic in the graph
            queries = torch.arange(torch.where(flag, torch.ones_like(seq), seq))
        # The one CLS query also takes the folded attention (query_attention): no key / value projection of
        # every token in the last layer.
        folded = flag if self.fold_last else None
        h = self.encode(hidden, mask, params, lns, row_source, attention_mask, queries, folded)
        return self.features(h, mask if queries is None else torch.index_select(mask, 1, queries))


def shared_until(keys: Sequence[str], adapter_drop: int) -> str | None:
    """Where the first adapted layer K stops being the same for every task, when that is late enough to share:
    ``layer`` (after the whole layer: ``after_layer`` adapters) or ``ffn`` (after the feed-forward output
    dense: Pfeiffer / seq_bn). Everything before it runs once per unique text in the adapted graph.

    None (the rows are gathered before layer K, as before) when layer K reads bank rows earlier: PEFT deltas
    on its linear layers, a Houlsby / double_seq_bn site or per-task LayerNorm at the attention output.
    Gathering there would share the self-attention too, but the Gather between the attention's output
    projection and its LayerNorm cost layer K its fused Attention (measured: 2 of 3 Attention fusions and
    +33 nodes on the tiny model's Houlsby graph), which every single-task call would pay.
    """
    sites = [k.split(".") for k in keys if k.split(".")[1] == str(adapter_drop)]
    if any(leaf in LORA_LEAVES for _, _, _, leaf in sites):
        return None
    for site in ("attn", "ffn", "layer"):
        if any(name == site or name.startswith((site + "_", site + LOWER_SUFFIX)) for _, _, name, _ in sites):
            return None if site == "attn" else site
    return None


class HeadGraph(nn.Module):
    """``head.onnx``: pooled features ``[rows, H]`` -> logits (dense layers of the task's head)."""

    def __init__(self, head: TaskHead) -> None:
        super().__init__()
        self.head = copy.deepcopy(head).eval()

    def forward(self, features: Tensor) -> Tensor:
        return self.head.forward_pooled(features)


class StandaloneModel(nn.Module):
    """One task, self-contained: trunk + adapted layers with the task's rows as constants + head.

    PEFT deltas (LoRA, IA3) are folded into the linear layers' weights (:func:`fold_peft`): the graph has the
    plain model's nodes, so a LoRA task's standalone model has no adapter overhead at all.
    """

    def __init__(self, trunk: Trunk, adapted: Adapted, rows: dict[str, Tensor], head: TaskHead) -> None:
        super().__init__()
        self.trunk, self.adapted = trunk, adapted
        self.head = HeadGraph(head)
        self.feature = outputs_feature_index(head.config.feature, adapted.output_names)
        self._names = []
        peft: dict[str, dict[str, Tensor]] = {}
        skip = _zero_sites(adapted, rows)
        for key in adapted.keys:
            _, layer, module, leaf = key.split(".")
            if leaf in LORA_LEAVES:
                peft.setdefault(f"{layer}.{module}", {})[leaf] = rows[key]
                continue
            if f"{layer}.{module}" in skip:
                continue
            self.register_buffer(f"w{len(self._names)}", rows[key].clone())
            self._names.append(key)
        self._folded = []
        for j, (site, p) in enumerate(sorted(peft.items())):
            layer, module = site.split(".")
            parent, attr = slot_modules(adapted.hf.encoder.layer[int(layer)])[module]
            merged = fold_peft(getattr(parent, attr), p)
            self.register_buffer(f"peft{j}_w", merged["weight"])
            self.register_buffer(f"peft{j}_b", merged["bias"])
            self._folded.append(site)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        h = self.trunk(input_ids, attention_mask, token_type_ids)
        params: dict[str, dict[str, Tensor]] = {}
        lns: dict[str, list[Tensor]] = {}
        for i, key in enumerate(self._names):
            _, layer, site, leaf = key.split(".")
            t = getattr(self, f"w{i}")
            if site.endswith("_ln"):
                lns.setdefault(f"{layer}.{site[:-3]}", []).append(t)
            else:
                params.setdefault(f"{layer}.{site}", {})[leaf] = t
        for j, site in enumerate(self._folded):
            params[site] = {"weight": getattr(self, f"peft{j}_w"), "bias": getattr(self, f"peft{j}_b")}
        h = self.adapted.encode(h, attention_mask, params, {k: (v[0], v[1]) for k, v in lns.items()})
        return self.head(self.adapted.features(h, attention_mask)[self.feature])


def _zero_sites(adapted: Adapted, rows: dict[str, Tensor]) -> set[str]:
    """Bottleneck sites whose rows are all zero, when a zero adapter is exactly no adapter: a standalone graph
    leaves them out (a PEFT-only task's standalone model then has the plain model's nodes)."""
    if not zero_adapter_is_identity(adapted.signature) or adapted.signature.fusion:
        return set()  # (a fusion site reads all its slots, zero or not)
    sites: dict[str, bool] = {}
    for key in adapted.keys:
        _, layer, site, leaf = key.split(".")
        if leaf in SITE_WEIGHTS:
            sites[f"{layer}.{site}"] = sites.get(f"{layer}.{site}", True) and not bool(rows[key].any())
    return {s for s, zero in sites.items() if zero}


def outputs_feature_index(name: str, output_names: Sequence[str]) -> int:
    """The index of the adapted output a head reads (``HeadConfig.feature``: cls, mean, pooled or tokens)."""
    if name not in output_names:
        raise ExportError(f"the head reads the adapted output {name!r}, which this base does not have")
    return list(output_names).index(name)
