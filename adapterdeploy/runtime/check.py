"""The production checklist behind ``adapterdeploy check``: each item measured on this machine, pass or fail.

Items: manifest (schema), checksums (every file of the featurizer and of every task), open (sessions start,
cold-start time), tasks (every task loads; load time), parity (the runtime's mixed batch and fan-out against
an independent single-row path through the same graphs and ``head.onnx``, and against the PyTorch logits
stored at export when the task carries them), latency (batch 1 and 32 medians), memory (RSS), and accuracy
on an evaluation file when one is given. Latency and memory are ``info`` unless a limit is passed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from adapterdeploy.artifacts import (
    PARITY_SAMPLES,
    TASK_HEAD_FILE,
    TASK_WEIGHTS_FILE,
    Manifest,
    safe_relpath,
    verify_deployment,
)
from adapterdeploy.errors import AdapterDeployError
from adapterdeploy.multilabel import sigmoid
from adapterdeploy.runtime.bank import SCALE_SUFFIX, quantize_columns
from adapterdeploy.runtime.deployment import Deployment
from adapterdeploy.runtime.embedding import Embed
from adapterdeploy.runtime.heads import Head
from adapterdeploy.runtime.options import RuntimeOptions
from adapterdeploy.runtime.tagging import tagging_prediction
from adapterdeploy.runtime.tokenization import Row

__all__ = ["SAMPLE_PAIRS", "SAMPLE_TEXTS", "CheckItem", "current_rss_bytes", "run_checklist"]

Status = str  # "pass" | "fail" | "info" | "skip"

SAMPLE_TEXTS = (
    "the movie was a great story and the actor was very good",
    "a boring plot, terrible acting and the worst film of the year",
    "shares of the company rose two percent after the market opened",
    "yes",
    " ".join(["it was fun and the story was good but the plot was too long"] * 60),  # over any max_length
)
SAMPLE_PAIRS = (
    ("the company said its shares were up two percent", "shares of the company rose"),
    ("he says the film is great", "she said the movie was terrible"),
    ("a man is playing a guitar", "a man plays the guitar"),
)
# 32 distinct sentences of typical length, so the batch-32 latency is not shortened by de-duplication.
_WORDS = (
    "the movie story plot actor company market shares people world year day time film "
    "good bad great terrible fun boring new very really"
).split()


def latency_texts(n: int, words: int = 20) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(_WORDS, size=words)) + f" {i}" for i in range(n)]


@dataclass(frozen=True)
class CheckItem:
    name: str
    status: Status
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc), else the peak from getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _timed(fn: Callable[[], Any], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _probs(logits: np.ndarray, regression: bool, multi_label: bool = False) -> np.ndarray:
    if regression:
        return logits[:, :1].astype(np.float64)
    if multi_label:
        return sigmoid(logits)
    x = np.exp(logits - logits.max(axis=1, keepdims=True))
    return x / x.sum(axis=1, keepdims=True)


def _pred_vector(p: Any) -> list[float]:
    """The numbers a row is judged on: probabilities, the value, or a tagging row's per-word scores."""
    if p.tokens is not None:
        return [w.score for w in p.tokens]
    return [p.value] if p.probabilities is None else list(p.probabilities.values())


def _flat(vectors: Sequence[Sequence[float] | np.ndarray]) -> np.ndarray:
    """Rows' vectors end to end (a tagging row's length is its word count)."""
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in vectors]) if vectors else np.zeros(0)


