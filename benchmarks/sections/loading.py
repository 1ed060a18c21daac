"""Section 5: task load / swap into a hot runtime vs loading a whole ONNX model; cold start to first prediction.

Task load: in a warm runtime process, ``load_task(dir)`` then ``unload_task(name)``, repeated; median and
p99 of each. Whole-model load: in a warm process with onnxruntime imported, ``InferenceSession(file)`` of
optimum's O3 export of the same task, repeated. Cold start: a new Python process per attempt, clock from
spawn to the first prediction printed (benchmarks/coldstart.py), systems interleaved attempt by attempt.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO_ROOT, start_workers, summarize, thread_env
from benchmarks.prepare import drop_deployments, find_real_tasks, main_deployment, optimum_export, ours_available
from benchmarks.sections.common import SectionResult, Table, first_model, monitored, ours_spec
from benchmarks.settings import Context

__all__ = ["cold_start", "run"]

COLD_LABELS = {
    "ours": "ours: Deployment.open + predict (onnxruntime + tokenizers)",
    "ort_plain": "a plain onnxruntime session + tokenizers (optimum O3 plain model)",
    "optimum": "optimum ORTModelForSequenceClassification + AutoTokenizer",
    "torch_eager": "eager PyTorch from the saved base + task checkpoint",
}


def cold_start(system: str, spec: dict[str, Any], threads: int, timeout: float = 300.0) -> float:
    """Seconds from spawning ``python -m benchmarks.coldstart`` to its READY line."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.coldstart", system, json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(REPO_ROOT),
        env=thread_env(threads),
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("READY"):
                elapsed = time.perf_counter() - t0
                proc.wait(timeout=timeout)
                return elapsed
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    err = proc.stderr.read()[-2000:] if proc.stderr else ""
    raise RuntimeError(f"cold start of {system} produced no READY (exit {proc.returncode}): {err}")


def _time_loads(ctx: Context, dep: Path, task_model: Path, repeats: int) -> dict[str, Any]:
    ours = ctx.worker("load_ours", "ours", ours_spec(dep, "fp32"))
    loader = ctx.worker("load_ort", "ort_loader", {})
    workers, failed = start_workers([ours, loader])
    if failed:
        for w in workers:
            w.close()
        raise RuntimeError(f"loading workers failed: {failed}")
    try:
        task_dir = str(dep / "tasks" / "t0000")
        # Warm the runtime (first predict) so the timing is a swap into a hot process.
        ours.request("case", case="warm", payload={"kind": "batch", "rows": [["t0000", "warm up"]]})
        ours.request("run", case="warm", n=2)
        task = ours.request(
            "call", method="time_load_unload", kwargs={"task_path": task_dir, "name": "t0000", "repeats": repeats}
        )["result"]
        whole = loader.request(
            "call", method="time_loads", kwargs={"model_path": str(task_model), "repeats": max(5, repeats // 10)}
        )["result"]
    finally:
        for w in workers:
            w.close()
    return {"task_load_s": task["load_s"], "task_unload_s": task["unload_s"], "model_load_s": whole}


def run(ctx: Context) -> SectionResult:
    result = SectionResult("loading", "5. Task load / swap time and cold start")
    missing = ours_available()
    if missing:
        result.skipped = missing
        return result
    s, key, p = first_model(ctx, result)
    dep = main_deployment(p, not ctx.settings.quick)
    task_model = optimum_export(p, "task")
    plain_model = optimum_export(p, "plain")
    loads = monitored(result, "loading/task swap", lambda: _time_loads(ctx, dep, task_model, s.load_repeats))
    st = {k: summarize(v) for k, v in loads.items()}
    t = Table(
        f"{key}: load into a hot process (median / p99 over repeats)",
        ["what", "repeats", "median ms", "p99 ms", "max ms"],
    )
    for k, label in (
        ("task_load_s", "ours: load_task (adapters.safetensors into the bank)"),
        ("task_unload_s", "ours: unload_task"),
        ("model_load_s", "onnxruntime InferenceSession of the whole task model (optimum O3)"),
    ):
        t.rows.append([label, st[k].n, f"{st[k].median * 1e3:.2f}", f"{st[k].p99 * 1e3:.2f}", f"{st[k].max * 1e3:.2f}"])
    result.tables.append(t)
    text = "a quietly moving film about loss and love"
    # Cold start of "MiniLM with its tasks": the deployment of the trained tasks when there are some.
    real = [t for t in find_real_tasks(p, s.ckpt_dir) if t["dataset"] in ("sst2", "cola")]
    cold_dep, cold_task = dep, "t0000"
    if real:
        _, real_dep = drop_deployments(p, 0, [t["ckpt"] for t in find_real_tasks(p, s.ckpt_dir)], not s.quick)
        cold_dep, cold_task = real_dep or dep, real[0]["name"]
    specs = {
        "ours": {"deployment": str(cold_dep), "task": cold_task, "text": text, "threads": s.threads},
        "ort_plain": {
            "model_path": str(plain_model),
            "tokenizer": str(p.tokenizer),
            "text": text,
            "threads": s.threads,
        },
        "optimum": {"model_dir": str(task_model.parent), "text": text},
        "torch_eager": {
            "base_dir": str(p.base_dir),
            "ckpt_dir": str(p.task_dirs(1)[0]),
            "text": text,
            "threads": s.threads,
        },
    }
    if s.quick:  # the two that import torch take seconds each; --quick checks the mechanics only
        specs.pop("optimum")
        specs.pop("torch_eager")

    def colds() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {k: [] for k in specs}
        for _ in range(s.cold_repeats):  # interleaved: one attempt of each system per round
            for system, spec in specs.items():
                out[system].append(cold_start(system, spec, s.threads))
        return out

    cold = monitored(result, "loading/cold start", colds)
    t2 = Table(
        f"{key}: cold start, new process to first prediction ({s.cold_repeats} attempts each, interleaved)",
        ["system", "median s", "min s", "max s", "x ours"],
    )
    ours_med = statistics.median(cold["ours"])
    for system, xs in cold.items():
        med = statistics.median(xs)
        t2.rows.append([COLD_LABELS[system], f"{med:.3f}", f"{min(xs):.3f}", f"{max(xs):.3f}", f"{med / ours_med:.1f}"])
    result.tables.append(t2)
    from adapterdeploy.artifacts import Manifest

    n_cold = len(Manifest.read(cold_dep).tasks)
    result.notes.append(
        f"cold start opens a deployment of {n_cold} tasks and predicts one text of task {cold_task} "
        f"({key}); the file cache is warm (the same files were read before), as on a running host. "
        "The other systems load one task's whole model."
    )
    result.raw = {
        "model": key,
        "loads": {k: v.to_dict() for k, v in st.items()},
        "cold_s": cold,
        "targets": [
            {
                "name": f"{key}: task load median (ms)",
                "value": st["task_load_s"].median * 1e3,
                "goal": 5.0,
                "op": "<=",
                "fmt": "{:.2f}",
            },
            {
                "name": f"{key}: task load p99 (ms)",
                "value": st["task_load_s"].p99 * 1e3,
                "goal": 5.0,
                "op": "<=",
                "fmt": "{:.2f}",
            },
            {
                "name": f"{key}: cold start to first prediction (s)",
                "value": ours_med,
                "goal": 0.6,
                "op": "<=",
                "fmt": "{:.3f}",
            },
        ],
    }
    return result
