"""``--standalone``: one Hugging Face model folder per task, its graph self-contained (adapters and head baked in).

For devices and browsers where one model folder is the unit (layout: hf_folder.py): inputs ``input_ids``,
``attention_mask``, ``token_type_ids`` -> ``logits``, nothing else. These graphs keep standard ONNX ops only (no
onnxruntime ``com.microsoft`` fusions), so any ONNX runtime that implements opset 17 can run them;
onnxruntime applies its own graph optimizations at session creation. int8 (when asked) is onnxruntime's
dynamic quantization of the fp32 graph (standard MatMulInteger / DynamicQuantizeLinear ops).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adapterdeploy.exporter.featurizer import Adapted, StandaloneModel, Trunk
from adapterdeploy.exporter.hf_folder import (
    GRAPH_FILES,
    FolderSource,
    metadata_props,
    stamp_metadata,
    write_folder_files,
)
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
    source: FolderSource,
    opset: int,
    vocab_size: int,
    precisions: Sequence[str],
    tolerance: float,
    batches: Sequence[ParityBatch],
    refs: Sequence[Sequence[Any]],
    ref_index: Sequence[int] | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, Any]]]:
    """Write ``standalone/<task>/`` folders; return {task: {precision: graph path}} and their parity.

    ``refs[batch][ref_index[i]]`` is the PyTorch reference of ``tasks[i]``. fp32 refuses beyond the tolerance.
    """
    paths: dict[str, dict[str, str]] = {}
    parity: dict[str, dict[str, Any]] = {}
    for i, task in enumerate(tasks):
        t = ref_index[i] if ref_index is not None else i
        log(f"standalone folder of task {task.name}")
        head = task.ckpt.head
        folder = root / "standalone" / task.name
        write_folder_files(folder, source, labels=head.labels, problem_type=head.problem_type)
        classification = head.problem_type != "regression"
        fp32 = folder / GRAPH_FILES["fp32"]
        fp32.parent.mkdir(parents=True, exist_ok=True)
        export_standalone(
            StandaloneModel(trunk, adapted, task.rows, task.head_module), fp32, opset=opset, vocab_size=vocab_size
        )
        result = compare_standalone(fp32, task.name, t, classification, batches, refs)
        raise_on_failures(result, tolerance, f"standalone graph of task {task.name!r}")
        figures = {"fp32": {**result.summary(task.name), "tolerance": tolerance, "reference": "pytorch fp32"}}
        meta = {
            "task": task.name,
            "labels": head.labels,
            "problem_type": head.problem_type,
            "max_length": source.max_length,
            "fingerprint": source.fingerprint,
        }
        stamp_metadata(fp32, metadata_props(**meta, precision="fp32", parity=figures["fp32"]))
        paths[task.name] = {"fp32": f"standalone/{task.name}/{GRAPH_FILES['fp32']}"}
        if "int8" in precisions:
            int8 = folder / GRAPH_FILES["int8"]
            quantize_int8(fp32, int8)
            result8 = compare_standalone(int8, task.name, t, classification, batches, refs)
            figures["int8"] = {**result8.summary(task.name), "reference": "pytorch fp32"}
            stamp_metadata(int8, metadata_props(**meta, precision="int8", parity=figures["int8"]))
            paths[task.name]["int8"] = f"standalone/{task.name}/{GRAPH_FILES['int8']}"
        parity[task.name] = figures
    return paths, parity
