"""Section 10: one deployment from 10 to 10,000 tasks: what each task costs as N grows.

Per N (``scale_n``): a deployment of the first model's featurizer holding one exported task (t0000, the
template) and N - 1 synthetic tasks (benchmarks/synthetic.py: random adapter rows of the real shapes,
written through the exporter's task writer). Measured, each in a fresh process:

- synthetic write: seconds per task to write the N - 1 synthetic pieces (the helper, not the exporter);
- add-task: ``adapterdeploy add-task DEPLOY t0001 --replace`` into the N-task deployment: wall time and
  peak RSS (the real command: torch start, base load, parity, the atomic swap);
- export: ``adapterdeploy export`` of ``scale_export_n`` real checkpoints: seconds per task, peak RSS
  (export of thousands of tasks is the streaming export's job; see the notes);
- open: ``Deployment.open`` time and RSS, the full ``tasks()`` listing and one page of 100;
- disk: bytes per task piece (file sizes, and blocks allocated);
- cold task, in process: first predict of a never-used task minus its second predict, and the time of
  ``prefetch`` (the server's load thread);
- server: ``adapterdeploy serve --max-loaded-tasks B`` (B = ``scale_budget``). First a fill pass:
  ``scale_clients`` concurrent clients send one request to each of ``min(N, 1.5 B)`` distinct tasks (a
  random order), so that at N > B the budget is reached and tasks are evicted whatever the machine's speed
  (a 10 s random run at ~10 rows/s under load had touched 165 distinct tasks); then ``scale_clients``
  closed-loop clients sending one text of a uniformly random task of N for ``scale_seconds``: rows/s,
  latency, task loads per request (1 - hit rate). RSS is polled every 0.25 s over both (peak, last),
  with the loaded-task count and task loads from ``/metrics``; then, idle, ``scale_cold`` tasks unloaded
  through the admin API and requested twice: first minus second latency.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from benchmarks.harness import REPO_ROOT, thread_env
from benchmarks.prepare import deployment, ours_available
from benchmarks.sections.common import SectionResult, Table, first_model, mib, monitored
from benchmarks.sections.server import _free_port, _load, _start_server
from benchmarks.settings import Context
from benchmarks.synthetic import add_synthetic_tasks
from benchmarks.workloads import task_stream

__all__ = ["run"]

TEMPLATE = "t0000"
ADDED = "t0001"


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def _probe(args: list[str], threads: int, timeout: float = 3600) -> dict[str, Any]:
    out = subprocess.run(
        _py("-m", "benchmarks.scale_probe", *args),
        capture_output=True,
        text=True,
        cwd=str(REPO_ROOT),
        env=thread_env(threads),
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"scale probe {args[0]} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _n_deployment(ctx: Context, p: Any, n: int) -> tuple[Path, float | None]:
    """The N-task deployment (cached in the work dir) and the synthetic write seconds per task (None: cached)."""
    base = deployment(p, 0, checkpoints=p.task_dirs(1), precisions=("fp32",), name="scale-base")
    out = p.work / "scale" / f"n{n}"
    if (out / "deployment.json").is_file():
        return out, None
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)
    t0 = time.perf_counter()
    add_synthetic_tasks(tmp, n - 1, template=TEMPLATE, seed=n)
    per_task = (time.perf_counter() - t0) / max(1, n - 1)
    tmp.rename(out)
    return out, per_task


def _disk(dep: Path) -> dict[str, float]:
    sizes, blocks, tasks = 0, 0, 0
    for d in (dep / "tasks").iterdir():
        tasks += 1
        for f in d.iterdir():
            st = f.stat()
            sizes += st.st_size
            blocks += st.st_blocks * 512
    return {"bytes_per_task": sizes / tasks, "allocated_per_task": blocks / tasks}


def _post(url: str, body: dict[str, Any], token: str | None = None) -> float:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
    return time.perf_counter() - t0


def _scrape(base: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {"loads": 0.0, "requests": 0.0, "loaded": 0.0}
    for line in text.splitlines():
        if line.startswith("adapterdeploy_task_load_duration_seconds_count"):
            out["loads"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("adapterdeploy_loaded_tasks"):
            out["loaded"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("adapterdeploy_requests_total{") and 'status="200"' in line:
            out["requests"] += float(line.rsplit(" ", 1)[1])
    return out


class _RssPoller:
    """Peak and last RSS of a process, polled every 0.25 s in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.last = int(self.proc.memory_info().rss)
            except psutil.Error:
                return
            self.peak = max(self.peak, self.last)
            self._stop.wait(0.25)

    def __enter__(self) -> _RssPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _fill(base: str, tasks: list[str], text: str, clients: int) -> dict[str, Any]:
    """One request to each of ``tasks`` from ``clients`` concurrent clients (count-based, not timed)."""

    def one(task: str) -> bool:
        try:
            _post(f"{base}/v1/predict", {"task": task, "inputs": [text]})
        except OSError:  # urllib's HTTPError / URLError: counted, the pass goes on
            return False
        return True

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        ok = sum(pool.map(one, tasks))
    seconds = time.perf_counter() - t0
    return {"requests": len(tasks), "errors": len(tasks) - ok, "seconds": seconds, "per_s": len(tasks) / seconds}


