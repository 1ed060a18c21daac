"""``--standalone``: one self-contained ONNX graph per task (adapters and head baked in as constants).

For devices and browsers where one file per model is the unit: inputs ``input_ids``, ``attention_mask``,
``token_type_ids`` -> ``logits``, nothing else. These graphs keep standard ONNX ops only (no
onnxruntime ``com.microsoft`` fusions), so any ONNX runtime that implements opset 17 can run them;
onnxruntime applies its own graph optimizations at session creation. int8 (when asked) is onnxruntime's
dynamic quantization of the fp32 graph (standard MatMulInteger / DynamicQuantizeLinear ops).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adapterdeploy.exporter.featurizer import Adapted, StandaloneModel, Trunk
from adapterdeploy.exporter.onnx_graphs import export_standalone
from adapterdeploy.exporter.parity import ParityBatch, compare_standalone, raise_on_failures
from adapterdeploy.exporter.quantize import quantize_int8
from adapterdeploy.exporter.task_pieces import PreparedTask

__all__ = ["export_standalone_graphs"]


def export_standalone_graphs(
    root: Path,
    trunk: Trunk,
    adapted: Adapted,
    tasks: Sequence[PreparedTask],
    *,
    opset: int,
    vocab_size: int,
    precisions: Sequence[str],
    tolerance: float,
    batches: Sequence[ParityBatch],
    refs: Sequence[Sequence[Any]],
    ref_index: Sequence[int] | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, Any]]]:
    """Write ``standalone/<task>.onnx`` (+ ``.int8.onnx``); return {task: {precision: path}} and parity.

    ``refs[batch][ref_index[i]]`` is the PyTorch reference of ``tasks[i]``. fp32 refuses beyond the tolerance.
    """
    out_dir = root / "standalone"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, dict[str, str]] = {}
    parity: dict[str, dict[str, Any]] = {}
    for i, task in enumerate(tasks):
        t = ref_index[i] if ref_index is not None else i
        log(f"standalone graph of task {task.name}")
        classification = task.ckpt.head.problem_type != "regression"
        fp32 = out_dir / f"{task.name}.onnx"
        export_standalone(StandaloneModel(trunk, adapted, task.rows, task.model.head), fp32, opset=opset,
                          vocab_size=vocab_size)
        result = compare_standalone(fp32, task.name, t, classification, batches, refs)
        raise_on_failures(result, tolerance, f"standalone graph of task {task.name!r}")
        paths[task.name] = {"fp32": f"standalone/{fp32.name}"}
        parity[task.name] = {"fp32": {**result.summary(task.name), "tolerance": tolerance}}
        if "int8" in precisions:
            int8 = out_dir / f"{task.name}.int8.onnx"
            quantize_int8(fp32, int8)
            result8 = compare_standalone(int8, task.name, t, classification, batches, refs)
            paths[task.name]["int8"] = f"standalone/{int8.name}"
            parity[task.name]["int8"] = result8.summary(task.name)
    return paths, parity
