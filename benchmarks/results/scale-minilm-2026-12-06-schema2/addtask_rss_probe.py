"""RSS between add-task's stages (diagnostic for docs/performance.md section 10; not part of the benchmark).

    PYTHONPATH=CODE python addtask_rss_probe.py DEPLOYMENT CHECKPOINTS_DIR N [trim]

Copies DEPLOYMENT, adds the first N checkpoints of CHECKPOINTS_DIR in process and prints RSS and its high-water
mark (VmHWM) after each stage (after gc.collect; with ``trim``, RSS again after glibc's malloc_trim(0)).
"""

from __future__ import annotations

import ctypes
import gc
import os
import shutil
import sys
import time
from pathlib import Path

from adapterdeploy.exporter import deployment, updates, variants


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def _mark(what: str, trim: bool) -> None:
    gc.collect()
    rss = _status("VmRSS")
    if trim:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(f"{what:32s} rss {rss:8.1f}  trimmed {_status('VmRSS'):8.1f}  hwm {_status('VmHWM'):8.1f}", flush=True)


def _after(owner: type, name: str, label: object, trim: bool) -> None:
    original = getattr(owner, name)

    def probed(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        _mark(label(args) if callable(label) else str(label), trim)
        return out

    setattr(owner, name, probed)


def main() -> None:
    src, ckpt_dir, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    trim = sys.argv[4:] == ["trim"]
    _after(deployment._Build, "__init__", "after building the featurizer", trim)
    _after(deployment._Build, "export_heads", "after export_heads", trim)
    _after(variants.ParityInputs, "run", lambda a: f"after parity {Path(a[0]).name}", trim)
    _after(deployment._Build, "write_tasks", "after write_tasks", trim)
    dep = Path(f"/tmp/addtask-probe-{os.getpid()}")
    shutil.copytree(src, dep)
    try:
        start = time.time()
        _mark("start", trim)
        updates.add_tasks(dep, sorted(ckpt_dir.iterdir())[:n])
        _mark(f"done N={n} {time.time() - start:.1f}s", trim)
    finally:
        shutil.rmtree(dep, ignore_errors=True)


if __name__ == "__main__":
    main()