def reference_outputs(dep: Deployment, task: str, rows: Sequence[Row]) -> np.ndarray:
    """Probabilities (or values; a tagging task's per-word scores, flattened) by an independent path: one row
    at a time, the task's own unpadded bank rows read straight from its file, and ``head.onnx`` when the task
    has one."""
    spec = dep.task_spec(task)
    source = Path(dep.task_info(task).source)
    engine = dep._engine
    tensors = load_file(str(source / TASK_WEIGHTS_FILE))
    stack_on = spec.adapter.get("stack_on")
    if stack_on:  # a stacked task: its lower adapter's rows, read straight from the shared file
        tensors.update(load_file(str(dep.root / safe_relpath(stack_on["file"]))))
    H = dep.manifest.featurizer.hidden_size
    bank: dict[str, np.ndarray] = {}
    for k, inp in engine.layout.inputs.items():
        if inp.scale:  # an int8 input's scales: set with its rows
            continue
        t = tensors.get(k)
        if t is None:  # a plain task in a stacked deployment: zero lower-adapter rows (bottleneck 1)
            t = np.zeros([1 if ax == inp.m_axis else (d or H) for ax, d in enumerate(inp.shape) if ax > 0])
        if inp.int8:  # int8 bank rows (runtime/bank.py), quantized as the runtime quantizes them
            q, scale = quantize_columns(t)
            bank[k], bank[k + SCALE_SUFFIX] = q[None], scale[None]
            continue
        bank[k] = np.ascontiguousarray(t[None], dtype=inp.dtype)
    head_file = source / TASK_HEAD_FILE
    head = (
        Head(config=spec.head, session=dep._factory.session(head_file))
        if head_file.is_file()
        else Head.from_tensors(task, spec.head, tensors, dep.manifest.featurizer.hidden_size)
    )
    out = []
    for row in rows:
        padded = dep._encoder.pad(dep._encoder.tokenize([row]))
        feeds = {
            k: getattr(padded, k) for k in ("input_ids", "attention_mask", "token_type_ids") if k in engine.trunk_inputs
        }
        hidden = engine.trunk.run([engine.trunk_output], feeds)[0]
        one = np.zeros(1, dtype=np.int64)
        outs = engine.adapted.run(
            engine.output_names,
            {"hidden": hidden, "attention_mask": padded.attention_mask, "row_source": one, "task_index": one, **bank},
        )
        feats = dict(zip(engine.output_names, outs, strict=True))
        if spec.head.token_level:
            tok = feats[head.feature][0]
            (enc,) = dep._encoder.tokenize([row])
            p = tagging_prediction(task, spec.head, head.logits(tok), enc.encoding, str(row), False)
            out.append(np.array(_pred_vector(p)))
            continue
        out.append(
            _probs(head.logits(feats[head.feature]), spec.head.problem_type == "regression", spec.head.multi_label)[0]
        )
    return _flat(out)


def _parity(dep: Deployment, tolerance: float) -> CheckItem:
    """Runtime vs an independent path through the same graphs (always within ``tolerance``), and vs the
    PyTorch fp32 logits stored at export: within ``tolerance`` for fp32; for int8 / fp16, which are not
    meant to match fp32 that closely, the difference and the label agreement are reported, not judged."""
    names = dep.task_names
    specs = {t: dep.task_spec(t) for t in names}
    inputs: dict[str, list[Row]] = {t: list(SAMPLE_PAIRS if specs[t].text_pair else SAMPLE_TEXTS) for t in names}
    mixed_rows: list[tuple[str | Embed, Row]] = [
        (t, r)
        for i in range(max(len(v) for v in inputs.values()))
        for t in names
        if i < len(inputs[t])
        for r in [inputs[t][i]]
    ]
    mixed = dep.predict_mixed(mixed_rows)
    singles = [t for t in names if not specs[t].text_pair]
    fan = dep.fan_out(list(SAMPLE_TEXTS), tasks=singles) if singles else {}
    worst: dict[str, float] = {}
    stored: dict[str, float] = {}
    agree: dict[str, float] = {}
    for t in names:
        ref = reference_outputs(dep, t, inputs[t])
        got = _flat([_pred_vector(p) for (task, _), p in zip(mixed_rows, mixed, strict=True) if task == t])
        diffs = [float(np.abs(got - ref).max())]
        if t in fan:
            diffs.append(float(np.abs(_flat([_pred_vector(p) for p in fan[t]]) - ref).max()))
        worst[t] = max(diffs)
        samples = specs[t].parity.get(PARITY_SAMPLES) or []
        if samples:
            regression = specs[t].head.problem_type == "regression"
            rows = [s["input"] if isinstance(s["input"], str) else tuple(s["input"]) for s in samples]
            want = _probs(
                np.array([s["logits"] for s in samples], dtype=np.float64), regression, specs[t].head.multi_label
            )
            got_t = np.array([_pred_vector(p) for p in dep.predict(rows, task=t)])
            stored[t] = float(np.abs(got_t - want).max())
            if not regression:
                agree[t] = float((got_t.argmax(1) == want.argmax(1)).mean())
    exact = dep.precision == "fp32"
    bad = (
        {k: v for k, v in {**worst, **{f"{t} vs PyTorch": v for t, v in stored.items()}}.items() if v > tolerance}
        if exact
        else {}
    )
    detail = (
        f"{len(names)} tasks, mixed batch + fan-out vs single-row reference: max diff "
        f"{max(worst.values(), default=0):.1e}"
    )
    if stored:
        detail += f"; vs stored PyTorch fp32 logits: {max(stored.values()):.1e}"
        if agree:
            detail += f", label agreement {min(agree.values()):.0%}"
    else:
        detail += "; no stored PyTorch samples in task.json"
    if not exact:
        # Dynamic int8 quantizes activations with one scale per batch tensor, so a row's output depends on
        # the rows beside it: batch-vs-single differences of ~1e-2 are expected and not judged.
        detail += f" ({dep.precision}: reported, not judged; outputs depend on the batch composition)"
    if bad:
        detail = "over tolerance " + ", ".join(f"{k}: {v:.1e}" for k, v in bad.items()) + f" (> {tolerance:g})"
    status = "fail" if bad else "pass" if exact else "info"
    return CheckItem(
        "parity",
        status,
        detail,
        {
            "tolerance": tolerance,
            "max_diff": worst,
            "vs_pytorch": stored,
            "label_agreement": agree,
            "stored_figures": {t: specs[t].parity.get(dep.precision, specs[t].parity) for t in names},
        },
    )


