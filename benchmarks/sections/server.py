"""Section 8: the HTTP server under closed-loop load (1 / 16 / 64 clients), dynamic batching on and off.

Server: ``python -m adapterdeploy.cli serve DEPLOYMENT`` (uvicorn, one process, fixed threads), requests
``POST /v1/predict`` with one text of a random task out of 8 (random SST-2 sentences). Batching on = the
CLI defaults (up to 64 rows, 2 ms wait); off = ``--max-batch-rows 1 --max-wait-ms 0``. Offline reference:
the same requests through ``Deployment.predict_mixed`` in batches of 64 in one process, no HTTP.
The load generator (benchmarks/loadgen.py) is a separate process on the same cores.

The target point (most clients, batching on) is measured in ``server_rounds`` rounds, each a load run
followed at once by an offline run (A B A B: the same machine state for both halves of a ratio); its
ratio is the median of the per-round ratios. One 10 s sample each, as before, swung between 0.82 and
0.95 on this machine from one run to the next.
"""

from __future__ import annotations

import json
import secrets
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO_ROOT, run_load_generator, start_workers, thread_env
from benchmarks.prepare import clone_tasks, main_deployment, ours_available
from benchmarks.sections.common import SectionResult, Table, first_model, monitored, ours_spec
from benchmarks.settings import Context
from benchmarks.workloads import task_stream

__all__ = ["run"]

