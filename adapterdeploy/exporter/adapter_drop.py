"""AdapterDrop K: which tasks may be deployed with layers [0, K) adapter-free, and what it costs in accuracy.

Rules (checked before anything is exported):
- 0 <= K < L (at least one adapted layer; K = L would leave no adapter at all);
- a task with adapters in layers < K is refused unless ``allow_drop`` (then those adapters are left out of
  every graph, and of the PyTorch reference the parity check uses: parity measures the export, the
  ``--eval`` figures measure the drop);
- per-task LayerNorms replace the base's own LayerNorms, so they cannot be dropped: K must not exceed
  the first layer that has them (the trunk is shared and holds the base's LayerNorms only).

Semantics of ``--eval``: accuracy (classification), micro F1 at the task's thresholds (multi-label) or mean
abs error (regression) of each task's PyTorch
model on the file's rows, with all its adapters and with those of layers < K removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adapterdeploy.errors import ConfigError
from adapterdeploy.models.base import BaseModel
from adapterdeploy.models.checkpoint import TaskCheckpoint
from adapterdeploy.models.encoder import EncoderWithAdapters
from adapterdeploy.models.fusion import FUSED_PREFIX, FUSION_PREFIX

__all__ = ["check_drop", "dropped_layers", "evaluate_drop", "without_dropped"]


def dropped_layers(ckpt: TaskCheckpoint, adapter_drop: int) -> tuple[int, ...]:
    """The task's adapter layers (its own, and its stack's lower adapter's) that fall below K."""
    layers = set(ckpt.adapter.adapter_layers(ckpt.num_layers))
    if ckpt.stack_on is not None:
        layers |= set(ckpt.stack_on.config.adapter_layers(ckpt.num_layers))
    return tuple(sorted(i for i in layers if i < adapter_drop))


def check_drop(ckpts: Sequence[TaskCheckpoint], adapter_drop: int, num_layers: int, allow_drop: bool) -> None:
    """Refuse K out of range, unallowed drops and dropped per-task LayerNorms (ConfigError naming the fix)."""
    if not 0 <= adapter_drop < num_layers:
        raise ConfigError(
            f"--adapter-drop {adapter_drop} is out of range: the base has {num_layers} layers, so K must be "
            f"0..{num_layers - 1} (layers [K, {num_layers}) keep their adapters)"
        )
    for ckpt in ckpts:
        dropped = dropped_layers(ckpt, adapter_drop)
        if not dropped:
            continue
        if ckpt.adapter.per_task_layernorm:
            first = min(ckpt.adapter.adapter_layers(num_layers))
            raise ConfigError(
                f"task {ckpt.name!r} has its own LayerNorms from layer {first}; they cannot be dropped (the shared "
                f"trunk holds the base's LayerNorms), so --adapter-drop must be <= {first}, got {adapter_drop}"
            )
        if not allow_drop:
            raise ConfigError(
                f"task {ckpt.name!r} was trained with adapters in layers {list(dropped)}, below --adapter-drop "
                f"{adapter_drop}; pass --allow-drop to deploy it without them (measure the cost with --eval FILE) "
                f"or use --adapter-drop {min(ckpt.adapter.adapter_layers(num_layers))}"
            )


def without_dropped(ckpt: TaskCheckpoint, adapter_drop: int) -> TaskCheckpoint:
    """The same task with the adapters of layers < K removed (what the deployment computes)."""
    dropped = set(dropped_layers(ckpt, adapter_drop))
    if not dropped:
        return ckpt
    kept = tuple(i for i in ckpt.adapter.adapter_layers(ckpt.num_layers) if i not in dropped)
    weights = {
        k: v
        for k, v in ckpt.weights.items()
        if not (
            k.startswith(("adapters.", "layernorms.", "lower.", "lora.", FUSION_PREFIX))
            and int(k.split(".")[1]) in dropped
        )
        and not (k.startswith(FUSED_PREFIX) and int(k.split(".")[2]) in dropped)
    }
    fusion = ckpt.fusion
    if fusion is not None:
        fusion = dataclasses.replace(
            fusion, adapters=tuple(dataclasses.replace(c, layers=kept) for c in fusion.adapters)
        )
    stack_on = ckpt.stack_on
    if stack_on is not None:
        low = tuple(i for i in stack_on.config.adapter_layers(ckpt.num_layers) if i not in dropped)
        stack_on = dataclasses.replace(stack_on, config=dataclasses.replace(stack_on.config, layers=low))
    return dataclasses.replace(
        ckpt,
        adapter=dataclasses.replace(ckpt.adapter, layers=kept),
        weights=weights,
        stack_on=stack_on,
        fusion=fusion,
    )


