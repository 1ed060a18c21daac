"""Build PEFT adapters with the peft library on tiny random bases (every LoRA / IA3 / head weight random)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def make_peft_adapter(
    base_dir: Path,
    out: Path,
    kind: str = "lora",
    *,
    num_labels: int = 3,
    seed: int = 0,
    scale: float = 0.3,
    **config: Any,
) -> Path:
    """``save_pretrained`` a PEFT SEQ_CLS adapter on ``base_dir`` with all adapter parameters randomised."""
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    hf_logging.set_verbosity_error()
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_dir), num_labels=num_labels, attn_implementation="eager"
    )
    if kind == "lora":
        cfg = LoraConfig(
            task_type="SEQ_CLS", **{"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"], **config}
        )
    else:
        cfg = IA3Config(task_type="SEQ_CLS", **config)
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if p.requires_grad:  # LoRA A/B, IA3 vectors and the modules_to_save copies
                p.copy_(
                    torch.randn(p.shape, generator=gen) * (scale if "ia3" not in name else 0.2)
                    + (1.0 if "ia3" in name else 0.0)
                )
    peft_model.save_pretrained(str(out))
    return out


def peft_logits(base_dir: Path, adapter_dir: Path, num_labels: int, enc: dict) -> torch.Tensor:
    """Logits of PEFT's own model (PeftModel.from_pretrained) on tokenized inputs."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(
        str(base_dir), num_labels=num_labels, attn_implementation="eager"
    )
    model = PeftModel.from_pretrained(hf, str(adapter_dir)).eval()
    with torch.no_grad():
        return model(**enc).logits