def _server(ctx: Context, dep: Path, n: int, names: list[str], log: Path) -> dict[str, Any]:
    s = ctx.settings
    budget = s.scale_budget
    port, token = _free_port(), secrets.token_urlsafe(24)
    stream = task_stream(ctx.texts, names, 20000, seed=n)
    bodies = ctx.out / "logs" / f"scale-requests-n{n}.json"
    bodies.write_text(json.dumps([{"task": t, "inputs": [x]} for t, x in stream]))
    proc = _start_server(
        dep, [], port, s.threads, True, log, extra_args=("--max-loaded-tasks", str(budget)), token=token
    )
    base = f"http://127.0.0.1:{port}"
    try:
        rss_ready = int(psutil.Process(proc.pid).memory_info().rss)
        before = _scrape(base)
        warmup = 0.5 if s.quick else 3.0
        fill_tasks = random.Random(n).sample(names, min(len(names), budget + budget // 2))
        with _RssPoller(proc.pid) as rss:
            fill = _fill(base, fill_tasks, stream[0][1], s.scale_clients)
            filled = _scrape(base)
            load = _load(f"{base}/v1/predict", bodies, s.scale_clients, s.scale_seconds, warmup)
        after = _scrape(base)
        cold = random.Random(n).sample(names, min(len(names), s.scale_cold))
        first, second = [], []
        for t in cold:
            _post(f"{base}/v2/repository/models/{t}/unload", {}, token)
            first.append(_post(f"{base}/v1/predict", {"task": t, "inputs": [stream[0][1]]}))
            second.append(_post(f"{base}/v1/predict", {"task": t, "inputs": [stream[0][1]]}))
        requests = after["requests"] - filled["requests"]
        return {
            **load,
            "fill": {**fill, "loaded_after": filled["loaded"], "loads": filled["loads"] - before["loads"]},
            "loaded_end": after["loaded"],
            "evictions": after["loads"] - before["loads"] - after["loaded"],
            "rss_ready_bytes": rss_ready,
            "rss_peak_bytes": rss.peak,
            "rss_last_bytes": rss.last,
            "task_loads": after["loads"] - filled["loads"],
            "ok_requests": requests,
            "loads_per_request": (after["loads"] - filled["loads"]) / requests if requests else None,
            "cold_first_s": first,
            "warm_s": second,
            "budget": budget,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _extra_ms(first: list[float], second: list[float]) -> float:
    return statistics.median(a - b for a, b in zip(first, second, strict=True)) * 1e3


def run(ctx: Context) -> SectionResult:
    result = SectionResult("scale", "10. Scale: one deployment from 10 to 10,000 tasks")
    missing = ours_available()
    if missing:
        result.skipped = missing
        return result
    s, key, p = first_model(ctx, result)
    (ctx.out / "logs").mkdir(parents=True, exist_ok=True)
    added_ckpt = p.task_dirs(2)[1]
    rows: list[dict[str, Any]] = []
    for n in s.scale_n:
        dep, synth = monitored(result, f"scale/N={n} synthetic write", lambda n=n: _n_deployment(ctx, p, n))
        names = sorted(json.loads((dep / "deployment.json").read_text())["tasks"])
        add = None
        if s.scale_add_task:
            add = monitored(
                result,
                f"scale/N={n} add-task",
                lambda dep=dep: _probe(
                    [
                        "peak",
                        *_py("-m", "adapterdeploy.cli", "add-task", str(dep), str(added_ckpt), "--replace", "--quiet"),
                    ],
                    s.threads,
                ),
            )
            if add["returncode"] != 0:
                raise RuntimeError(f"add-task into N={n} failed: {add['stderr_tail']}")
            names = sorted(set(names) | {ADDED})
        opened = monitored(
            result,
            f"scale/N={n} open",
            lambda dep=dep: _probe(["open", str(dep), str(s.scale_budget), str(s.scale_cold)], s.threads),
        )
        server = monitored(
            result,
            f"scale/N={n} server",
            lambda dep=dep, n=n, names=names: _server(ctx, dep, n, names, ctx.out / "logs" / f"scale-server-n{n}.log"),
        )
        rows.append(
            {
                "n": n,
                "tasks_served": len(names),
                "synthetic_s_per_task": synth,
                "add_task": add,
                "open": opened,
                "disk": _disk(dep),
                "server": server,
            }
        )
        print(
            f"[scale] N={n}: add-task {add['wall_s'] if add else float('nan'):.1f}s, open {opened['open_s']:.3f}s, "
            f"server {server['rows_per_s']:.1f} rows/s",
            flush=True,
        )
    exports = []
    for k in s.scale_export_n:
        out = p.work / "scale" / f"export-{k}"
        ckpts = [str(d) for d in p.task_dirs(k)]
        cmd = _py(
            "-m",
            "adapterdeploy.cli",
            "export",
            "--base",
            str(p.base_dir),
            *[a for c in ckpts for a in ("--task", c)],
            "--out",
            str(out),
            "--force",
            "--quiet",
        )
        r = monitored(result, f"scale/export {k} tasks", lambda cmd=cmd: _probe(["peak", *cmd], s.threads))
        if r["returncode"] != 0:
            raise RuntimeError(f"export of {k} tasks failed: {r['stderr_tail']}")
        exports.append({"tasks": k, **r})
    result.raw = {
        "model": key,
        "rows": rows,
        "exports": exports,
        "budget": s.scale_budget,
        "clients": s.scale_clients,
        "seconds": s.scale_seconds,
    }
    _tables(result, rows, exports, key, s)
    return result


def _tables(result: SectionResult, rows: list[dict[str, Any]], exports: list[dict[str, Any]], key: str, s: Any) -> None:
    t = Table(
        f"{key}: per N tasks in one deployment (1 exported + N-1 synthetic; add-task adds task N+1, "
        "which the open and server measurements then include)",
        [
            "N",
            "add-task s",
            "add-task peak RSS MiB",
            "open s",
            "RSS after open MiB",
            "tasks() ms",
            "page of 100 ms",
            "disk KiB / task",
            "cold first request +ms (in process)",
            "prefetch ms",
            "synthetic write ms / task",
        ],
    )
    for r in rows:
        o = r["open"]
        add = r["add_task"]
        t.rows.append(
            [
                r["n"],
                f"{add['wall_s']:.1f}" if add else "not run",
                mib(add["peak_rss_bytes"]) if add else "n/a",
                f"{o['open_s']:.3f}",
                mib(o["rss_open_bytes"]),
                f"{o['list_s'] * 1e3:.1f}",
                f"{o['page_s'] * 1e3:.2f}",
                f"{r['disk']['bytes_per_task'] / 1024:.0f}",
                f"{_extra_ms(o['cold_first_s'], o['warm_s']):.2f}",
                f"{statistics.median(o['prefetch_s']) * 1e3:.2f}" if o["prefetch_s"] else "n/a",
                "cached" if r["synthetic_s_per_task"] is None else f"{r['synthetic_s_per_task'] * 1e3:.1f}",
            ]
        )
    result.tables.append(t)
    srv = Table(
        f"{key}: server, budget {s.scale_budget} loaded tasks, {s.scale_clients} clients: a fill pass over "
        f"min(N, {s.scale_budget + s.scale_budget // 2}) distinct tasks, then one text of a random task per request "
        f"for {s.scale_seconds:g} s; RSS over both",
        [
            "N",
            "fill: distinct tasks (req/s)",
            "loaded after fill",
            "rows/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "task loads / request",
            "loaded at end",
            "evictions",
            "RSS ready MiB",
            "RSS peak MiB",
            "RSS end MiB",
            "cold first request +ms (HTTP, idle)",
        ],
    )
    for r in rows:
        v = r["server"]
        fill = v.get("fill") or {}
        srv.rows.append(
            [
                r["n"],
                f"{fill.get('requests', 0)} ({fill.get('per_s', 0):.1f}, {fill.get('errors', 0)} errors)",
                f"{fill.get('loaded_after', 0):.0f}",
                f"{v['rows_per_s']:.1f}",
                f"{(v['p50_s'] or 0) * 1e3:.1f}",
                f"{(v['p99_s'] or 0) * 1e3:.1f}",
                v["errors"],
                "n/a" if v["loads_per_request"] is None else f"{v['loads_per_request']:.2f}",
                f"{v.get('loaded_end', 0):.0f}",
                f"{v.get('evictions', 0):.0f}",
                mib(v["rss_ready_bytes"]),
                mib(v["rss_peak_bytes"]),
                mib(v["rss_last_bytes"]),
                f"{_extra_ms(v['cold_first_s'], v['warm_s']):.2f}",
            ]
        )
    result.tables.append(srv)
    if exports:
        result.tables.append(
            Table(
                f"{key}: export (real checkpoints, fp32)",
                ["tasks", "s", "s / task", "peak RSS MiB"],
                [
                    [e["tasks"], f"{e['wall_s']:.1f}", f"{e['wall_s'] / e['tasks']:.1f}", mib(e["peak_rss_bytes"])]
                    for e in exports
                ],
            )
        )
    ns = [r["n"] for r in rows]
    common = {"kind": "line", "x": ns, "xlabel": "N tasks in the deployment", "logx": True, "log_base": 10}
    result.plots.append(
        {
            **common,
            "file": f"scale-time-{key}.png",
            "title": f"{key}: time vs N",
            "logy": True,
            "ylabel": "seconds",
            "series": {
                "add-task of one task": [r["add_task"] and r["add_task"]["wall_s"] for r in rows],
                "Deployment.open": [r["open"]["open_s"] for r in rows],
                "tasks() listing": [r["open"]["list_s"] for r in rows],
            },
        }
    )
    result.plots.append(
        {
            **common,
            "file": f"scale-rss-{key}.png",
            "title": f"{key}: RSS vs N (server budget {s.scale_budget} loaded tasks)",
            "ylabel": "MiB",
            "series": {
                "after Deployment.open": [mib(r["open"]["rss_open_bytes"]) for r in rows],
                "server peak under load": [mib(r["server"]["rss_peak_bytes"]) for r in rows],
                "add-task peak": [r["add_task"] and mib(r["add_task"]["peak_rss_bytes"]) for r in rows],
            },
        }
    )
    result.plots.append(
        {
            **common,
            "file": f"scale-server-{key}.png",
            "title": f"{key}: server throughput vs N ({s.scale_clients} clients, budget {s.scale_budget})",
            "ylabel": "rows/s",
            "series": {"server": [r["server"]["rows_per_s"] for r in rows]},
        }
    )
    result.plots.append(
        {
            **common,
            "file": f"scale-cold-{key}.png",
            "title": f"{key}: extra latency of a cold task's first request (dashed: the 5 ms goal)",
            "ylabel": "ms",
            "hline": 5.0,
            "series": {
                "in process (first - second predict)": [
                    _extra_ms(r["open"]["cold_first_s"], r["open"]["warm_s"]) for r in rows
                ],
                "HTTP, idle server": [_extra_ms(r["server"]["cold_first_s"], r["server"]["warm_s"]) for r in rows],
            },
        }
    )
    result.notes.append(
        "Synthetic tasks: the exported template's head with random adapter rows of the real shapes, written by "
        "the exporter's task writer (benchmarks/synthetic.py); they load through the runtime's ordinary path."
    )
    result.notes.append(
        "Export is measured at a few N only: exporting thousands of real checkpoints in one call is the "
        "streaming export's job (issue 16 item 1); add-task into the N-task deployment is measured at every N."
    )