def _accuracy(dep: Deployment, eval_file: Path, task: str, max_drop: float) -> CheckItem:
    from adapterdeploy import metrics
    from adapterdeploy.datasets import read_dataset

    spec = dep.task_spec(task)
    if spec.head.token_level:
        found, n = tagging_scores(dep, eval_file, task)
        main = "entity_f1"
        return _judged(found, main, spec.metrics, f"{n} sentences of {eval_file.name}", task, max_drop)
    labels = spec.head.labels if spec.head.problem_type != "regression" else None
    data = read_dataset(eval_file, labels=labels, problem_type=spec.head.problem_type)
    rows: list[Row] = [(ex.text, ex.text_pair) if ex.text_pair is not None else ex.text for ex in data.examples]
    preds = dep.predict(rows, task=task)
    truth: Any = [ex.label for ex in data.examples]
    if spec.head.problem_type == "regression":
        got: Any = [p.value for p in preds]
    elif spec.head.multi_label:  # multi-hot rows at the task's stored thresholds
        got = np.array([[lab in (p.labels or ()) for lab in spec.head.labels] for p in preds])
        truth = np.zeros(got.shape, dtype=bool)
        for i, ex in enumerate(data.examples):
            truth[i, list(ex.label or ())] = True  # type: ignore[arg-type]
    else:
        index = {name: i for i, name in enumerate(spec.head.labels)}
        got = [index[str(p.label)] for p in preds]
    found = metrics.json_safe(metrics.compute_metrics(spec.head.problem_type, truth, got, spec.head.num_labels))
    main = metrics.main_metric_name(spec.head.problem_type, data.label_counts() if labels else None)
    return _judged(found, main, spec.metrics, f"{len(rows)} rows of {eval_file.name}", task, max_drop)


def _judged(
    found: dict[str, Any], main: str, stored_metrics: dict[str, Any], what: str, task: str, max_drop: float
) -> CheckItem:
    value = found.get(main)
    stored = stored_metrics.get(main)
    detail = f"{main} {value:.4f} on {what}" if value is not None else f"{main} n/a"
    status = "info"
    if isinstance(stored, (int, float)) and value is not None:
        status = "pass" if value >= stored - max_drop else "fail"
        detail += f" (stored at export: {stored:.4f}, allowed drop {max_drop:g})"
    return CheckItem("accuracy", status, detail, {"task": task, "metrics": found, "stored": stored_metrics})


def tagging_scores(dep: Deployment, eval_file: Path, task: str) -> tuple[dict[str, Any], int]:
    """Entity F1 (adapterdeploy/bio.py) of a tagging task on a CoNLL / JSONL file, from the deployment.

    Each sentence's words are joined with spaces and predicted; a gold word's tag is the runtime's label of
    the word starting at the gold word's first character (the runtime's words refine whitespace-split words,
    so that is the gold word's first subword, as in training); words cut by truncation count as ``O``.
    """
    from adapterdeploy.bio import entity_metrics
    from adapterdeploy.metrics import json_safe
    from adapterdeploy.tagging_data import read_tagging

    spec = dep.task_spec(task)
    data = read_tagging(eval_file, labels=spec.head.labels)
    texts, starts = [], []
    for sentence in data.sentences:
        offsets, pos = [], 0
        for w in sentence.words:
            offsets.append(pos)
            pos += len(w) + 1
        texts.append(" ".join(sentence.words))
        starts.append(offsets)
    preds = dep.predict(texts, task=task)
    gold, got = [], []
    for sentence, offsets, p in zip(data.sentences, starts, preds, strict=True):
        at = {w.start: w.label for w in p.tokens or ()}
        gold.append(data.label_names(sentence))
        got.append([at.get(a, "O") for a in offsets])
    return json_safe(entity_metrics(gold, got)), len(texts)


