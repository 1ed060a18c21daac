"""Task checkpoints: a directory with ``adapter.safetensors`` + ``task.json``. Never pickle.

``adapter.safetensors`` holds the task's own weights (adapters, own LayerNorms, head) under the
state-dict names of :class:`~adapterdeploy.models.encoder.EncoderWithAdapters`; ``task.json`` says what
they mean (adapter and head config, labels, tokenizer settings, base fingerprint, metrics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from adapterdeploy.artifacts import BaseSpec, atomic_directory, sha256_file
from adapterdeploy.config import AdapterConfig, AdapterSignature, HeadConfig
from adapterdeploy.errors import (
    ArtifactError,
    ChecksumError,
    ConfigError,
    FingerprintMismatchError,
    SchemaVersionError,
)
from adapterdeploy.models.base import BaseModel
from adapterdeploy.models.encoder import EncoderWithAdapters
from adapterdeploy.models.fusion import FusionSpec
from adapterdeploy.models.stack import LowerAdapter
from adapterdeploy.validation import Fields, check_task_name

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "TaskCheckpoint",
    "checkpoint_from_model",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "adapterdeploy.task-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
WEIGHTS_FILE = "adapter.safetensors"
META_FILE = "task.json"


@dataclass(frozen=True)
class TaskCheckpoint:
    """A task's adapters + head, independent of any deployment."""

    name: str
    base: BaseSpec  # the base it was trained on (older checkpoints record only some fields: see BaseSpec)
    adapter: AdapterConfig
    head: HeadConfig
    max_length: int = 128
    text_pair: bool = False
    weights: dict[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    source: str = "adapterdeploy"
    path: Path | None = None
    # Stack: the frozen lower adapter this task's adapter sits on (weights under ``lower.*``); see models/stack.py.
    stack_on: LowerAdapter | None = None
    # AdapterFusion: the fused adapters (slot 0 = ``adapter``) and the library options; see models/fusion.py.
    fusion: FusionSpec | None = None

    @property
    def hidden_size(self) -> int:
        return self.base.hidden_size

    @property
    def num_layers(self) -> int:
        return self.base.num_layers

    def bottleneck(self) -> int:
        return self.adapter.bottleneck_size(self.hidden_size)

    def bank_bottleneck(self) -> int:
        """The bottleneck of the task's bank rows: a fusion task's slots are padded to its widest adapter."""
        if self.fusion is None:
            return self.bottleneck()
        return max(c.bottleneck_size(self.hidden_size) for c in self.fusion.adapters)

    def signature(self) -> AdapterSignature:
        """The featurizer signature this task needs (a stacked task needs the lower adapter slots)."""
        sig = self.adapter.signature()
        if self.fusion is not None:
            sig = replace(sig, fusion=self.fusion.n)
        return replace(sig, stack=True) if self.stack_on is not None else sig

    def check_base(self, base: BaseModel) -> None:
        """Refuse a checkpoint trained on another base model."""
        if self.base.fingerprint != base.fingerprint:
            raise FingerprintMismatchError(
                f"task {self.name!r} ({self.path or 'in memory'}) was trained on a different base model "
                f"(fingerprint {self.base.fingerprint[:12]}…) than {base.path} ({base.fingerprint[:12]}…); "
                "pass the --base it was trained on, or retrain it on this base"
            )

    def build_model(self, base: BaseModel) -> EncoderWithAdapters:
        """An EncoderWithAdapters on ``base`` with this checkpoint's weights loaded (strictly)."""
        self.check_base(base)
        model = EncoderWithAdapters(
            base, self.adapter, self.head, self.stack_on.config if self.stack_on is not None else None, self.fusion
        )
        own = model.trainable_state_dict()
        missing = sorted(set(own) - set(self.weights))
        unexpected = sorted(set(self.weights) - set(own))
        if missing or unexpected:
            raise ArtifactError(
                f"checkpoint {self.name!r} does not match its task.json: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        model.load_state_dict(self.weights, strict=False)
        model.eval()
        return model

    def meta(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "name": self.name,
            "source": self.source,
            "base": {k: v for k, v in self.base.to_dict().items() if k != "config"},
            "adapter": self.adapter.to_dict(),
            "head": self.head.to_dict(),
            "tokenizer": {"max_length": self.max_length, "text_pair": self.text_pair},
            "metrics": self.metrics,
            "training": self.training,
            **({"stack_on": self.stack_on.to_dict()} if self.stack_on is not None else {}),
            **({"fusion": self.fusion.to_dict()} if self.fusion is not None else {}),
        }


def save_checkpoint(ckpt: TaskCheckpoint, out_dir: str | Path, *, force: bool = False) -> Path:
    """Write ``adapter.safetensors`` + ``task.json`` atomically (temp dir + rename)."""
    out = Path(out_dir)
    with atomic_directory(out, force=force) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in ckpt.weights.items()}
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT})
        meta = ckpt.meta()
        meta["weights_sha256"] = sha256_file(tmp / WEIGHTS_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
    return out


def load_checkpoint(path: str | Path) -> TaskCheckpoint:
    """Read a task checkpoint directory, checking format version and weights checksum."""
    p = Path(path)
    meta_file, weights_file = p / META_FILE, p / WEIGHTS_FILE
    if not p.is_dir():
        raise ArtifactError(
            f"task checkpoint {p} does not exist (expected a directory with {META_FILE} and {WEIGHTS_FILE})"
        )
    for f in (meta_file, weights_file):
        if not f.is_file():
            raise ArtifactError(
                f"task checkpoint {p} has no {f.name}; was it written by 'adapterdeploy train' or 'import-adapterhub'?"
            )
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{meta_file} is not valid JSON ({exc}); the checkpoint is corrupt") from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"{meta_file} is not an adapterdeploy task checkpoint (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise SchemaVersionError(
            f"{meta_file} has format_version {version}, this adapterdeploy reads up to {CHECKPOINT_FORMAT_VERSION}; "
            "upgrade adapterdeploy"
        )
    expected = meta.get("weights_sha256")
    if expected and sha256_file(weights_file) != expected:
        raise ChecksumError(
            f"{weights_file} does not match the sha256 in {meta_file}: the file is corrupt or truncated"
        )
    try:
        weights = load_file(str(weights_file))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"cannot read {weights_file}: {exc}") from exc
    return _from_meta(meta, weights, p)


def _from_meta(meta: dict[str, Any], weights: dict[str, torch.Tensor], p: Path) -> TaskCheckpoint:
    """Validate the checkpoint's task.json field by field and against the weights actually read."""
    f = Fields(meta, p / META_FILE, fix="re-create the checkpoint with 'adapterdeploy train' or 'import-adapterhub'")
    name = f.text("name")
    check_task_name(name, f"{p / META_FILE}: field 'name'", ArtifactError)
    base = BaseSpec.from_dict(f.mapping("base"), p / META_FILE, fix=f.fix)
    tok = f.obj("tokenizer", {})
    layers = base.num_layers
    adapter = f.build("adapter", AdapterConfig.from_dict)
    ckpt = TaskCheckpoint(
        name=name,
        base=base,
        adapter=adapter,
        head=f.build("head", HeadConfig.from_dict),
        max_length=tok.integer("max_length", 128, lo=2, hi=1 << 20),
        text_pair=tok.flag("text_pair", False),
        weights=weights,
        metrics=f.mapping("metrics", {}),
        training=f.mapping("training", {}),
        source=str(meta.get("source", "adapterdeploy")),
        path=p,
        stack_on=f.build("stack_on", LowerAdapter.from_dict) if f.has("stack_on") else None,
        fusion=f.build("fusion", FusionSpec.from_dict) if f.has("fusion") else None,
    )
    try:
        m = ckpt.bottleneck()
        adapter.adapter_layers(layers)
    except ConfigError as exc:
        f.fail("adapter", str(exc))
    _check_shapes(ckpt, m, f)
    return ckpt


def _check_shapes(ckpt: TaskCheckpoint, m: int, f: Fields) -> None:
    """Adapter and head weights must have the shapes task.json implies, before any model is built from them
    (a bottleneck in task.json alone must never decide an allocation)."""
    H, n_out = ckpt.hidden_size, ckpt.head.out_features
    for key, t in ckpt.weights.items():
        if not key.startswith("adapters."):  # the task's own adapters; a stack's lower adapter has its own size
            continue
        want = None
        if key.endswith(".down.weight"):
            want = (m, H)
        elif key.endswith(".up.weight"):
            want = (H, m)
        elif key.endswith(".down.bias"):
            want = (m,)
        if want is not None and tuple(t.shape) != want:
            f.fail(
                "adapter",
                f"implies {key} of shape {list(want)} (bottleneck {m}, hidden {H}), the weights have {list(t.shape)}",
            )
    out = ckpt.weights.get("head.out.weight")
    if out is not None and tuple(out.shape) != (n_out, H):
        f.fail(
            "head",
            f"declares {n_out} outputs ({len(ckpt.head.labels)} labels) over hidden size {H}, the weights' "
            f"head.out.weight has shape {list(out.shape)}",
        )


def checkpoint_from_model(
    model: EncoderWithAdapters,
    name: str,
    *,
    max_length: int,
    text_pair: bool,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    source: str = "adapterdeploy",
    stack_on: LowerAdapter | None = None,
) -> TaskCheckpoint:
    """Snapshot a model's own weights into a TaskCheckpoint (copies, so later training does not alter it)."""
    return TaskCheckpoint(
        name=name,
        base=model.base_info.spec,
        adapter=model.adapter_config,
        head=model.head_config,
        max_length=max_length,
        text_pair=text_pair,
        weights={k: v.detach().clone() for k, v in model.trainable_state_dict().items()},
        metrics=dict(metrics or {}),
        training=dict(training or {}),
        source=source,
        stack_on=stack_on,
    )
