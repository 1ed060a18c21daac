"""Seconds from ``adapterdeploy serve`` start to the first 200 of /v2/health/ready, old vs new code, A B A B.

Run as ``python startup_probe.py``: ``/tmp/s16/before2`` and ``/tmp/s16/after2`` were ``git archive`` copies
of main 292b652 and s16 6a7ef09, the deployments the scale section's N = 10 and 10,000 deployments.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready_s(code, dep):
    p = port()
    env = {**os.environ, "PYTHONPATH": f"/tmp/s16/{code}", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "adapterdeploy.cli", "serve", dep, "--port", str(p), "--max-loaded-tasks", "1000"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{p}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("server exited") from None
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


for rnd in range(2):
    for n in (10, 10000):
        for code in ("before2", "after2"):
            s = ready_s(code, f"/tmp/s16/scale-work/minilm/scale/n{n}")
            print(
                json.dumps({"round": rnd, "n": n, "code": code, "ready_s": round(s, 2), "load1": os.getloadavg()[0]}),
                flush=True,
            )
