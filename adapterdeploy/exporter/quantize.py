"""int8 dynamic quantization and fp16 conversion of the featurizer graphs.

int8: onnxruntime's ``quantize_dynamic`` (weights int8 per output channel, activations quantized per call).
It quantizes MatMuls whose weight is an initializer (``MatMulConstBOnly``), so the base's projections
become int8 while the adapter MatMuls, whose weights are bank *inputs*, stay fp32; embedding Gathers
become int8. Per-channel scales, measured on MiniLM + the trained SST-2 adapter (256 dev rows, vs the
fp32 graphs): argmax agreement 97.7% vs 94.5% per-tensor, max logit diff 0.74 vs 1.51, same size and
speed. ``reduce_range`` (7-bit weights, for CPUs without VNNI) gave no gain on this VNNI CPU, so it is off.

fp16: ``onnxruntime.transformers``' float16 converter. Initializers are clipped to the fp16 range
(HF's additive mask constant ``finfo(float32).min`` becomes -1e4, still a zero softmax weight);
``LayerNormalization`` / ``SkipLayerNormalization`` / ``Attention`` compute their statistics and softmax
in fp32 inside onnxruntime's kernels; ``Softmax`` and the plain ``LayerNormalization`` op stay fp32 in
unfused graphs (op_block_list). Graph inputs and outputs that carry activations (hidden, cls, mean,
pooled, features, logits) stay fp32 with Casts inside the graph; the bank inputs become fp16 (the
runtime casts each task's rows once, at load), and the variant's ``io_dtypes`` says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import onnx

__all__ = ["FP16_BLOCKED_OPS", "convert_fp16", "graph_io_dtypes", "quantize_int8"]

# Kept in fp32 when converting (numerically sensitive reductions in unfused graphs).
FP16_BLOCKED_OPS = ("Softmax", "LayerNormalization", "ReduceSum", "ReduceMean", "Pow", "Sqrt", "Div")
_ELEM = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.INT64: "int64"}


def quantize_int8(src: str | Path, dst: str | Path) -> None:
    """Dynamic int8 quantization of the graph's constant-weight MatMuls / Gathers / Attention."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" warning: shapes are not needed for dynamic int8
    try:
        # DefaultTensorType: ONNX shape inference cannot type the outputs of fused com.microsoft ops; they are fp32.
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=False,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)


def convert_fp16(src: str | Path, dst: str | Path, *, keep_fp32_io: Sequence[str]) -> None:
    """fp16 weights and compute; the named graph inputs / outputs stay fp32 (Casts inserted)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(
        use_symbolic_shape_infer=True,
        keep_io_types=list(keep_fp32_io),
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_BLOCKED_OPS],
    )
    onnx.save(model.model, str(dst))


def graph_io_dtypes(path: str | Path) -> dict[str, str]:
    """``{input or output name: numpy dtype name}`` of a graph, for the manifest's variant record."""
    model = onnx.load(str(path), load_external_data=False)
    return {
        vi.name: _ELEM.get(vi.type.tensor_type.elem_type, str(vi.type.tensor_type.elem_type))
        for vi in [*model.graph.input, *model.graph.output]
    }
