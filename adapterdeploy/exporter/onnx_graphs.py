"""torch -> ONNX with the TorchScript exporter: named dynamic axes, declared inputs kept, graphs checked.

Why TorchScript (``dynamo=False``) and opset 17: with HF's eager attention it emits the MatMul / Softmax /
LayerNormalization patterns that onnxruntime's transformer optimizer fuses (DESIGN.md, measured). The
exporter drops inputs the traced code does not read (the trunk's ``attention_mask`` when K = 0); the
graph I/O names are a contract with the runtime, so missing declared inputs are put back (unused).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper
from torch import Tensor, nn

from adapterdeploy.config import CLS_ONLY_INPUT, TOKENS_OUTPUT
from adapterdeploy.errors import ExportError
from adapterdeploy.exporter.featurizer import Adapted, HeadGraph, StandaloneModel, Trunk, bank_dynamic_axes

__all__ = [
    "TEXT_INPUTS",
    "export_adapted",
    "export_head",
    "export_module",
    "export_standalone",
    "export_trunk",
    "graph_io",
    "literal_zero_reshapes",
]

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_TEXT_AXES = {0: "batch", 1: "sequence"}
_DTYPES = {
    torch.float32: TensorProto.FLOAT,
    torch.int64: TensorProto.INT64,
    torch.float16: TensorProto.FLOAT16,
    torch.bool: TensorProto.BOOL,
}


def export_module(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: str | Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
    defaults: dict[str, bool] | None = None,
) -> onnx.ModelProto:
    """Export, restore dropped declared inputs, check I/O names and named axes, save; return the model.

    ``defaults``: bool inputs made optional, each with an initializer of the same name holding its default
    (an ONNX "overridable initializer": onnxruntime uses it when the input is not fed and does not list the
    input in ``get_inputs()``), so every caller that does not know the input runs as before."""
    path = Path(path)
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings from HF code paths that are constant for us
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(path))
    _restore_inputs(model, args, input_names, dynamic_axes)
    for name, value in (defaults or {}).items():
        model.graph.initializer.append(helper.make_tensor(name, TensorProto.BOOL, [], [value]))
    if defaults:
        literal_zero_reshapes(model, tuple(defaults))
    _check_io(model, input_names, output_names, dynamic_axes, path)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return model


def literal_zero_reshapes(model: onnx.ModelProto, inputs: Sequence[str]) -> int:
    """Give ``allowzero=1`` to the Reshapes whose target shape depends on ``inputs``; return how many.

    torch's ``view`` sizes are literal, but ONNX Reshape reads a 0 in the shape as "copy this input
    dimension" unless ``allowzero`` is set, and the TorchScript exporter leaves it unset. The sizes that a
    bool input such as ``cls_only`` switches can be 0 (:func:`~adapterdeploy.exporter.featurizer.query_attention`
    runs the form it does not choose on empty slices), so those Reshapes need the literal reading; the others
    keep the exporter's form, which onnxruntime's fusions were measured with.
    """
    tainted = set(inputs)
    changed = 0
    for node in model.graph.node:  # topological order (the exporter's, checked by onnx.checker)
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in tainted:
            attrs = [a for a in node.attribute if a.name != "allowzero"]
            del node.attribute[:]
            node.attribute.extend([*attrs, helper.make_attribute("allowzero", 1)])
            changed += 1
        if tainted.intersection(node.input):
            tainted.update(node.output)
    return changed


def _restore_inputs(
    model: onnx.ModelProto, args: Sequence[Tensor], names: Sequence[str], axes: dict[str, dict[int, str]]
) -> None:
    present = {i.name: i for i in model.graph.input}
    ordered = []
    for name, arg in zip(names, args, strict=True):
        if name in present:
            ordered.append(present[name])
            continue
        dims = [axes.get(name, {}).get(d, int(n)) for d, n in enumerate(arg.shape)]
        ordered.append(helper.make_tensor_value_info(name, _DTYPES[arg.dtype], dims))
    del model.graph.input[:]
    model.graph.input.extend(ordered)


def _check_io(
    model: onnx.ModelProto, inputs: Sequence[str], outputs: Sequence[str], axes: dict[str, dict[int, str]], path: Path
) -> None:
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != list(inputs) or got_out != list(outputs):
        raise ExportError(f"{path.name}: graph I/O {got_in} -> {got_out}, expected {list(inputs)} -> {list(outputs)}")
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        for axis, name in axes.get(vi.name, {}).items():
            if axis >= len(dims) or dims[axis].dim_param != name:
                raise ExportError(f"{path.name}: axis {axis} of {vi.name!r} is not the dynamic axis {name!r}")


def graph_io(path: str | Path) -> tuple[list[str], list[str]]:
    model = onnx.load(str(path), load_external_data=False)
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output]


def _text_sample(vocab_size: int) -> tuple[Tensor, Tensor, Tensor]:
    ids = torch.randint(5, max(6, vocab_size), (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    return ids, mask, torch.zeros(2, 7, dtype=torch.long)


def export_trunk(trunk: Trunk, path: str | Path, *, opset: int, vocab_size: int) -> onnx.ModelProto:
    """``trunk.onnx``: input_ids, attention_mask, token_type_ids [batch, sequence] -> hidden."""
    axes = {name: dict(_TEXT_AXES) for name in TEXT_INPUTS}
    axes["hidden"] = dict(_TEXT_AXES)
    return export_module(
        trunk,
        _text_sample(vocab_size),
        path,
        input_names=TEXT_INPUTS,
        output_names=("hidden",),
        dynamic_axes=axes,
        opset=opset,
    )


def export_adapted(
    adapted: Adapted, path: str | Path, *, opset: int, hidden_size: int, bank: Sequence[Tensor]
) -> onnx.ModelProto:
    """``adapted.onnx``: hidden, attention_mask, row_source, task_index, bank inputs -> cls, mean (, pooled), tokens."""
    hidden = torch.randn(2, 7, hidden_size)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    row_source = torch.tensor([0, 1, 1])
    task_index = torch.tensor([0, min(1, bank[0].shape[0] - 1) if bank else 0, 0])
    names = ("hidden", "attention_mask", "row_source", "task_index", *adapted.keys)
    axes: dict[str, dict[int, str]] = {
        "hidden": {0: "unique", 1: "sequence"},
        "attention_mask": {0: "unique", 1: "sequence"},
        "row_source": {0: "rows"},
        "task_index": {0: "rows"},
    }
    axes.update({k: bank_dynamic_axes(k) for k in adapted.keys})
    axes.update({o: {0: "rows"} for o in adapted.output_names})
    axes[TOKENS_OUTPUT] = {0: "rows", 1: "sequence"}
    flag = (torch.tensor(False),) if adapted.cls_only else ()
    return export_module(
        adapted,
        (hidden, mask, row_source, task_index, *bank, *flag),
        path,
        input_names=(*names, CLS_ONLY_INPUT) if flag else names,
        output_names=adapted.output_names,
        dynamic_axes=axes,
        opset=opset,
        defaults={CLS_ONLY_INPUT: False} if flag else None,
    )


def export_head(head: HeadGraph, path: str | Path, *, opset: int, hidden_size: int) -> onnx.ModelProto:
    """``head.onnx``: features [rows, H] -> logits [rows, out]."""
    axes = {"features": {0: "rows"}, "logits": {0: "rows"}}
    return export_module(
        head,
        (torch.randn(3, hidden_size),),
        path,
        input_names=("features",),
        output_names=("logits",),
        dynamic_axes=axes,
        opset=opset,
    )


def export_standalone(model: StandaloneModel, path: str | Path, *, opset: int, vocab_size: int) -> onnx.ModelProto:
    """``standalone/<task>.onnx``: input_ids, attention_mask, token_type_ids -> logits, no other input
    (logits ``[batch, labels]``; a tagging task's ``[batch, sequence, labels]``)."""
    axes = {name: dict(_TEXT_AXES) for name in TEXT_INPUTS}
    axes["logits"] = dict(_TEXT_AXES) if model.head.head.config.token_level else {0: "batch"}
    return export_module(
        model,
        _text_sample(vocab_size),
        path,
        input_names=TEXT_INPUTS,
        output_names=("logits",),
        dynamic_axes=axes,
        opset=opset,
    )
