"""``python -m benchmarks.ray_affinity DEPLOY OUT_DIR``: task affinity across Ray Serve replicas, measured.

Starts ``adapterdeploy serve DEPLOY --ray`` three times: 1 replica (2 threads), 2 replicas (1 thread each)
with requests carrying no routing header (Ray spreads them over both), and 2 replicas with every request
carrying ``serve_multiplexed_model_id: <task>`` (Ray routes a task to a replica that has it loaded). Each
replica has the same ``--max-loaded-tasks`` budget. The workload: CLIENTS closed-loop clients, one text of
a uniformly random task per request (benchmarks/loadgen.py). Hit rate = answers whose
``x-adapterdeploy-cold-tasks`` header is 0 (the task was already loaded on the replica that answered).
Writes ``ray-affinity.json`` and ``ray-affinity.md`` into OUT_DIR, with the load average before and after.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import click

from benchmarks.harness import run_load_generator
from benchmarks.report import machine_info
from benchmarks.sections.server import _free_port, _start_server
from benchmarks.workloads import load_texts, task_stream

__all__ = ["main"]

CONFIGS = (
    ("1 replica", 1, False),
    ("2 replicas, no routing header", 2, False),
    ("2 replicas, routed by task (serve.multiplexed)", 2, True),
)


def _loadgen(url: str, bodies: Path, clients: int, seconds: float, warmup: float, route: bool) -> dict[str, Any]:
    args = [
        "benchmarks.loadgen",
        url,
        str(bodies),
        str(clients),
        str(seconds),
        str(warmup),
        *(["route"] if route else []),
    ]
    return run_load_generator(args, timeout=seconds + warmup + 300)


@click.command()
@click.argument("deploy", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--budget", type=int, default=300, help="--max-loaded-tasks of each replica.")
@click.option("--clients", type=int, default=16)
@click.option("--seconds", type=float, default=30.0)
@click.option("--warmup", type=float, default=20.0, help="Seconds before counting (tasks get spread, Ray learns).")
@click.option(
    "--setups",
    default="0,1,2",
    help="Which of the three setups to run (0: 1 replica, 1: 2 replicas "
    "without the routing header, 2: 2 replicas routed by task).",
)
def main(deploy: Path, out: Path, budget: int, clients: int, seconds: float, warmup: float, setups: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(json.loads((deploy / "deployment.json").read_text())["tasks"])
    bodies = out / "ray-affinity-requests.json"
    bodies.write_text(json.dumps([{"task": t, "inputs": [x]} for t, x in task_stream(load_texts(), names, 20000, 3)]))
    rows = []
    chosen = [CONFIGS[int(i)] for i in setups.split(",")]
    for label, replicas, route in chosen:
        port = _free_port()
        load_before = os.getloadavg()
        proc = _start_server(
            deploy,
            [],
            port,
            2 // replicas,
            True,
            out / f"ray-{replicas}-{route}.log",
            extra_args=(
                "--ray",
                "--replicas",
                str(replicas),
                "--max-loaded-tasks",
                str(budget),
                "--log-level",
                "warning",
            ),
            ready_timeout_s=300,
        )
        try:
            time.sleep(5.0)  # every replica up (readiness answers as soon as one is)
            r = _loadgen(f"http://127.0.0.1:{port}/v1/predict", bodies, clients, seconds, warmup, route)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        hit = 1 - r["cold"] / r["requests"] if r["requests"] else None
        rows.append(
            {
                "config": label,
                "replicas": replicas,
                "routed": route,
                **r,
                "hit_rate": hit,
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
            }
        )
        print(f"[ray-affinity] {label}: {r['rows_per_s']:.1f} rows/s, hit rate {hit}", flush=True)
    info = machine_info()
    (out / f"ray-affinity-{setups.replace(',', '')}.json").write_text(
        json.dumps(
            {
                "machine": info,
                "tasks": len(names),
                "budget": budget,
                "clients": clients,
                "seconds": seconds,
                "rows": rows,
            },
            indent=2,
        )
    )
    lines = [
        f"# Ray Serve task affinity: {len(names)} tasks, budget {budget} per replica, {clients} clients, "
        f"{seconds:g} s after {warmup:g} s warm-up",
        "",
        f"Machine: {info.get('cpu_model')}, {info.get('logical_cores')} cores, {info.get('date')}; shared "
        "with other jobs (load averages below). Command: `python -m benchmarks.ray_affinity "
        f"{deploy} {out} --budget {budget} --clients {clients} --seconds {seconds:g} --warmup {warmup:g} "
        f"--setups {setups}`",
        "",
        "| setup | rows/s | x 1 replica | hit rate | p50 ms | p99 ms | errors | load avg before -> after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    one = rows[0]["rows_per_s"] if chosen[0] is CONFIGS[0] and rows[0]["rows_per_s"] else None
    for r in rows:
        hit = "n/a" if r["hit_rate"] is None else f"{r['hit_rate']:.2f}"
        ratio = "n/a" if one is None else f"{r['rows_per_s'] / one:.2f}"
        lines.append(
            f"| {r['config']} | {r['rows_per_s']:.1f} | {ratio} | {hit} | "
            f"{(r['p50_s'] or 0) * 1e3:.0f} | {(r['p99_s'] or 0) * 1e3:.0f} | {r['errors']} | "
            f"{r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f} |"
        )
    (out / f"ray-affinity-{setups.replace(',', '')}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