def _logits(
    model: EncoderWithAdapters, tokenizer: Any, examples: Sequence[Any], max_length: int, batch_size: int
) -> Iterator[tuple[Sequence[Any], torch.Tensor]]:
    """(chunk of examples, the model's logits for it), ``batch_size`` examples at a time, without gradients."""
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            pairs = [ex.text_pair for ex in chunk] if chunk[0].text_pair is not None else None
            enc = tokenizer(
                [ex.text for ex in chunk],
                pairs,
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
                return_token_type_ids=True,
            )
            yield chunk, model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])


def _score(
    model: EncoderWithAdapters,
    tokenizer: Any,
    examples: Sequence[Any],
    max_length: int,
    regression: bool,
    batch_size: int = 32,
) -> float:
    head = model.head_config
    batches = _logits(model, tokenizer, examples, max_length, batch_size)
    if head.multi_label:  # micro F1 at the task's thresholds (adapterdeploy/multilabel.py)
        from adapterdeploy.multilabel import multilabel_metrics, predict_on, sigmoid

        gold, on = [], []
        for chunk, logits in batches:
            on.extend(predict_on(sigmoid(logits.numpy()), head.thresholds))
            gold.extend([c in (ex.label or ()) for c in range(head.num_labels)] for ex in chunk)
        return multilabel_metrics(np.array(gold), np.array(on))["micro_f1"]
    correct, abs_err = 0, 0.0
    for chunk, logits in batches:
        labels = torch.tensor([ex.label for ex in chunk])
        if regression:
            abs_err += float((logits[:, 0] - labels.float()).abs().sum())
        else:
            correct += int((logits.argmax(-1) == labels).sum())
    return (abs_err if regression else correct) / max(len(examples), 1)


def evaluate_drop(
    base: BaseModel,
    ckpt: TaskCheckpoint,
    path: str | Path,
    adapter_drop: int,
    max_length: int,
    max_rows: int | None = None,
) -> dict[str, Any]:
    """Score the task on ``path`` with all its adapters and without those below K (PyTorch)."""
    from adapterdeploy.datasets import read_dataset, subset

    data = read_dataset(path, labels=ckpt.head.labels or None, problem_type=ckpt.head.problem_type)
    data = subset(data, max_rows)
    if data.text_pair != ckpt.text_pair:
        raise ConfigError(
            f"--eval {path} has {'text pairs' if data.text_pair else 'single texts'} but task {ckpt.name!r} "
            f"takes {'pairs' if ckpt.text_pair else 'single texts'}; give each task its own file as NAME=FILE"
        )
    regression = ckpt.head.problem_type == "regression"
    tokenizer = base.load_tokenizer()
    full = _score(ckpt.build_model(base), tokenizer, data.examples, max_length, regression)
    dropped = _score(
        without_dropped(ckpt, adapter_drop).build_model(base), tokenizer, data.examples, max_length, regression
    )
    metric = "mean_abs_error" if regression else "micro_f1" if ckpt.head.multi_label else "accuracy"
    return {
        "file": str(Path(path)),
        "rows": len(data),
        "metric": metric,
        "all_adapters": round(full, 6),
        "without_dropped": round(dropped, 6),
        "dropped_layers": list(dropped_layers(ckpt, adapter_drop)),
        "retained": round(dropped / full, 6) if full and not regression else None,
    }
