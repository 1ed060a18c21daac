"""The systems under comparison, each built inside its own worker process (see worker.py).

Every system turns the SAME rows (texts or text pairs, with a task name) into class probabilities, end to
end: tokenization (the same ``tokenizers`` tokenizer.json and max_length for all, dynamic padding to the
batch's longest row), the forward pass, and a softmax. Systems:

    torch_ours        eager PyTorch: adapterdeploy.models.encoder.EncoderWithAdapters from a task checkpoint
    torch_compile     the same model under torch.compile (compiled during warm-up)
    torch_adapterhub  eager PyTorch: the AdapterHub ``adapters`` library, seq_bn adapter + 1-layer head
    torch_adapterhub_composed  the same library running saved Stack / Fuse compositions (composition section)
    torch_adapterhub_parallel  the same library's Parallel composition of n adapters (fan-out section)
    ort_model         one onnxruntime session over one exported ONNX file (optimum's export, O3 or not)
    ort_per_task      one onnxruntime session per task ("the common way" for many tasks), up to a memory budget
    ours              adapterdeploy.runtime.Deployment (fp32 or int8)
    peak              GEMM peak measurements (benchmarks.peak)

The torch systems use the attention implementation that ``transformers`` picks by default (SDPA), the
faster eager-mode path a user gets from ``AutoModel.from_pretrained``.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from benchmarks.memory import rss_bytes

__all__ = ["SYSTEMS", "BatchEncoder", "create_system", "softmax"]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def batched_proba(system: Any, rows: list[Any], batch_size: int) -> list[list[float]]:
    """Class probabilities of single-model ``system`` for ``rows``, via its own timed ``prepare`` path."""
    out: list[list[float]] = []
    for i in range(0, len(rows), batch_size):
        out.extend(system.prepare({"kind": "batch", "rows": [["t", r] for r in rows[i : i + batch_size]]})().tolist())
    return out


def _row(x: Any) -> str | tuple[str, str]:
    return x if isinstance(x, str) else (x[0], x[1])


class BatchEncoder:
    """tokenizer.json -> int64 numpy arrays padded to the batch's longest row, truncated at max_length."""

    def __init__(self, tokenizer_file: str, max_length: int) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(tokenizer_file)
        self.max_length = max_length
        self.tok.enable_truncation(max_length)
        self.tok.enable_padding(pad_id=self.tok.token_to_id("[PAD]") or 0)

    def length(self, row: Any) -> int:
        """Token count of one row before truncation."""
        self.tok.no_truncation()
        try:
            return len(self.tok.encode(*([row] if isinstance(row, str) else list(row))).ids)
        finally:
            self.tok.enable_truncation(self.max_length)

    def __call__(self, rows: Sequence[Any]) -> dict[str, np.ndarray]:
        encs = self.tok.encode_batch([_row(r) for r in rows])
        return {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
        }


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def _ort_options(threads: int, spin: bool = True):
    """onnxruntime's defaults (optimum's too) with fixed threads; ``spin=False`` stops idle workers spinning."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return so


# ------------------------------------------------------------------------------------------ torch


class TorchOurs:
    """EncoderWithAdapters (our PyTorch reference) from a base directory and a task checkpoint."""

    def __init__(self, spec: dict[str, Any], threads: int) -> None:
        _set_torch_threads(threads)
        import torch
        from transformers import AutoModel

        from adapterdeploy.models.base import load_base
        from adapterdeploy.models.checkpoint import load_checkpoint

        self.torch = torch
        base = load_base(spec["base_dir"])
        attn = spec.get("attn", "sdpa")
        if attn != "eager":
            sdpa = AutoModel.from_pretrained(base.path, attn_implementation=attn, local_files_only=True).eval()
            base = replace(base, model=sdpa)
        self.model = load_checkpoint(spec["ckpt_dir"]).build_model(base).eval()
        self.forward: Callable[..., Any] = self.model
        if spec.get("compile"):
            self.forward = torch.compile(self.model, dynamic=True)
        self.encode = BatchEncoder(spec["tokenizer"], int(spec["max_length"]))

    def prepare(self, payload: dict[str, Any]) -> Callable[[], object]:
        if payload["kind"] != "batch":
            raise ValueError(f"{type(self).__name__} runs 'batch' payloads only, not {payload['kind']!r}")
        rows = [r[1] for r in payload["rows"]]
        torch = self.torch

        def run() -> np.ndarray:
            enc = self.encode(rows)
            with torch.inference_mode():
                logits = self.forward(**{k: torch.from_numpy(v) for k, v in enc.items()})
            return softmax(logits.numpy())

        return run

    def predict_proba(self, rows: list[Any], batch_size: int = 32) -> list[list[float]]:
        return batched_proba(self, rows, batch_size)


class TorchAdapterHub:
    """The AdapterHub ``adapters`` library: a seq_bn (Pfeiffer) adapter and a classification head.

    Same bottleneck size and activation as our tasks (reduction factor, relu); AdapterHub has no
    after-the-whole-layer placement, so the adapter sits on the FFN output (same FLOPs, one site per layer).
    Weights are random (``init_std``), which does not change the timing.
    """

    def __init__(self, spec: dict[str, Any], threads: int) -> None:
        _set_torch_threads(threads)
        import adapters
        import torch

        torch.manual_seed(int(spec.get("seed", 0)))
        self.torch = torch
        model = adapters.AutoAdapterModel.from_pretrained(spec["base_dir"], local_files_only=True)
        cfg = adapters.SeqBnConfig(reduction_factor=float(spec["reduction_factor"]), non_linearity=spec["activation"])
        model.add_adapter("task", config=cfg)
        model.add_classification_head("task", num_labels=int(spec.get("num_labels", 2)), layers=1)
        model.set_active_adapters("task")
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "adapters.task" in name and p.dim() == 2:
                    p.normal_(0.0, float(spec.get("init_std", 0.05)))
        self.model = model.eval()
        self.encode = BatchEncoder(spec["tokenizer"], int(spec["max_length"]))

    def prepare(self, payload: dict[str, Any]) -> Callable[[], object]:
        rows = [r[1] for r in payload["rows"]]
        torch = self.torch

        def run() -> np.ndarray:
            enc = self.encode(rows)
            with torch.inference_mode():
                logits = self.model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits
            return softmax(logits.numpy())

        return run


class TorchAdapterHubParallel:
    """The adapters library's ``Parallel`` composition: ``n`` seq_bn adapters, each with its own head, in one model.

    What a user of the library does to answer one text for n tasks in one forward: ``Parallel(*names)``
    replicates the batch at the first adapter layer, so with ``leave_out`` = layers [0, K) (the library's
    own way to skip layers) the layers below K run once, like our AdapterDrop K. Same bottleneck and
    activation as our tasks; random weights (``init_std``), which do not change the timing. A ``fanout``
    payload's task names only count (one adapter per task); a ``separate`` payload runs one forward per task
    with that task's adapter alone active (one task: the library's single-task call).
    """

    def __init__(self, spec: dict[str, Any], threads: int) -> None:
        _set_torch_threads(threads)
        import adapters
        import torch

        torch.manual_seed(int(spec.get("seed", 0)))
        self.torch = torch
        model = adapters.AutoAdapterModel.from_pretrained(spec["base_dir"], local_files_only=True)
        self.names = [f"a{i}" for i in range(int(spec["adapters"]))]
        cfg = adapters.SeqBnConfig(
            reduction_factor=float(spec["reduction_factor"]),
            non_linearity=spec["activation"],
            leave_out=list(range(int(spec.get("adapter_drop", 0)))),
        )
        for name in self.names:
            model.add_adapter(name, config=cfg)
            model.add_classification_head(name, num_labels=int(spec.get("num_labels", 2)), layers=1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".adapters." in name and p.dim() == 2:
                    p.normal_(0.0, float(spec.get("init_std", 0.05)))
        self.model = model.eval()
        self.parallel = adapters.composition.Parallel(*self.names)
        self.active: Any = None
        self.encode = BatchEncoder(spec["tokenizer"], int(spec["max_length"]))

    def prepare(self, payload: dict[str, Any]) -> Callable[[], object]:
        kind, n = payload.get("kind"), len(payload["tasks"])
        if kind not in ("fanout", "separate") or n > len(self.names) or (kind == "fanout" and n != len(self.names)):
            raise ValueError(f"this system answers fanout payloads to its {len(self.names)} adapters, or separate ones")
        rows, torch, model = [_row(payload["text"])], self.torch, self.model

        def forward() -> Any:
            enc = self.encode(rows)
            with torch.inference_mode():
                return model(**{k: torch.from_numpy(v) for k, v in enc.items()})

        def fanout() -> list[np.ndarray]:
            self._activate(self.parallel)
            return [softmax(o.logits.numpy()) for o in forward()]

        def separate() -> list[np.ndarray]:
            out = []
            for name in self.names[:n]:
                self._activate(name)
                out.append(softmax(forward().logits.numpy()))
            return out

        return fanout if kind == "fanout" else separate

    def _activate(self, setup: Any) -> None:
        """Switch the model's active composition only when it changes: the library walks every layer to set
        it, which a user running one setup does once, not per call."""
        if self.active != setup:
            self.model.set_active_adapters(setup)
            if isinstance(setup, str):
                self.model.active_head = setup
            self.active = setup


# -------------------------------------------------------------------------------------- onnxruntime


class TorchAdapterHubComposed:
    """The adapters library's own composition (``Stack`` / ``Fuse`` / one adapter), loaded from saved directories.

    ``spec["tasks"]``: task -> {"adapters": [save_adapter dirs], "fusion": save_adapter_fusion dir or None,
    "stack": bool, "head": save_head dir}. A batch whose rows belong to several tasks runs one forward per task
    (the library switches its active composition between forwards; it cannot mix them in one).
    """

    def __init__(self, spec: dict[str, Any], threads: int) -> None:
        _set_torch_threads(threads)
        import adapters
        import torch

        self.torch, self.composition = torch, adapters.composition
        model = adapters.AutoAdapterModel.from_pretrained(spec["base_dir"], local_files_only=True)
        self.setups: dict[str, Any] = {}
        loaded: set[str] = set()
        for task, t in spec["tasks"].items():
            names = []
            for d in t["adapters"]:
                name = os.path.basename(d.rstrip("/"))
                if name not in loaded:
                    model.load_adapter(d, load_as=name, with_head=False)
                    loaded.add(name)
                names.append(name)
            if t.get("fusion"):
                model.load_adapter_fusion(t["fusion"], with_head=False)
                setup: Any = adapters.composition.Fuse(*names)
            elif t.get("stack"):
                setup = adapters.composition.Stack(*names)
            else:
                setup = names[0]
            model.load_head(t["head"], load_as=task)
            self.setups[task] = setup
        self.model = model.eval()
        self.encode = BatchEncoder(spec["tokenizer"], int(spec["max_length"]))

    def prepare(self, payload: dict[str, Any]) -> Callable[[], object]:
        groups: dict[str, list[int]] = {}
        for i, (task, _) in enumerate(payload["rows"]):
            groups.setdefault(task, []).append(i)
        rows = [r[1] for r in payload["rows"]]
        torch = self.torch

        def run() -> list[np.ndarray]:
            out = []
            for task, idx in groups.items():
                self.model.set_active_adapters(self.setups[task])
                self.model.active_head = task
                enc = self.encode([rows[i] for i in idx])
                with torch.inference_mode():
                    logits = self.model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits
                out.append(softmax(logits.numpy()))
            return out

        return run


class OrtModel:
    """One onnxruntime session over one whole-model ONNX file (e.g. optimum's export)."""

    def __init__(self, spec: dict[str, Any], threads: int) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(
            spec["model_path"], _ort_options(threads, bool(spec.get("spin", True))), providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.encode = BatchEncoder(spec["tokenizer"], int(spec["max_length"]))

    def prepare(self, payload: dict[str, Any]) -> Callable[[], object]:
        rows = [r[1] for r in payload["rows"]]

        def run() -> np.ndarray:
            enc = self.encode(rows)
            return softmax(self.session.run(None, {k: enc[k] for k in self.inputs})[0])

        return run

    def predict_proba(self, rows: list[Any], batch_size: int = 32) -> list[list[float]]:
        return batched_proba(self, rows, batch_size)


class OrtPerTask:
    """One onnxruntime session per task, each parsed from its own copy of the file, until a memory budget.

    What a user does without a shared featurizer: every task is a whole model. Sessions stop being
    created once this process's RSS passes ``budget_bytes``; ``status()`` says how many were loaded.
    """

    def __init__(self, spec: dict[str, Any], threads: int) -> None:
        import onnxruntime as ort

        with open(spec["model_path"], "rb") as f:
            model_bytes = f.read()
        budget = int(spec["budget_bytes"])
        self.sessions: dict[str, Any] = {}
        self.over_budget = False
        t0 = time.perf_counter()
        for name in spec["tasks"]:
            if rss_bytes()["rss_bytes"] > budget:
                self.over_budget = True
                break
            self.sessions[name] = ort.InferenceSession(
                model_bytes, _ort_options(threads), providers=["CPUExecutionProvider"]
            )
        self.load_s = time.perf_counter() - t0
        del model_bytes
        gc.collect()
        self.requested = len(spec["tasks"])
        self.inputs = [i.name for i in next(iter(self.sessions.values())).get_inputs()] if self.sessions else []
        self.encode = BatchEncoder(spec["tokenizer"], int(spec["max_length"]))

    def status(self) -> dict[str, Any]:

        return {
            "loaded": len(self.sessions),
            "requested": self.requested,
            "over_budget": self.over_budget,
            "load_s": self.load_s,
            **rss_bytes(),
        }

    def prepare(self, payload: dict[str, Any]) -> Callable[[], object]:
        if self.over_budget:
            raise RuntimeError(f"only {len(self.sessions)} of {self.requested} task models fit the memory budget")
        groups: dict[str, list[Any]] = {}
        for task, row in payload["rows"]:
            groups.setdefault(task, []).append(row)

        def run() -> list[np.ndarray]:
            out = []
            for task, rows in groups.items():
                enc = self.encode(rows)
                out.append(softmax(self.sessions[task].run(None, {k: enc[k] for k in self.inputs})[0]))
            return out

        return run


# ------------------------------------------------------------------------------------------- ours


class Ours:
    """adapterdeploy.runtime.Deployment: shared featurizer, tasks as adapter-bank rows."""

    def __init__(self, spec: dict[str, Any], threads: int) -> None:
        from adapterdeploy.runtime import Deployment

        self.dep = Deployment.open(spec["deployment"], precision=spec.get("precision", "fp32"), threads=threads)
        for path in spec.get("load_tasks", []):
            self.dep.load_task(path)

    def prepare(self, payload: dict[str, Any]) -> Callable[[], object]:
        kind = payload["kind"]
        dep = self.dep
        if kind == "batch":
            rows = [(t, _row(x)) for t, x in payload["rows"]]
            tasks = {t for t, _ in rows}
            if len(tasks) == 1:
                task, texts = rows[0][0], [x for _, x in rows]
                return lambda: dep.predict(texts, task=task)
            return lambda: dep.predict_mixed(rows)
        text, tasks = _row(payload["text"]), list(payload["tasks"])
        if kind == "fanout":
            return lambda: dep.fan_out([text], tasks=tasks)
        if kind == "separate":
            return lambda: [dep.predict([text], task=t) for t in tasks]
        raise ValueError(f"unknown payload kind {kind!r}")

    def predict_proba(self, rows: list[Any], task: str, batch_size: int = 32) -> list[list[float]]:
        """Class probabilities in the task's label order (for accuracy runs)."""
        labels = self.dep.task_spec(task).head.labels
        out: list[list[float]] = []
        for i in range(0, len(rows), batch_size):
            preds = self.dep.predict([_row(r) for r in rows[i : i + batch_size]], task=task)
            out.extend([[float(p.probabilities[label]) for label in labels] for p in preds])
        return out

    def time_load_unload(self, task_path: str, name: str, repeats: int) -> dict[str, list[float]]:
        """Load a task into the hot runtime and unload it again, ``repeats`` times; seconds per step."""
        loads, unloads = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.dep.load_task(task_path)
            t1 = time.perf_counter()
            self.dep.unload_task(name)
            t2 = time.perf_counter()
            loads.append(t1 - t0)
            unloads.append(t2 - t1)
        return {"load_s": loads, "unload_s": unloads}

    def load_many(self, task_paths: list[str]) -> dict[str, Any]:

        before = rss_bytes()
        t0 = time.perf_counter()
        for p in task_paths:
            self.dep.load_task(p)
        return {"load_s": time.perf_counter() - t0, "before": before, "after": rss_bytes()}


class OursNoAdapter:
    """Our featurizer graph without adapters (prepare.noadapter_featurizer) run like the runtime runs its own:
    the runtime's session options and tokenizer, CLS pooling, the task's linear head in numpy."""

    def __init__(self, spec: dict[str, Any], threads: int) -> None:
        from pathlib import Path

        from safetensors.numpy import load_file

        from adapterdeploy.artifacts import Manifest
        from adapterdeploy.runtime.sessions import SessionFactory
        from adapterdeploy.runtime.tokenization import TextEncoder

        dep = Path(spec["deployment"])
        m = Manifest.read(dep)
        from adapterdeploy.runtime import RuntimeOptions

        # The same thread-pool choices as Deployment.open's defaults, whatever the runtime decides they are.
        defaults = RuntimeOptions()
        factory = SessionFactory(
            threads=threads,
            shared_pool=defaults.shared_thread_pool,
            spin_us=defaults.spin_us,
            precision=spec["precision"],
            cache_dir=dep / "engine_cache",
        )
        self.session = factory.session(Path(spec["graph"]))
        self.encoder = TextEncoder.of_deployment(dep, m)
        head = load_file(str(dep / m.tasks[spec["task"]] / "adapters.safetensors"))
        self.w, self.b = head["head.out.w"], head["head.out.b"]

    def prepare(self, payload: dict[str, Any]) -> Callable[[], object]:
        rows = [_row(r[1]) for r in payload["rows"]]

        def run() -> np.ndarray:
            padded = self.encoder.pad(self.encoder.tokenize(rows))
            hidden = self.session.run(
                ["hidden"],
                {
                    "input_ids": padded.input_ids,
                    "attention_mask": padded.attention_mask,
                    "token_type_ids": padded.token_type_ids,
                },
            )[0]
            return softmax(hidden[:, 0] @ self.w + self.b)

        return run


def time_session_loads(model_path: str, repeats: int, threads: int) -> list[float]:
    """Seconds to create an onnxruntime session from a whole-model file, ``repeats`` times."""
    import onnxruntime as ort

    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess = ort.InferenceSession(model_path, _ort_options(threads), providers=["CPUExecutionProvider"])
        out.append(time.perf_counter() - t0)
        del sess
    return out


class OrtLoader:
    """A hot process that only creates sessions (task-swap baseline: load a whole model)."""

    def __init__(self, spec: dict[str, Any], threads: int) -> None:
        import onnxruntime  # noqa: F401 - imported before timing, as in a hot server

        self.threads = threads

    def time_loads(self, model_path: str, repeats: int) -> list[float]:
        return time_session_loads(model_path, repeats, self.threads)


def _peak(spec: dict[str, Any], threads: int) -> Any:
    from benchmarks.peak import PeakSystem

    return PeakSystem(spec, threads)


SYSTEMS: dict[str, Callable[[dict[str, Any], int], Any]] = {
    "torch_ours": TorchOurs,
    "torch_compile": lambda spec, threads: TorchOurs({**spec, "compile": True}, threads),
    "torch_adapterhub": TorchAdapterHub,
    "torch_adapterhub_composed": TorchAdapterHubComposed,
    "torch_adapterhub_parallel": TorchAdapterHubParallel,
    "ort_model": OrtModel,
    "ort_per_task": OrtPerTask,
    "ort_loader": OrtLoader,
    "ours": Ours,
    "ours_noadapter": OursNoAdapter,
    "peak": _peak,
}


def create_system(name: str, spec: dict[str, Any], threads: int) -> Any:
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; known: {', '.join(sorted(SYSTEMS))}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return SYSTEMS[name](spec, threads)
