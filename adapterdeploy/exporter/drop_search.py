"""``--adapter-drop auto``: choose AdapterDrop K from each task's dev metric, and time what it buys.

For every K in 0..L-1 each task is scored (PyTorch, its ``--eval`` file) with the adapters of layers
[0, K) removed; the chosen K is the largest one whose loss stays within ``--max-drop`` for every task.
The loss is in points: for accuracy, percentage points below the score with all adapters
(0.850 -> 0.842 is 0.8); for regression, percent increase of the mean absolute error. Ks a task cannot
be deployed with at all (its own LayerNorms below K) are skipped.

The speed of the K = 0 and the chosen-K featurizers is measured the way a fan-out runs them: plain
TorchScript-exported graphs on one onnxruntime intra-op thread, CPU time per call (``time.thread_time``)
of trunk + adapted over 4 texts x every task, median of interleaved runs (``optimize.interleaved_medians``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adapterdeploy.config import AdapterSignature
from adapterdeploy.errors import ConfigError
from adapterdeploy.exporter.adapter_drop import _score, without_dropped
from adapterdeploy.models.base import BaseModel
from adapterdeploy.models.checkpoint import TaskCheckpoint

__all__ = ["choose_adapter_drop", "fanout_speed"]

FANOUT_TEXTS = 4


def _loss(metric: str, full: float, dropped: float) -> float:
    if metric in ("accuracy", "micro_f1"):  # higher is better: points below K = 0
        return (full - dropped) * 100.0
    return (dropped - full) / max(abs(full), 1e-12) * 100.0


def _allowed_ks(ckpts: Sequence[TaskCheckpoint], num_layers: int) -> list[int]:
    limit = num_layers - 1
    for c in ckpts:
        if c.adapter.per_task_layernorm:
            limit = min(limit, min(c.adapter.adapter_layers(num_layers)))
    return list(range(limit + 1))


def choose_adapter_drop(
    base: BaseModel,
    ckpts: Sequence[TaskCheckpoint],
    plan: Mapping[str, Path],
    max_length: int,
    max_drop: float,
    log: Callable[[str], None] = lambda _m: None,
) -> tuple[int, dict[str, Any]]:
    """Score every task at every K; return the chosen K and the table for the manifest."""
    from adapterdeploy.datasets import read_dataset

    if not max_drop >= 0:
        raise ConfigError(f"--max-drop must be >= 0 (points of the dev metric), got {max_drop}")
    missing = sorted(c.name for c in ckpts if c.name not in plan)
    if missing:
        raise ConfigError(
            f"--adapter-drop auto needs a dev file for every task; none for {missing}: pass --eval NAME=FILE for each"
        )
    tok = base.load_tokenizer()
    ks = _allowed_ks(ckpts, base.num_layers)
    tasks: dict[str, Any] = {}
    for c in ckpts:
        data = read_dataset(plan[c.name], labels=c.head.labels or None, problem_type=c.head.problem_type)
        if data.text_pair != c.text_pair:
            raise ConfigError(
                f"--eval {plan[c.name]} has {'text pairs' if data.text_pair else 'single texts'} but "
                f"task {c.name!r} takes {'pairs' if c.text_pair else 'single texts'}"
            )
        regression = c.head.problem_type == "regression"
        metric = "mean_abs_error" if regression else "micro_f1" if c.head.multi_label else "accuracy"
        scores: dict[str, float] = {}
        for k in ks:
            log(f"AdapterDrop auto: scoring {c.name} at K={k} on {len(data)} rows")
            model = without_dropped(c, k).build_model(base)
            scores[str(k)] = round(_score(model, tok, data.examples, max_length, regression), 6)
        full = scores["0"]
        tasks[c.name] = {
            "file": str(plan[c.name]),
            "rows": len(data),
            "metric": metric,
            "scores": scores,
            "loss_points": {k: round(_loss(metric, full, s), 4) for k, s in scores.items()},
        }
    within = [k for k in ks if all(t["loss_points"][str(k)] <= max_drop + 1e-9 for t in tasks.values())]
    chosen = max(within)  # K = 0 always qualifies (loss 0)
    table = {
        "mode": "auto",
        "max_drop": max_drop,
        "chosen": chosen,
        "candidates": ks,
        "loss_unit": "accuracy: percentage points below K=0; regression: percent increase of the mean abs error",
        "rule": "largest K whose loss is within max_drop for every task",
        "tasks": tasks,
    }
    return chosen, table


def fanout_speed(
    base: BaseModel,
    ckpts: Sequence[TaskCheckpoint],
    signature: AdapterSignature,
    ks: Sequence[int],
    max_length: int,
    opset: int = 17,
) -> dict[str, Any]:
    """CPU ms per fan-out call (4 texts x every task) of trunk + adapted for each K, interleaved."""
    from adapterdeploy.exporter.featurizer import Adapted, Trunk, copy_encoder, stack_bank
    from adapterdeploy.exporter.onnx_graphs import export_adapted, export_trunk
    from adapterdeploy.exporter.optimize import interleaved_medians
    from adapterdeploy.exporter.parity import GraphRunner, ParityBatch, encode_items
    from adapterdeploy.exporter.task_pieces import prepare_task

    words = "the company said its shares were up two percent after the new film was a great story".split()
    items = [" ".join(words * 3), "the movie was good", " ".join(words[:9]), "a very bad film"]
    items = [(a, "the story was terrible") for a in items] if ckpts[0].text_pair else items
    ids, mask, tt = encode_items(base.load_tokenizer(), items, min(32, max_length))
    T, U = len(ckpts), len(items)
    batch = ParityBatch(
        "fan_out", ids, mask, tt, np.repeat(np.arange(U), T).astype(np.int64), np.tile(np.arange(T), U).astype(np.int64)
    )
    runners = {}
    with tempfile.TemporaryDirectory(prefix="adapterdeploy-drop-") as tmp:
        for k in dict.fromkeys(ks):
            hf = copy_encoder(base)
            trunk, adapted = Trunk(base, k, hf), Adapted(base, k, signature, hf)
            tasks = [prepare_task(base, c, signature, k, adapted.adapted_layers) for c in ckpts]
            bank = stack_bank([t.rows for t in tasks], adapted.keys)
            t_path, a_path = Path(tmp) / f"trunk{k}.onnx", Path(tmp) / f"adapted{k}.onnx"
            export_trunk(trunk, t_path, opset=opset, vocab_size=int(base.model.config.vocab_size))
            export_adapted(adapted, a_path, opset=opset, hidden_size=base.hidden_size, bank=bank)
            runners[k] = (GraphRunner(t_path, a_path, {}, threads=1), [b.numpy() for b in bank])
        fns = {str(k): (lambda r=r, b=b: r.features(batch, b)) for k, (r, b) in runners.items()}
        ms = interleaved_medians(fns, clock=time.thread_time)
    return {
        "unit": "ms of CPU time per call of trunk + adapted (plain graphs, 1 intra-op thread, time.thread_time), "
        "median of interleaved runs",
        "batch": f"fan-out: {U} texts x {T} tasks = {U * T} rows, {ids.shape[1]} tokens",
        "ms": {k: round(v, 3) for k, v in ms.items()},
    }
