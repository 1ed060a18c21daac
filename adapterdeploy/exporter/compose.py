"""``export-standalone``: one task's standalone folder out of an existing deployment, without torch.

The self-contained graph is assembled with the ``onnx`` library from the graphs the deployment already
serves with, so it computes exactly what ``Deployment.predict`` computes (same nodes, same weights):

    input_ids, attention_mask, token_type_ids
        -> trunk (featurizer/trunk.onnx, as is)                         -> hidden [B, S, H]
        -> adapted (featurizer/adapted.onnx) with the task's bank rows  -> cls / mean / pooled [B, H]
           as initializers [1, ...] (the runtime's own BankLayout builds them from adapters.safetensors),
           row_source = Range(0, B), task_index = zeros(B)
        -> head (tasks/<name>/head.onnx) on the feature its pooling reads -> logits [B, out]

Re-exporting from PyTorch would need torch and the base model; the deployment's graphs need neither. If the
deployment's fp32 variant is the ORT-fused one, the graph keeps its ``com.microsoft`` ops (onnxruntime in
Python, Node and the browser runs them); ``export --standalone`` (PyTorch) always writes standard ops only.
Parity is measured twice and recorded: vs the PyTorch logits stored in task.json at export (``samples``), and
vs ``Deployment.predict`` probabilities on texts, pairs and an over-long text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adapterdeploy.artifacts import PARITY_SAMPLES, TASK_WEIGHTS_FILE, Manifest, TaskSpec, atomic_directory
from adapterdeploy.config import FEATURE_OF_POOLING
from adapterdeploy.errors import ArtifactError, ConfigError, ParityError, UnknownTaskError
from adapterdeploy.exporter.hf_folder import (
    GRAPH_FILES,
    FolderSource,
    metadata_props,
    stamp_metadata,
    write_folder_files,
)

__all__ = ["compose_standalone", "export_standalone_folder"]

_CHECK_ROWS: list[Any] = [
    "the movie was good",
    "a very bad film and a boring plot",
    " ".join(["it was fun and the story was good but the plot was too long"] * 60),  # over any max_length
]
_CHECK_PAIRS: list[Any] = [
    ("it is great", "the story was terrible"),
    ("the company said its shares were up " * 40, "shares of the company rose"),
]


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - the export extra has it
        raise ConfigError(
            "export-standalone needs the 'onnx' package (no torch): pip install onnx, or "
            "pip install 'adapterdeploy[export]'"
        ) from exc
    return onnx


def compose_standalone(root: Path, manifest: Manifest, spec: TaskSpec, task_dir: Path) -> Any:
    """The task's self-contained fp32 ``onnx.ModelProto`` built from the deployment's graphs."""
    onnx = _require_onnx()
    import onnxruntime as ort
    from onnx import TensorProto, compose, helper, numpy_helper
    from safetensors.numpy import load_file

    from adapterdeploy.runtime.bank import BankLayout
    from adapterdeploy.runtime.shared_lowers import SharedLowers

    fz = manifest.featurizer
    variant = fz.variants["fp32"]
    trunk = onnx.load(str(root / variant.trunk))
    adapted_path = root / variant.adapted
    adapted = compose.add_prefix(onnx.load(str(adapted_path)), "adapted/")
    head = compose.add_prefix(onnx.load(str(task_dir / "head.onnx")), "head/")
    # The runtime's own row builder: validation, zero rows for layers without adapters, [1, ...] shapes.
    session = ort.InferenceSession(str(adapted_path), providers=["CPUExecutionProvider"])
    layout = BankLayout.from_session_inputs(session.get_inputs(), fz.bank_inputs, fz.hidden_size, fz.signature)
    stack_on = spec.adapter.get("stack_on")  # a Stack's shared lower adapter, read as the runtime reads it
    lower = SharedLowers().get(root, stack_on, layout) if stack_on else None
    rows = layout.task_rows(
        spec.name, load_file(str(task_dir / TASK_WEIGHTS_FILE)), spec.bottleneck, lower=lower
    ).arrays
    del session

    graph = helper.make_graph([], f"{spec.name}-standalone", list(trunk.graph.input), [])
    graph.initializer.extend(trunk.graph.initializer)
    graph.node.extend(trunk.graph.node)
    if spec.head.token_level:
        raise ConfigError(
            f"task {spec.name!r} is a tagging (token classification) task; standalone folders are not written "
            "for tagging tasks yet: serve it from the deployment"
        )
    feature = FEATURE_OF_POOLING[spec.head.pooling]
    if feature not in fz.outputs:
        raise ArtifactError(
            f"task {spec.name!r} pools {spec.head.pooling!r} but the featurizer has no {feature!r} "
            "output; the deployment is inconsistent: re-export it"
        )
    trunk_out = trunk.graph.output[0].name
    glue = [
        helper.make_node("Identity", [trunk_out], ["adapted/hidden"]),
        helper.make_node("Identity", ["attention_mask"], ["adapted/attention_mask"]),
        helper.make_node("Shape", ["input_ids"], ["glue/shape"]),
        helper.make_node("Gather", ["glue/shape", "glue/zero"], ["glue/batch"], axis=0),
        helper.make_node("Range", ["glue/zero", "glue/batch", "glue/one"], ["adapted/row_source"]),
        helper.make_node("Unsqueeze", ["glue/batch", "glue/axes0"], ["glue/batch1"]),
        helper.make_node(
            "ConstantOfShape",
            ["glue/batch1"],
            ["adapted/task_index"],
            value=helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        ),
    ]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(0, dtype=np.int64), "glue/zero"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "glue/one"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "glue/axes0"),
        ]
    )
    graph.node.extend(glue)
    graph.initializer.extend(
        numpy_helper.from_array(np.ascontiguousarray(arr), f"adapted/{name}") for name, arr in rows.items()
    )
    graph.initializer.extend(adapted.graph.initializer)
    graph.node.extend(adapted.graph.node)
    graph.node.append(helper.make_node("Identity", [f"adapted/{feature}"], ["head/features"]))
    graph.initializer.extend(head.graph.initializer)
    graph.node.extend(head.graph.node)
    graph.node.append(helper.make_node("Identity", [head.graph.output[0].name], ["logits"]))
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", int(spec.head.num_labels)])
    graph.output.append(logits)
    opsets: dict[str, int] = {}
    for model in (trunk, adapted, head):
        for imp in model.opset_import:
            opsets[imp.domain] = max(opsets.get(imp.domain, 0), imp.version)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        ir_version=max(trunk.ir_version, adapted.ir_version, head.ir_version),
    )
    onnx.checker.check_model(model)
    return model


def _run_graph(path: Path, encoder: Any, items: Sequence[Any]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    out = []
    for item in items:  # one row at a time: no padding at all, the plainest use of the folder
        padded = encoder.pad(encoder.tokenize([item]))
        feeds = {k: getattr(padded, k) for k in ("input_ids", "attention_mask", "token_type_ids") if k in names}
        out.append(session.run(["logits"], feeds)[0][0])
    return np.array(out, dtype=np.float64)


def _probabilities(logits: np.ndarray, problem_type: str) -> np.ndarray:
    if problem_type == "regression":
        return logits
    if problem_type == "multi_label_classification":
        return 1.0 / (1.0 + np.exp(-logits))
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _measure(root: Path, spec: TaskSpec, graph: Path, folder: Path) -> dict[str, Any]:
    """The graph vs task.json's PyTorch samples (logits) and vs Deployment.predict (probabilities)."""
    from adapterdeploy.runtime.deployment import Deployment
    from adapterdeploy.runtime.tokenization import TextEncoder

    manifest = Manifest.read(root)
    encoder = TextEncoder(folder / "tokenizer.json", manifest.tokenizer.max_length)
    figures: dict[str, Any] = {}
    samples = spec.parity.get(PARITY_SAMPLES) or []
    if samples:
        items = [s["input"] if isinstance(s["input"], str) else tuple(s["input"]) for s in samples]
        want = np.array([s["logits"] for s in samples], dtype=np.float64)
        # the samples are rounded to 6 decimals when stored
        figures["pytorch_logits_max_abs_diff"] = float(np.abs(_run_graph(graph, encoder, items) - want).max())
        figures["pytorch_rows"] = len(items)
    items = _CHECK_PAIRS if spec.text_pair else _CHECK_ROWS
    with Deployment.open(root, precision="fp32") as dep:
        preds = dep.predict(items, task=spec.name)
    want = np.array(
        [
            [p.probabilities[label] for label in spec.head.labels] if p.probabilities is not None else [p.value]
            for p in preds
        ],
        dtype=np.float64,
    )
    got = _probabilities(_run_graph(graph, encoder, items), spec.head.problem_type)
    figures["runtime_probabilities_max_abs_diff"] = float(np.abs(got - want.reshape(got.shape)).max())
    figures["runtime_rows"] = len(items)
    return figures


