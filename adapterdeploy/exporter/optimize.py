"""onnxruntime's transformer optimizer on our graphs, fused-op counts, and interleaved timings.

Why these steps (measured on MiniLM, see DESIGN.md and the exporter report):
- session options alone never create Attention / SkipLayerNormalization; the Python fusions of
  ``onnxruntime.transformers.optimizer`` (model_type ``bert``) do.
- the TorchScript exporter writes some constants (e.g. the unit scale of an affine-free LayerNorm) as
  ``Constant`` nodes; the Attention fusion accepts only initializers beside the residual input, so
  constants are turned into initializers first (else per-task LayerNorms lose every Attention fusion).
- the optimizer prunes graph inputs the graph does not read (the trunk's ``attention_mask`` at K = 0);
  they are put back so every variant has the contract's I/O names.
"""

from __future__ import annotations

import collections
import logging
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import onnx
from onnx import numpy_helper

__all__ = [
    "FUSED_OPS",
    "constants_to_initializers",
    "interleaved_medians",
    "interleaved_samples",
    "op_counts",
    "optimize_graph",
]

FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "LayerNormalization",
    "EmbedLayerNormalization",
)


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Move tensor-valued ``Constant`` nodes of the main graph into initializers; return how many."""
    keep, moved = [], 0
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and set(attrs) == {"value"}:
            model.graph.initializer.append(
                numpy_helper.from_array(numpy_helper.to_array(attrs["value"].t), node.output[0])
            )
            moved += 1
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return moved


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Fused-op counts (every name of FUSED_OPS, zeros included), MatMul count and total node count."""
    types = collections.Counter(n.op_type for n in model.graph.node)
    counts = {op: int(types.get(op, 0)) for op in FUSED_OPS}
    counts["MatMul"] = int(types.get("MatMul", 0))
    counts["nodes"] = len(model.graph.node)
    return counts


def optimize_graph(src: str | Path, dst: str | Path, *, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Apply the BERT fusions to ``src``, write ``dst`` (same I/O names), return its op counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    original = onnx.load(str(src))
    prepared = onnx.ModelProto()
    prepared.CopyFrom(original)
    constants_to_initializers(prepared)
    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        optimized = optimize_model(
            prepared, model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0, use_gpu=False
        )
    finally:
        quiet.setLevel(level)
    optimized.save_model_to_file(str(dst))  # also declares the com.microsoft opset of the fused ops
    model = onnx.load(str(dst))
    _restore_io(model, original)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return op_counts(model)


def _restore_io(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Put back (unused) inputs the optimizer pruned, in the original order."""
    present = {i.name: i for i in model.graph.input}
    ordered = [present.get(i.name, i) for i in original.graph.input]
    del model.graph.input[:]
    model.graph.input.extend(ordered)


def interleaved_medians(
    candidates: dict[str, Callable[[], object]],
    *,
    repeats: int = 9,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median time in ms of each callable by ``clock``, run round-robin so load drifts hit every candidate alike.

    With ``time.thread_time`` and single-threaded sessions this is the CPU time of one call, which other
    processes on a shared machine barely disturb (wall time on 2 busy cores varied by 2x between runs).
    """
    samples = interleaved_samples(candidates, repeats=repeats, warmup=warmup, clock=clock)
    return {k: round(statistics.median(v), 3) for k, v in samples.items()}


def interleaved_samples(
    candidates: dict[str, Callable[[], object]],
    *,
    repeats: int = 9,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
    shuffle: bool = False,
) -> dict[str, list[float]]:
    """Every timed call of :func:`interleaved_medians` in ms (for spreads as well as medians); ``shuffle``
    runs the candidates of each round in a fresh random order instead of always the same one."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(repeats):
        for name in random.sample(list(candidates), len(candidates)) if shuffle else list(candidates):
            fn = candidates[name]
            t0 = clock()
            fn()
            samples[name].append((clock() - t0) * 1e3)
    return samples