def run_checklist(
    path: str | Path,
    options: RuntimeOptions | None = None,
    *,
    eval_file: str | Path | None = None,
    eval_task: str | None = None,
    tolerance: float = 1e-4,
    max_latency_ms: float | None = None,
    max_rss_mb: float | None = None,
    max_accuracy_drop: float = 0.02,
    reps: int = 20,
) -> list[CheckItem]:
    """Run every item; stop early only when the deployment cannot be opened at all."""
    root = Path(path)
    items: list[CheckItem] = []
    try:
        manifest = Manifest.read(root)
    except AdapterDeployError as exc:
        return [CheckItem("manifest", "fail", str(exc))]
    items.append(
        CheckItem(
            "manifest",
            "pass",
            f"schema {manifest.schema_version}, written by adapterdeploy "
            f"{manifest.tool_version}, {len(manifest.tasks)} tasks, precisions "
            f"{', '.join(manifest.precisions)}",
        )
    )
    problems, n_files = verify_deployment(root, manifest)
    ok_detail = f"{n_files} files ok (the manifest's, each task.json, every task's own list)"
    items.append(CheckItem("checksums", "fail" if problems else "pass", "; ".join(problems) if problems else ok_detail))
    rss0 = current_rss_bytes()
    t0 = time.perf_counter()
    try:
        dep = Deployment.open(root, options)
    except AdapterDeployError as exc:
        items.append(CheckItem("open", "fail", str(exc)))
        return items
    with dep:
        open_ms = (time.perf_counter() - t0) * 1000
        items.append(
            CheckItem(
                "open",
                "pass",
                f"{dep.provider}, {dep.precision}, sessions ready in {open_ms:.0f} ms",
                {"ms": open_ms, "provider": dep.provider},
            )
        )
        loads, failed = [], {}
        for name in dep.task_names:
            t1 = time.perf_counter()
            try:
                dep.load_task(name)
                loads.append((time.perf_counter() - t1) * 1000)
            except AdapterDeployError as exc:
                failed[name] = str(exc)
        n = len(dep.task_names)
        detail = (
            f"{len(loads)}/{n} loaded, load median {statistics.median(loads):.1f} ms, max {max(loads):.1f} ms"
            if loads
            else f"0/{n} loaded"
        )
        if failed:
            detail += "; " + "; ".join(f"{k}: {v}" for k, v in failed.items())
        items.append(
            CheckItem("tasks", "fail" if failed or not n else "pass", detail, {"load_ms": loads, "failed": failed})
        )
        if failed or not n:
            return items
        try:
            items.append(_parity(dep, tolerance))
        except AdapterDeployError as exc:
            items.append(CheckItem("parity", "fail", str(exc)))
        task = dep.task_names[0]
        pair = dep.task_spec(task).text_pair
        texts: list[str] = latency_texts(32)
        batch: list[Row] = [(t, t) for t in texts] if pair else list(texts)
        dep.predict(batch[:1], task=task)  # warm-up
        b1 = statistics.median(_timed(lambda: dep.predict(batch[:1], task=task), reps))
        b32 = statistics.median(_timed(lambda: dep.predict(batch, task=task), max(3, reps // 4)))
        status = "info" if max_latency_ms is None else ("pass" if b1 <= max_latency_ms else "fail")
        limit = f" (limit {max_latency_ms:g} ms at batch 1)" if max_latency_ms is not None else ""
        items.append(
            CheckItem(
                "latency",
                status,
                f"task {task}: batch 1 median {b1:.2f} ms, batch 32 median {b32:.1f} ms ({b32 / 32:.2f} ms/row){limit}",
                {"batch1_ms": b1, "batch32_ms": b32},
            )
        )
        rss = current_rss_bytes()
        status = "info" if max_rss_mb is None else ("pass" if rss / 2**20 <= max_rss_mb else "fail")
        items.append(
            CheckItem(
                "memory",
                status,
                f"RSS {rss / 2**20:.0f} MiB with {n} tasks loaded (+{(rss - rss0) / 2**20:.0f} MiB for the deployment)",
                {"rss_bytes": rss, "deployment_bytes": rss - rss0},
            )
        )
        if eval_file is not None:
            if eval_task is None:
                items.append(CheckItem("accuracy", "fail", "--eval needs --task NAME (the task to evaluate)"))
            else:
                try:
                    items.append(_accuracy(dep, Path(eval_file), eval_task, max_accuracy_drop))
                except AdapterDeployError as exc:
                    items.append(CheckItem("accuracy", "fail", str(exc)))
    return items
