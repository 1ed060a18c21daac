"""Import a Stack (``Stack("lang", "task")``) trained with the AdapterHub ``adapters`` library.

Reads the two directories ``save_adapter`` wrote (the lower adapter, e.g. a language adapter, and the
task adapter, with its head or a separate ``save_head`` directory) and returns one task checkpoint whose
``stack_on`` is the lower adapter. Each adapter is read exactly as :mod:`adapterdeploy.models.adapterhub`
reads a single one (scaling folded, options kept); the stack semantics are
:func:`adapterdeploy.models.adapters.site_with_lower`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torch import Tensor

from adapterdeploy.errors import ConfigError, UnsupportedAdapterError
from adapterdeploy.models.adapterhub import (
    AdapterHubImportWarning,
    _adapter,
    _head,
    library_logits,
    parity_with_library,
)
from adapterdeploy.models.base import BaseModel
from adapterdeploy.models.checkpoint import TaskCheckpoint, load_checkpoint
from adapterdeploy.models.stack import LOWER_PREFIX, LowerAdapter, check_stackable

__all__ = ["import_adapterhub_stack", "load_lower", "stack_reference_logits", "verify_stack_import"]


def import_adapterhub_stack(
    base: BaseModel,
    lower_dir: str | Path,
    task_dir: str | Path,
    head_dir: str | Path | None = None,
    task_name: str | None = None,
    *,
    max_length: int = 128,
    text_pair: bool = False,
) -> TaskCheckpoint:
    """``Stack(lower, task)`` from two ``save_adapter`` directories -> a stacked task checkpoint on ``base``.

    The head comes from ``head_dir`` if given, else from ``task_dir`` (``with_head=True``).
    """
    lower_dir, task_dir = Path(lower_dir), Path(task_dir)
    low_cfg, low_weights, low_info = _adapter(base, lower_dir)
    cfg, weights, info = _adapter(base, task_dir)
    check_stackable(low_cfg, cfg, f"--stack {lower_dir} {task_dir}")
    head_cfg, head_weights, head_info = _head(base, Path(head_dir) if head_dir is not None else task_dir)
    lower = {LOWER_PREFIX + k.removeprefix("adapters."): v for k, v in low_weights.items()}
    low_source = {k: v for k, v in low_info.items() if k != "warning"}
    ckpt = TaskCheckpoint(
        name=task_name or info["adapter_name"],
        base=base.spec,
        adapter=cfg,
        head=head_cfg,
        max_length=max_length,
        text_pair=text_pair,
        weights={**weights, **lower, **head_weights},
        training={"imported_from": {**info, **head_info, "stack": [low_info["adapter_name"], info["adapter_name"]]}},
        source="adapterhub",
        stack_on=LowerAdapter(name=low_info["adapter_name"], config=low_cfg, source={"adapterhub": low_source}),
    )
    ckpt.build_model(base)  # strict names and shapes, or ArtifactError
    for w in {low_info["warning"], info["warning"]} - {None}:
        warnings.warn(w, AdapterHubImportWarning, stacklevel=2)
    return ckpt


def stack_reference_logits(
    base_dir: str | Path,
    lower_dir: str | Path,
    task_dir: str | Path,
    head_dir: str | Path | None,
    batches: list[dict[str, Tensor]],
) -> list[Tensor]:
    """Logits of ``Stack(lower, task)`` run by the adapters library itself (its own loaders), per batch."""

    def load(model: Any) -> tuple[Any, str]:
        from adapters.composition import Stack

        low = model.load_adapter(str(lower_dir), with_head=False, use_safetensors=True)
        name = model.load_adapter(str(task_dir), with_head=head_dir is None, use_safetensors=True)
        if head_dir is not None:
            model.load_head(str(head_dir), load_as=name, use_safetensors=True)
        return Stack(low, name), name

    return library_logits(base_dir, load, batches)


def verify_stack_import(
    ckpt: TaskCheckpoint,
    base: BaseModel,
    lower_dir: str | Path,
    task_dir: str | Path,
    head_dir: str | Path | None,
    tol: float = 1e-4,
) -> float:
    """Max abs logit difference between the imported stack and the adapters library; ParityError above ``tol``."""
    return parity_with_library(
        ckpt,
        base,
        lambda batches: stack_reference_logits(base.path, lower_dir, task_dir, head_dir, batches),
        tol,
        "the imported stack's",
        "both adapter_config.json files",
    )


def load_lower(base: BaseModel, path: str | Path) -> tuple[LowerAdapter, dict[str, Tensor]]:
    """The adapter in ``path`` as a frozen lower adapter: weights keyed ``lower.{layer}.{site}.*``.

    ``path`` is a directory written by the adapters library's ``save_adapter`` (``adapter_config.json``), or
    a task checkpoint of ours (``task.json``: its own adapter becomes the lower one; its head is not used).
    """
    p = Path(path)
    if (p / "adapter_config.json").is_file():
        cfg, weights, info = _adapter(base, p)
        source = {"adapterhub": {k: v for k, v in info.items() if k != "warning"}}
        name = str(info["adapter_name"])
    elif (p / "task.json").is_file():
        ckpt = load_checkpoint(p)
        ckpt.check_base(base)
        if ckpt.adapter.per_task_layernorm or ckpt.stack_on is not None or ckpt.fusion is not None:
            raise UnsupportedAdapterError(
                f"{p}: a task with its own LayerNorms, itself stacked or an AdapterFusion cannot be the lower "
                "adapter of a stack"
            )
        cfg, name, source = ckpt.adapter, ckpt.name, {"checkpoint": str(p)}
        weights = {k: v for k, v in ckpt.weights.items() if k.startswith("adapters.")}
    else:
        raise ConfigError(
            f"--stack-on {p}: expected a directory written by save_adapter (adapter_config.json) or "
            "a task checkpoint (task.json)"
        )
    lower = {LOWER_PREFIX + k.removeprefix("adapters."): v for k, v in weights.items()}
    return LowerAdapter(name=name, config=cfg, source=source), lower