def export_standalone_folder(
    deploy_dir: str | Path,
    task: str,
    out_dir: str | Path,
    *,
    force: bool = False,
    precisions: Sequence[str] | None = None,
    tolerance: float | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Write ``out_dir`` as the Hugging Face folder of ``task``; refuse (nothing written) beyond the tolerance.

    ``precisions`` defaults to fp32 + int8; returns {"folder", "files", "parity", "op_domains"}.
    """
    from adapterdeploy.artifacts import require_files
    from adapterdeploy.exporter.quantize import quantize_int8

    root = Path(deploy_dir).expanduser().absolute()
    manifest = Manifest.read(root)
    if task not in manifest.tasks:
        raise UnknownTaskError(f"no task {task!r} in {root}; its tasks are {sorted(manifest.tasks) or 'none'}")
    precisions = tuple(precisions or ("fp32", "int8"))
    bad = [p for p in precisions if p not in GRAPH_FILES]
    if bad:
        raise ConfigError(f"standalone precision(s) {bad} are not supported; choose from {', '.join(GRAPH_FILES)}")
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not force:
        raise ArtifactError(f"{out} already exists; pass --force to replace it")
    if out.exists() and out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ArtifactError(f"{out} exists and is not a model folder; refusing to replace it: choose another --out")
    task_dir = root / manifest.tasks[task]
    spec = TaskSpec.read(task_dir)
    fz = manifest.featurizer
    if spec.featurizer_fingerprint != fz.fingerprint:
        raise ArtifactError(f"task {task!r} was exported against another featurizer than {root}'s; re-add it")
    require_files(
        root,
        manifest.files,
        only=[
            f
            for f in (fz.variants["fp32"].trunk, fz.variants["fp32"].adapted, manifest.tokenizer.file)
            if f in manifest.files
        ],
    )
    require_files(task_dir, spec.files)
    tolerance = float(tolerance if tolerance is not None else manifest.parity.get("tolerance", 1e-4))
    onnx = _require_onnx()
    log(f"assembling the standalone graph of {task} from the deployment's fp32 graphs")
    model = compose_standalone(root, manifest, spec, task_dir)
    meta = {
        "task": task,
        "labels": spec.head.labels,
        "problem_type": spec.head.problem_type,
        "max_length": manifest.tokenizer.max_length,
        "fingerprint": fz.fingerprint,
    }
    parity: dict[str, Any] = {}
    with atomic_directory(out, force=force) as tmp:
        write_folder_files(
            tmp,
            FolderSource.of_deployment(root, manifest),
            labels=spec.head.labels,
            problem_type=spec.head.problem_type,
        )
        fp32 = tmp / GRAPH_FILES["fp32"]
        fp32.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(fp32))
        log("measuring parity (PyTorch samples of task.json, Deployment.predict)")
        figures = _measure(root, spec, fp32, tmp)
        worst = max(figures.get("pytorch_logits_max_abs_diff", 0.0), figures["runtime_probabilities_max_abs_diff"])
        if worst > tolerance:
            raise ParityError(
                f"the standalone graph of {task!r} differs from the deployment by {worst:.3e} > "
                f"tolerance {tolerance:g}; nothing was written. Re-export the deployment",
                figures,
            )
        parity["fp32"] = {
            **figures,
            "tolerance": tolerance,
            "reference": "task.json PyTorch samples (logits) and Deployment.predict fp32",
        }
        stamp_metadata(fp32, metadata_props(**meta, precision="fp32", parity=parity["fp32"]))
        if "int8" in precisions:
            int8 = tmp / GRAPH_FILES["int8"]
            log("quantizing to int8")
            quantize_int8(fp32, int8)
            parity["int8"] = {**_measure(root, spec, int8, tmp), "reference": "as fp32 (int8 is not held to it)"}
            stamp_metadata(int8, metadata_props(**meta, precision="int8", parity=parity["int8"]))
        if "fp32" not in precisions:
            fp32.unlink()
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        domains = sorted({n.domain or "ai.onnx" for n in model.graph.node})
    return {"folder": str(out), "files": files, "parity": parity, "op_domains": domains}
