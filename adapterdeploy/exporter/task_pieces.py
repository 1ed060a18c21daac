"""Per-task pieces of a deployment: ``adapters.safetensors``, ``head.onnx`` and ``task.json``.

A task piece carries no featurizer weights: its bank rows (every bank key of the featurizer, its own
bottleneck m, no T axis; zero rows in adapted layers where it has no adapter) and its head in "x @ W"
layout, so the runtime can run standard heads in numpy, plus ``head.onnx`` for anything else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file

from adapterdeploy.artifacts import TASK_HEAD_FILE, TASK_WEIGHTS_FILE, TaskSpec, file_entry
from adapterdeploy.config import AdapterSignature
from adapterdeploy.exporter.adapter_drop import dropped_layers, without_dropped
from adapterdeploy.exporter.featurizer import fusion_slot, head_rows, is_fusion_key, task_rows
from adapterdeploy.models.base import BaseModel
from adapterdeploy.models.checkpoint import TaskCheckpoint
from adapterdeploy.models.encoder import EncoderWithAdapters, TaskHead

__all__ = [
    "TASK_PIECE_FORMAT",
    "PreparedTask",
    "bank_of",
    "prepare_task",
    "reference_model",
    "write_task_files",
    "write_task_piece",
]

TASK_PIECE_FORMAT = "adapterdeploy.task-piece"


@dataclass
class PreparedTask:
    """A checkpoint made ready to export: its bank rows, head (weights and module) and adapted layers.

    It holds no PyTorch model: a task's :class:`EncoderWithAdapters` is built (:func:`reference_model`) while
    its references are computed and freed afterwards, so an export of N tasks never has N models alive.
    """

    ckpt: TaskCheckpoint
    rows: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    head_module: TaskHead
    layers: tuple[int, ...]
    dropped: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.ckpt.name


def reference_model(base: BaseModel, ckpt: TaskCheckpoint, adapter_drop: int) -> EncoderWithAdapters:
    """The task's PyTorch model as deployed (adapters below K removed) on the shared ``base``."""
    return without_dropped(ckpt, adapter_drop).build_model(base)


def prepare_task(
    base: BaseModel,
    ckpt: TaskCheckpoint,
    signature: AdapterSignature,
    adapter_drop: int,
    adapted_layers: Sequence[int],
    model: EncoderWithAdapters | None = None,
) -> PreparedTask:
    """The task's bank rows and head, read from ``model`` (built here and dropped when not given)."""
    model = model if model is not None else reference_model(base, ckpt, adapter_drop)
    return PreparedTask(
        # Its weights now live in ``rows`` / ``head``: kept twice, they were most of a task's export memory.
        ckpt=dataclasses.replace(ckpt, weights={}),
        rows=task_rows(model, signature, adapted_layers),
        head=head_rows(model.head),
        head_module=model.head,
        layers=tuple(model.layer_ids),
        dropped=dropped_layers(ckpt, adapter_drop),
    )


def write_task_piece(task_dir: Path, task: PreparedTask, *, fingerprint: str, parity: dict[str, Any]) -> TaskSpec:
    """Write ``adapters.safetensors`` and ``task.json`` beside an exported ``head.onnx``; return the spec.

    A stacked task's lower adapter rows go to the deployment's ``shared/`` (once per lower adapter).
    """
    from adapterdeploy.exporter.stack_pieces import split_lower_rows, write_shared_lower

    own, lower = split_lower_rows(task.rows)
    # Zero rows the runtime fills itself are not written: a plain task's fusion rows, a fusion task's unused slots.
    n = task.ckpt.fusion.n if task.ckpt.fusion is not None else 0
    own = {k: v for k, v in own.items() if not is_fusion_key(k) or (n and fusion_slot(k) < n)}
    stack_on = None
    if task.ckpt.stack_on is not None:
        stack_on = write_shared_lower(task_dir.parent.parent, task.ckpt.stack_on.name, lower)
    weights = {k: v.detach().float().contiguous().numpy() for k, v in {**own, **task.head}.items()}
    ckpt = task.ckpt
    spec = TaskSpec(
        name=task.name,
        featurizer_fingerprint=fingerprint,
        head=ckpt.head,
        bottleneck=ckpt.bank_bottleneck(),
        layers=task.layers,
        text_pair=ckpt.text_pair,
        files={},
        parity=parity,
        metrics=dict(ckpt.metrics),
        adapter={
            "config": ckpt.adapter.to_dict(),
            "dropped_layers": list(task.dropped),
            "source": ckpt.source,
            "checkpoint": str(ckpt.path) if ckpt.path else None,
            "max_length": ckpt.max_length,
            **({"stack_on": stack_on} if stack_on is not None else {}),
            **(
                {"fusion": {"name": ckpt.fusion.name, "adapters": list(ckpt.fusion.adapter_names)}}
                if ckpt.fusion is not None
                else {}
            ),
        },
    )
    return write_task_files(task_dir, spec, weights)


def write_task_files(task_dir: Path, spec: TaskSpec, weights: Mapping[str, np.ndarray]) -> TaskSpec:
    """The one writer of a task piece's weights and ``task.json`` (the exporter and synthetic tasks use it).

    Saves ``weights`` (bank rows + head, float32) as ``adapters.safetensors``, then records the size and
    sha256 of it and of ``head.onnx`` (when present in ``task_dir``) in the spec's files and writes it.
    """
    save_file(
        {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()},
        str(task_dir / TASK_WEIGHTS_FILE),
        metadata={
            "format": TASK_PIECE_FORMAT,
            "task": spec.name,
            "featurizer_fingerprint": spec.featurizer_fingerprint,
        },
    )
    names = [f for f in (TASK_WEIGHTS_FILE, TASK_HEAD_FILE) if (task_dir / f).is_file()]
    spec = dataclasses.replace(spec, files={f: file_entry(task_dir / f) for f in names})
    spec.write(task_dir)
    return spec


def bank_of(deploy_dir: str | Path, names: Sequence[str]) -> list[np.ndarray]:
    """The stacked fp32 bank of some tasks of a deployment, in the adapted graph's input order: for tests and
    debugging. The runtime builds it (:meth:`Deployment.bank_feeds`), so the padding rules exist once."""
    from adapterdeploy.runtime.deployment import Deployment

    with Deployment.open(deploy_dir) as dep:
        feeds = dep.bank_feeds(names)
        return [np.asarray(feeds[key], dtype=np.float32) for key in dep.manifest.featurizer.bank_inputs]
