"""Helpers shared by the exporter tests: tiny task checkpoints with adapters that really change the output."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from adapterdeploy.config import AdapterConfig, HeadConfig, PeftSpec, SiteOptions
from adapterdeploy.models.base import BaseModel
from adapterdeploy.models.checkpoint import checkpoint_from_model, save_checkpoint
from adapterdeploy.models.encoder import EncoderWithAdapters

TEXTS = ["the movie was good", "a very bad film and a boring plot", "yes", "one two three four five six seven"]
PAIRS = [("it is great", "the story was terrible"), ("the company said shares were up", "the price fell")]


def make_checkpoint(
    base: BaseModel,
    out: Path,
    name: str,
    *,
    placement: str = "houlsby",
    bottleneck: int = 4,
    layers: tuple[int, ...] | None = None,
    pooling: str = "cls",
    head_layers: int = 0,
    text_pair: bool = False,
    regression: bool = False,
    per_task_layernorm: bool = False,
    site: SiteOptions | None = None,
    seed: int = 0,
    num_labels: int = 3,
    std: float = 0.3,
    head_std: float = 0.5,
) -> Path:
    """Random adapters (std 0.3 on the tiny base, so parity is tested on outputs adapters actually move) and a
    random head; on a real base use smaller values (std 0.3 on H=384 multiplies the hidden states ~10x per layer)."""
    torch.manual_seed(seed)
    cfg = AdapterConfig(
        placement=placement,
        bottleneck=bottleneck,
        layers=layers,
        init_std=std,
        per_task_layernorm=per_task_layernorm,
        site=site or SiteOptions(),
    )
    head = HeadConfig(
        problem_type="regression" if regression else "single_label_classification",
        num_labels=1 if regression else num_labels,
        pooling=pooling,
        hidden_layers=head_layers,
    )
    model = EncoderWithAdapters(base, cfg, head)
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0.0, head_std)
        for lns in model.layernorms.values():
            for ln in lns.values():
                ln.weight.add_(torch.randn_like(ln.weight) * 0.2)
                ln.bias.add_(torch.randn_like(ln.bias) * 0.2)
        for sites in model.adapters.values():  # nonzero biases too, so zero padding is really exercised
            for ad in sites.values():
                ad.down.bias.normal_(0.0, std)
                ad.up.bias.normal_(0.0, std)
    ckpt = checkpoint_from_model(model, name, max_length=48, text_pair=text_pair)
    return save_checkpoint(ckpt, out / name, force=True)


def torch_logits(base: BaseModel, ckpt_dir: Path, items: list, max_length: int, adapter_drop: int = 0) -> np.ndarray:
    """The task's PyTorch logits (adapters below K removed) on items tokenized one by one."""
    from adapterdeploy.exporter.adapter_drop import without_dropped
    from adapterdeploy.models.checkpoint import load_checkpoint

    model = without_dropped(load_checkpoint(ckpt_dir), adapter_drop).build_model(base)
    tok = base.load_tokenizer()
    out = []
    with torch.no_grad():
        for item in items:
            a, b = (item, None) if isinstance(item, str) else item
            enc = tok(a, b, truncation=True, max_length=max_length, return_tensors="pt", return_token_type_ids=True)
            out.append(model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])[0].numpy())
    return np.stack(out)


def random_task_models(
    base: BaseModel, first_layer: int, kwargs: dict, n: int, lora: tuple[str, ...] = ()
) -> list[EncoderWithAdapters]:
    """``n`` task models with adapters on layers [first_layer, L) (bottlenecks 4, 6, ...; ``kwargs`` for
    AdapterConfig, ``lora``: PEFT LoRA rank 2 on those modules) and every trainable weight drawn N(0, 0.3),
    so that each task's adapters really change the output; seeded, the same models on every call."""
    torch.manual_seed(0)
    models = []
    for i in range(n):
        cfg = AdapterConfig(layers=tuple(range(first_layer, base.num_layers)), bottleneck=4 + 2 * i, **kwargs)
        if lora:
            cfg = dataclasses.replace(cfg, peft=PeftSpec(lora=lora, rank=2))
        model = EncoderWithAdapters(base, cfg, HeadConfig(num_labels=2))
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0.0, 0.3)
        models.append(model.eval())
    return models
