"""Subprocess probes of the scale section (a fresh process each, so RSS belongs to the measured thing alone).

``python -m benchmarks.scale_probe open DEPLOY BUDGET COLD`` opens the deployment with a loaded-task budget
and prints one JSON line: RSS before / after ``Deployment.open``, the open time, the time of the full
listing and of one page, and the cold-task cost: for COLD tasks, the first predict of the task (which
reads it) minus its second predict, and the time of an explicit ``prefetch`` (what the server's load
thread does) of COLD other tasks.

``python -m benchmarks.scale_probe peak CMD ...`` runs CMD and prints its wall time and peak RSS
(``ru_maxrss`` of this wrapper's only child: the command's own high-water mark).
"""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import time
from typing import Any

import psutil

__all__ = ["main", "open_probe", "peak_probe"]

TEXT = "a gripping, funny and well acted film"


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def open_probe(deploy: str, budget: int, cold: int) -> dict[str, Any]:
    rss_start = _rss()
    t0 = time.perf_counter()
    from adapterdeploy.runtime import Deployment

    t_import = time.perf_counter() - t0
    rss_import = _rss()
    t0 = time.perf_counter()
    dep = Deployment.open(deploy, max_loaded_tasks=budget)
    open_s = time.perf_counter() - t0
    rss_open = _rss()
    t0 = time.perf_counter()
    listing = dep.tasks()
    list_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dep.tasks(offset=len(listing) // 2, limit=100)
    page_s = time.perf_counter() - t0
    names = [i.name for i in listing]
    picks = random.Random(0).sample(names, min(len(names), 2 * cold))
    first_task = picks[0]
    dep.predict([TEXT], task=first_task)  # warm the sessions once (first-run allocations are not a task cost)
    dep.unload_task(first_task)
    first, second = [], []
    for name in picks[:cold]:
        t0 = time.perf_counter()
        dep.predict([TEXT], task=name)
        first.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        dep.predict([TEXT], task=name)
        second.append(time.perf_counter() - t0)
    prefetch = []
    for name in picks[cold:]:
        if dep.is_loaded(name):
            continue
        t0 = time.perf_counter()
        dep.prefetch(name)
        prefetch.append(time.perf_counter() - t0)
    out = {
        "tasks": len(names),
        "budget": budget,
        "rss_start_bytes": rss_start,
        "import_s": t_import,
        "rss_import_bytes": rss_import,
        "open_s": open_s,
        "rss_open_bytes": rss_open,
        "list_s": list_s,
        "page_s": page_s,
        "cold_first_s": first,
        "warm_s": second,
        "prefetch_s": prefetch,
        "rss_end_bytes": _rss(),
        "loaded": dep.loaded_task_count,
    }
    dep.close()
    return out


def peak_probe(cmd: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    return {
        "wall_s": wall,
        "peak_rss_bytes": int(peak_kib) * 1024,
        "returncode": proc.returncode,
        "stderr_tail": proc.stderr[-1500:] if proc.returncode else "",
    }


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "open":
        result = open_probe(args[0], int(args[1]), int(args[2]))
    elif mode == "peak":
        result = peak_probe(args)
    else:
        raise SystemExit(f"unknown mode {mode!r}: use open or peak")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