N_TASKS = 8
OFFLINE_BATCH = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(
    dep: Path,
    tasks: list[Path],
    port: int,
    threads: int,
    batching: bool,
    log: Path,
    *,
    extra_args: tuple[str, ...] = (),
    token: str | None = None,
    ready_timeout_s: float = 120.0,
) -> subprocess.Popen:
    """Start ``adapterdeploy serve`` and hot-load ``tasks`` through its admin API (load from a path)."""
    args = [
        sys.executable,
        "-m",
        "adapterdeploy.cli",
        "serve",
        str(dep),
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--max-queue",
        "4096",
        *extra_args,
    ]
    if not batching:
        args += ["--max-batch-rows", "1", "--max-wait-ms", "0"]
    for root in sorted({str(t.parent) for t in tasks}):  # the admin API loads only from allowed task roots
        args += ["--task-root", root]
    token = token or secrets.token_urlsafe(24)
    env = {**thread_env(threads), "ADAPTERDEPLOY_ADMIN_TOKEN": token}
    with open(log, "w") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT), env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + ready_timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"server not ready after {ready_timeout_s:g} s: {log.read_text()[-2000:]}") from None
            time.sleep(0.2)
    for task in tasks:
        body = json.dumps({"parameters": {"path": str(task)}}).encode()
        req = urllib.request.Request(
            f"{base}/v2/repository/models/{task.name}/load",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
    return proc


def _load(url: str, bodies_file: Path, clients: int, seconds: float, warmup: float) -> dict[str, Any]:
    args = ["benchmarks.loadgen", url, str(bodies_file), str(clients), str(seconds), str(warmup)]
    return run_load_generator(args, timeout=seconds + warmup + 120)


def run(ctx: Context) -> SectionResult:
    result = SectionResult("server", "8. Server: closed-loop load, dynamic batching on / off, vs offline")
    missing = ours_available()
    if missing:
        result.skipped = missing
        return result
    try:
        import aiohttp  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        result.skipped = f"the serving stack is not installed ({exc}); pip install 'adapterdeploy[serve,bench]'"
        return result
    s, key, p = first_model(ctx, result)
    dep = main_deployment(p, not ctx.settings.quick)
    task_dirs = clone_tasks(p, dep, "t0000", "b", N_TASKS)
    tasks = [d.name for d in task_dirs]
    stream = task_stream(ctx.texts, tasks, 1024, seed=8)
    bodies_file = ctx.out / "logs" / "server-requests.json"
    bodies_file.parent.mkdir(parents=True, exist_ok=True)
    bodies_file.write_text(json.dumps([{"task": t, "inputs": [x]} for t, x in stream]))
    warmup = 0.2 if s.quick else 2.0
    top = max(s.server_clients)
    offline_payload = {
        "kind": "batches",
        "batches": [stream[i : i + OFFLINE_BATCH] for i in range(0, len(stream), OFFLINE_BATCH)],
    }
    workers, failed = start_workers(
        [ctx.worker("offline", "ours", ours_spec(dep, "fp32", load_tasks=[str(d) for d in task_dirs]))]
    )
    if failed:
        result.skipped = f"the offline reference could not start: {failed}"
        return result
    offline_w = workers[0]
    offline_runs: list[float] = []
    rows: list[dict[str, Any]] = []
    try:
        offline_w.request("case", case="offline", payload=offline_payload)
        offline_w.request("run", case="offline", n=1)  # warm-up

        def offline() -> float:  # each call of a "batches" case runs the next batch: one pass = every batch once
            times = offline_w.request("run", case="offline", n=len(offline_payload["batches"]))["times"]
            rate = len(stream) / sum(times)
            offline_runs.append(rate)
            return rate

        for batching in (True, False):
            port = _free_port()

            def serve(batching: bool = batching, port: int = port) -> list[dict[str, Any]]:
                proc = _start_server(
                    dep, task_dirs, port, s.threads, batching, ctx.out / "logs" / f"server-batching-{batching}.log"
                )
                try:
                    url = f"http://127.0.0.1:{port}/v1/predict"
                    out = []
                    for c in s.server_clients:
                        paired = batching and c == top
                        runs = []
                        for _ in range(s.server_rounds if paired else 1):
                            r = _load(url, bodies_file, c, s.server_seconds, warmup)
                            if paired:
                                r["offline_rows_per_s"] = offline()
                            runs.append(r)
                        point = runs[0]
                        if paired:  # the round with the median ratio, and every round's ratio
                            ratios = [r["rows_per_s"] / r["offline_rows_per_s"] for r in runs]
                            middle = sorted(range(len(runs)), key=ratios.__getitem__)[len(runs) // 2]
                            point = {**runs[middle], "round_ratios": ratios}
                        out.append({"batching": batching, **point})
                    return out
                finally:
                    proc.terminate()
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()

            rows += monitored(result, f"server/batching={'on' if batching else 'off'}", serve)
    finally:
        offline_w.close()
    offline = statistics.median(offline_runs)
    t = Table(
        f"{key}: POST /v1/predict, one text per request, {N_TASKS} tasks, {s.server_seconds:g} s per point "
        f"after {warmup:g} s warm-up; offline predict_mixed (batches of {OFFLINE_BATCH}): {offline:.1f} rows/s",
        ["dynamic batching", "clients", "requests/s", "x offline", "p50 ms", "p95 ms", "p99 ms", "errors"],
    )
    for r in rows:
        r["vs_offline"] = r["rows_per_s"] / r.get("offline_rows_per_s", offline)
        t.rows.append(
            [
                "on" if r["batching"] else "off",
                r["clients"],
                f"{r['rows_per_s']:.1f}",
                f"{r['vs_offline']:.2f}",
                *[("n/a" if r[k] is None else f"{r[k] * 1e3:.1f}") for k in ("p50_s", "p95_s", "p99_s")],
                r["errors"],
            ]
        )
    result.tables.append(t)
    best = next((r for r in rows if r["batching"] and r["clients"] == top), None)
    result.raw = {
        "model": key,
        "rows": rows,
        "offline_rows_per_s": offline,
        "targets": []
        if best is None
        else [
            {
                "name": f"{key}: server throughput at {top} clients / offline",
                "value": best["vs_offline"],
                "goal": 0.85,
                "op": ">=",
                "fmt": "{:.2f}",
            }
        ],
    }
    result.notes.append(
        f"the {top}-client point with batching on is the median of {s.server_rounds} rounds, each "
        "a load run followed by an offline run (its ratio uses that round's offline rate; "
        f"per-round ratios in results.json); offline runs: "
        f"{', '.join(f'{x:.1f}' for x in offline_runs)} rows/s."
    )
    result.notes.append(
        "the load generator runs on the same cores as the server, so it takes CPU the server "
        "would otherwise use; the ratio to offline is a lower bound for a separate client machine."
    )
    series = {
        f"batching {'on' if b else 'off'}": [
            next(r["rows_per_s"] for r in rows if r["batching"] == b and r["clients"] == c) for c in s.server_clients
        ]
        for b in (True, False)
    }
    series["offline"] = [offline] * len(s.server_clients)
    result.plots.append(
        {
            "file": f"server-{key}.png",
            "kind": "line",
            "title": f"{key}: server throughput vs clients",
            "x": list(s.server_clients),
            "series": series,
            "xlabel": "clients",
            "ylabel": "requests/s",
            "logx": True,
        }
    )
    return result
