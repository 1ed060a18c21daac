"""EncoderWithAdapters: a frozen HF BERT-family encoder + one task's adapters and head (training / reference).

Also the pooling and head modules shared with the exporter. The exporter's banked featurizer reuses
:func:`adapterdeploy.models.adapters.install_adapter_sites` with a whole bank instead of one task.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from adapterdeploy.config import AdapterConfig, HeadConfig
from adapterdeploy.errors import ConfigError
from adapterdeploy.models.adapters import LOWER_SUFFIX, BottleneckAdapter, install_adapter_sites
from adapterdeploy.models.base import BaseModel
from adapterdeploy.models.fusion import FusionSpec, fusion_params
from adapterdeploy.models.lora import module_dims

__all__ = ["EncoderWithAdapters", "TaskHead", "mean_pool"]


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of the hidden states over real (mask = 1) tokens: ``sum(h * m) / max(sum(m), 1)``."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


_HEAD_ACTS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


class TaskHead(nn.Module):
    """Pooling (cls / mean / base pooler) -> 0..2 hidden dense layers -> output layer."""

    def __init__(self, config: HeadConfig, hidden_size: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = config
        self.hidden = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(config.hidden_layers))
        self.act = _HEAD_ACTS[config.hidden_activation]()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, config.out_features)

    def pool(self, hidden: Tensor, attention_mask: Tensor, pooler: nn.Module | None) -> Tensor:
        if self.config.pooling == "mean":
            return mean_pool(hidden, attention_mask)
        if self.config.pooling == "pooler":
            assert pooler is not None
            return pooler(hidden)
        return hidden[:, 0]

    def forward_pooled(self, z: Tensor) -> Tensor:
        for lin in self.hidden:
            z = self.act(lin(self.dropout(z)))
        return self.out(self.dropout(z))

    def forward(self, hidden: Tensor, attention_mask: Tensor, pooler: nn.Module | None = None) -> Tensor:
        if self.config.token_level:  # tagging: the same dense layers on every token, [B, S, out]
            return self.forward_pooled(hidden)
        return self.forward_pooled(self.pool(hidden, attention_mask, pooler))


class EncoderWithAdapters(nn.Module):
    """One task: frozen base + bottleneck adapters (+ optional own LayerNorms) + head.

    Trainable: ``adapters``, ``layernorms`` (when per_task_layernorm), ``lora`` (PEFT deltas, when the config
    has ``peft``) and ``head``; the base never is, nor the ``lower`` adapter of a stack (stored in the
    checkpoint, frozen). State-dict names of the trainable part: ``adapters.{layer}.{site}.down.weight``,
    ``layernorms.{layer}.{attn|ffn}.weight``, ``lora.{layer}.{module}.lora_a`` (see models/lora.py),
    ``head.out.weight`` ...
    """

    def __init__(
        self,
        base: BaseModel,
        adapter_config: AdapterConfig,
        head_config: HeadConfig,
        lower_config: AdapterConfig | None = None,
        fusion: FusionSpec | None = None,
    ) -> None:
        super().__init__()
        if head_config.pooling == "pooler" and not base.has_pooler:
            raise ConfigError(
                f"pooling 'pooler' needs the base's pooler weights, which {base.path} does not have; "
                "use --pooling cls or mean"
            )
        self.base_info = base
        self.base = base.model
        self.adapter_config = adapter_config
        self.head_config = head_config
        self.layer_ids = adapter_config.adapter_layers(base.num_layers)
        H = base.hidden_size
        m = adapter_config.bottleneck_size(H)
        opts = adapter_config.site_options()
        self.adapters = nn.ModuleDict(
            {
                str(i): nn.ModuleDict(
                    {s: BottleneckAdapter(H, m, opts, adapter_config.init_std) for s in adapter_config.sites}
                )
                for i in self.layer_ids
            }
        )
        self.layernorms = nn.ModuleDict()
        if adapter_config.per_task_layernorm:
            for i in self.layer_ids:
                layer = self.base.encoder.layer[i]
                lns = {"attn": layer.attention.output.LayerNorm, "ffn": layer.output.LayerNorm}
                self.layernorms[str(i)] = nn.ModuleDict({k: _copy_layernorm(v) for k, v in lns.items()})
        self.lora = nn.ModuleDict()
        if adapter_config.peft is not None:
            self.lora = _peft_weights(adapter_config, H, int(self.base.config.intermediate_size), self.layer_ids)
        self.head = TaskHead(head_config, H, dropout=getattr(self.base.config, "hidden_dropout_prob", 0.1))
        # Stack: a frozen lower adapter under each site's adapter (models/stack.py); never trained here.
        self.lower_config = lower_config
        self.lower = nn.ModuleDict()
        if lower_config is not None:
            m_low, low_opts = lower_config.bottleneck_size(H), lower_config.site_options()
            for i in lower_config.adapter_layers(base.num_layers):
                self.lower[str(i)] = nn.ModuleDict(
                    {s: BottleneckAdapter(H, m_low, low_opts, lower_config.init_std) for s in lower_config.sites}
                )
            for p in self.lower.parameters():
                p.requires_grad_(False)
        # AdapterFusion (models/fusion.py): slots 1..N-1 under ``fused.{j}`` (slot 0 is ``adapters``) and the
        # folded attention weights under ``fusion``; imported only, never trained here.
        self.fusion = fusion
        self.fused = nn.ModuleDict()
        self.fusion_w = nn.ModuleDict()
        if fusion is not None:
            if adapter_config.site.ln_after or adapter_config.placement == "after_layer":
                raise ConfigError(
                    "AdapterFusion runs on seq_bn / double_seq_bn sites without an adapter LayerNorm after"
                )
            for j, cfg in enumerate(fusion.adapters[1:], start=1):
                m_j = cfg.bottleneck_size(H)
                self.fused[str(j)] = nn.ModuleDict(
                    {
                        str(i): nn.ModuleDict({s: BottleneckAdapter(H, m_j, opts, cfg.init_std) for s in cfg.sites})
                        for i in self.layer_ids
                    }
                )
            self.fusion_w = nn.ModuleDict(
                {
                    str(i): nn.ModuleDict(
                        {
                            s: nn.ParameterDict(
                                {
                                    "fuse_qk": nn.Parameter(torch.zeros(H, H)),
                                    "fuse_qb": nn.Parameter(torch.zeros(H)),
                                    "fuse_v": nn.Parameter(torch.zeros(H, H)),
                                }
                            )
                            for s in adapter_config.sites
                        }
                    )
                    for i in self.layer_ids
                }
            )
        self.ctx = install_adapter_sites(self.base)
        for p in self.base.parameters():
            p.requires_grad_(False)

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The task's own weights (adapters, own LayerNorms, head): what a task checkpoint stores."""
        sd = self.state_dict()
        return {
            k: v
            for k, v in sd.items()
            if k.split(".", 1)[0] in ("adapters", "layernorms", "lora", "head", "lower", "fused", "fusion_w")
        }

    def _fill_context(self) -> None:
        params = {
            f"{i}.{site}": adapter.site_params()
            for i, sites in self.adapters.items()
            for site, adapter in sites.items()
        }
        params.update(
            {
                f"{i}.{site}{LOWER_SUFFIX}": adapter.site_params()
                for i, sites in self.lower.items()
                for site, adapter in sites.items()
            }
        )
        params.update({f"{i}.{m}": dict(w.items()) for i, mods in self.lora.items() for m, w in mods.items()})
        if self.fusion is not None:
            params.update(fusion_params(self.fused, self.fusion_w, self.fusion.n))
        lns = {f"{i}.{k}": (ln.weight, ln.bias) for i, lns in self.layernorms.items() for k, ln in lns.items()}
        self.ctx.activate(self.adapter_config, params, lns)

    def encode(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Last hidden states with this task's adapters, ``[B, S, H]``."""
        self._fill_context()
        try:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            return self.base(**kwargs).last_hidden_state
        finally:
            self.ctx.clear()

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """Logits ``[B, num_labels]`` (``[B, 1]`` for regression, ``[B, S, num_labels]`` for a tagging head)."""
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        return self.head(hidden, attention_mask, getattr(self.base, "pooler", None))

    def count_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        trainable = sum(v.numel() for k, v in self.trainable_state_dict().items() if not k.startswith("lower."))
        total = trainable + sum(p.numel() for p in self.base.parameters())
        return trainable, total


def _peft_weights(
    config: AdapterConfig, hidden_size: int, intermediate_size: int, layer_ids: tuple[int, ...]
) -> nn.ModuleDict:
    """Zero-initialised PEFT delta parameters (zero = no change), ``lora.{layer}.{module}.{leaf}``."""
    peft = config.peft
    assert peft is not None
    dims = module_dims(hidden_size, intermediate_size)
    sides = {}
    for entry in peft.ia3:
        module, side = entry.rsplit(".", 1)
        sides.setdefault(module, []).append(side)
    out = nn.ModuleDict()
    for i in layer_ids:
        mods = nn.ModuleDict()
        for module in sorted(set(peft.lora) | set(sides)):
            d_in, d_out = dims[module]
            p = nn.ParameterDict()
            if module in peft.lora:
                p["lora_a"] = nn.Parameter(torch.zeros(d_in, peft.rank))
                p["lora_b"] = nn.Parameter(torch.zeros(peft.rank, d_out))
            for side in sides.get(module, []):
                p[f"ia3_{side}"] = nn.Parameter(torch.zeros(d_in if side == "in" else d_out))
            mods[module] = p
        out[str(i)] = mods
    return out


def _copy_layernorm(ln: nn.LayerNorm) -> nn.LayerNorm:
    new = nn.LayerNorm(ln.normalized_shape, eps=ln.eps)
    with torch.no_grad():
        new.weight.copy_(ln.weight)
        new.bias.copy_(ln.bias)
    return new
