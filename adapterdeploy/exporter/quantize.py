"""int8 dynamic quantization and fp16 conversion of the featurizer graphs.

int8: onnxruntime's ``quantize_dynamic`` (weights int8 per output channel, activations quantized per call).
It quantizes MatMuls whose weight is an initializer (``MatMulConstBOnly``), so the base's projections
become int8 and embedding Gathers become int8. The adapter MatMuls read their weights from bank *inputs*
(gathered per row by task), which it leaves fp32; :func:`quantize_bank_matmuls` then rewrites them: the
``down_w`` / ``up_w`` inputs become int8 (7-bit range) with per-column fp32 scales (``<name>_scale``,
quantized by the runtime at load, runtime/bank.py), and each ``MatMul(x, Gather(w))`` becomes
``DynamicQuantizeLinear(x)`` + ``MatMulInteger(x_q, Gather(w_q), x_zp)`` + ``Cast`` + ``x_scale * Gather(scale)``.
onnxruntime fuses those four nodes into one ``DynamicQuantizeMatMul`` per MatMul at session load (writing
that op directly measured the same). Measured on MiniLM (issue 15, docs/performance.md section 4): as fast
as the fp32 adapter MatMuls end to end (their cost is per-node dispatch, not arithmetic), bank rows 3.5x
smaller, and within the recorded int8 parity (no accuracy loss on SST-2 / MRPC / RTE).

Per-channel scales for the base, measured on MiniLM + the trained SST-2 adapter (256 dev rows, vs the
fp32 graphs): argmax agreement 97.7% vs 94.5% per-tensor, max logit diff 0.74 vs 1.51, same size and speed.
``reduce_range`` (7-bit weights, for CPUs without VNNI) gave no gain on this VNNI CPU, so it is off.

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

__all__ = [
    "FP16_BLOCKED_OPS",
    "INT8_BANK_ROLES",
    "batched_weight_matmuls",
    "convert_fp16",
    "graph_io_dtypes",
    "quantize_bank_matmuls",
    "quantize_int8",
]

# Kept in fp32 when converting (numerically sensitive reductions in unfused graphs).
FP16_BLOCKED_OPS = ("Softmax", "LayerNormalization", "ReduceSum", "ReduceMean", "Pow", "Sqrt", "Div")
_ELEM = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.BOOL: "bool",
}
# Bank inputs whose rows become int8 in the int8 variant: the adapter projections (x @ w, w [T, K, N]).
INT8_BANK_ROLES = ("down_w", "up_w")


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
            nodes_to_exclude=batched_weight_matmuls(onnx.load(str(src), load_external_data=False)),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)


def batched_weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls whose constant weight has more than 2 dimensions (one matrix per head: the folded CLS attention
    of ``featurizer.query_attention``). Per-channel dynamic quantization writes per-column zero points that
    onnxruntime's ``DynamicQuantizeMatMul`` refuses for a batched weight ("b zero point is not valid"), and
    these products cost one token's projection per query (H^2 multiply-adds), so they stay fp32."""
    shapes = {i.name: len(i.dims) for i in model.graph.initializer}
    for node in model.graph.node:  # a weight the exporter left as a Constant node
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            shapes[node.output[0]] = len(node.attribute[0].t.dims)
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and shapes.get(n.input[1], 2) > 2]


def quantize_bank_matmuls(src: str | Path, dst: str | Path) -> list[str]:
    """Rewrite the adapter MatMuls of an int8 adapted graph onto int8 bank rows; return the inputs rewritten.

    An input is rewritten only when every use is ``Gather(input, task_index, axis 0)`` feeding MatMuls as
    their weight (the banked adapter form); any other use (none today) leaves it fp32, which stays correct.
    An activation that already has a ``DynamicQuantizeLinear`` (from ``quantize_dynamic``) reuses it.
    """
    from onnx import TensorProto, helper

    from adapterdeploy.runtime.bank import SCALE_SUFFIX

    model = onnx.load(str(src))
    graph = model.graph
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    quantized_act = {n.input[0]: list(n.output) for n in graph.node if n.op_type == "DynamicQuantizeLinear"}
    replace: dict[int, list[onnx.NodeProto]] = {}
    extra_inputs, gathered = [], set()
    done: list[str] = []
    for vi in graph.input:
        name = vi.name
        if not name.startswith("bank.") or name.rsplit(".", 1)[-1] not in INT8_BANK_ROLES:
            continue
        gathers = users.get(name, [])
        if not gathers or not all(_banked_matmul_gather(g, users) for g in gathers):
            continue
        dims = vi.type.tensor_type.shape.dim
        vi.type.tensor_type.elem_type = TensorProto.INT8
        last = dims[-1].dim_param or dims[-1].dim_value
        extra_inputs.append(
            helper.make_tensor_value_info(name + SCALE_SUFFIX, TensorProto.FLOAT, [dims[0].dim_param, 1, last])
        )
        for g in gathers:
            gathered.add(g.output[0])
            scale = g.output[0] + SCALE_SUFFIX
            new = [
                helper.make_node(
                    "Gather", [name + SCALE_SUFFIX, g.input[1]], [scale], name=g.name + SCALE_SUFFIX, axis=0
                )
            ]
            for mm in users[g.output[0]]:
                x, p = mm.input[0], mm.name or mm.output[0]
                quant = []
                if x not in quantized_act:
                    quantized_act[x] = [f"{p}/x_q", f"{p}/x_scale", f"{p}/x_zp"]
                    quant = [helper.make_node("DynamicQuantizeLinear", [x], quantized_act[x], name=f"{p}/quant")]
                xq, xs, xz = quantized_act[x]
                replace[id(mm)] = [
                    *quant,
                    helper.make_node("MatMulInteger", [xq, g.output[0], xz], [f"{p}/i32"], name=f"{p}/int8"),
                    helper.make_node("Cast", [f"{p}/i32"], [f"{p}/f32"], name=f"{p}/cast", to=TensorProto.FLOAT),
                    helper.make_node("Mul", [xs, scale], [f"{p}/scale"], name=f"{p}/scale"),
                    helper.make_node("Mul", [f"{p}/f32", f"{p}/scale"], [mm.output[0]], name=f"{p}/rescale"),
                ]
            replace[id(g)] = [g, *new]
        done.append(name)
    if not done:
        onnx.save(model, str(dst))
        return done
    nodes = [n for node in graph.node for n in replace.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend(
        _topological(
            nodes, {i.name for i in graph.input} | {i.name for i in extra_inputs} | {t.name for t in graph.initializer}
        )
    )
    graph.input.extend(extra_inputs)
    keep = [v for v in graph.value_info if v.name not in gathered]  # their recorded type was fp32
    del graph.value_info[:]
    graph.value_info.extend(keep)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return done


def _banked_matmul_gather(node: onnx.NodeProto, users: dict[str, list[onnx.NodeProto]]) -> bool:
    """``Gather(bank, idx, axis=0)`` whose output is only ever a MatMul's weight (input B)."""
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    if node.op_type != "Gather" or axis != 0 or len(node.output) != 1:
        return False
    out = users.get(node.output[0], [])
    return bool(out) and all(u.op_type == "MatMul" and list(u.input).index(node.output[0]) == 1 for u in out)


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where every input is produced before it is read (ONNX requires it): a reused
    ``DynamicQuantizeLinear`` may sit after the MatMul it now feeds. Stable: an ordered graph is unchanged."""
    ready, order, pending = set(available) | {""}, [], list(nodes)
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                order.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or an unknown input near node {rest[0].name!r}")
        pending = rest
    return order


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
