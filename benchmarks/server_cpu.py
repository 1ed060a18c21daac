"""``python -m benchmarks.server_cpu DEPLOY_DIR OLD_SRC [--rounds 3 --requests 300 --clients 2]``.

Server-side CPU per request of two servers on the same deployment, interleaved A B A B: A runs the code in
OLD_SRC (e.g. a checkout of the commit before "tokenize once"), B the code of this checkout. Each round
starts the server, warms it up, sends the same fixed set of requests at a small load (a few concurrent
clients, closed loop) and reads the server process's CPU time (user + system, /proc/PID/stat) before and
after. Prints one JSON line per round and a summary with the median CPU ms per request of each side and
their ratio, plus the load average (the machine is shared: compare ratios from one interleaved run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main"]

WORDS = (
    "the a good bad movie film story plot actor market stock price people world day year new best worst "
    "really quite never always performance music director"
).split()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _bodies(task: str, n: int, rows: int, words: int) -> list[dict]:
    rng = random.Random(0)
    return [
        {"task": task, "inputs": [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(rows)]}
        for _ in range(n)
    ]


async def _drive(url: str, bodies: list[dict], clients: int) -> int:
    import httpx

    queue = list(bodies)
    ok = 0
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def client() -> None:
            nonlocal ok
            while queue:
                r = await http.post("/v1/predict", json=queue.pop())
                ok += r.status_code == 200

        await asyncio.gather(*(client() for _ in range(clients)))
    return ok


def _round(src: str, deploy: str, bodies: list[dict], clients: int, port: int) -> dict:
    import httpx

    env = {**os.environ, "PYTHONPATH": src}
    cmd = [sys.executable, "-m", "adapterdeploy.cli", "serve", deploy, "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=src, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"server from {src} did not become ready")
            time.sleep(0.2)
        asyncio.run(_drive(url, bodies[:20], clients))  # warm-up (task load, first sessions runs)
        cpu0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
        ok = asyncio.run(_drive(url, bodies, clients))
        cpu, wall = _cpu_seconds(proc.pid) - cpu0, time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(60)
    return {
        "src": src,
        "requests": len(bodies),
        "ok": ok,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "cpu_ms_per_request": round(1000 * cpu / len(bodies), 3),
        "loadavg": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("deploy_dir")
    p.add_argument("old_src", help="source tree of the baseline (A)")
    p.add_argument("--new-src", default=str(Path(__file__).resolve().parent.parent), help="this checkout (B)")
    p.add_argument("--task", default=None, help="task to call (default: the deployment's first)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--rows", type=int, default=8, help="texts per request")
    p.add_argument("--words", type=int, default=30, help="words per text")
    p.add_argument("--clients", type=int, default=2, help="concurrent clients (a small load)")
    p.add_argument("--port", type=int, default=18090)
    args = p.parse_args(argv)
    task = args.task or sorted(json.loads((Path(args.deploy_dir) / "deployment.json").read_text())["tasks"])[0]
    bodies = _bodies(task, args.requests, args.rows, args.words)
    per: dict[str, list[float]] = {"A": [], "B": []}
    for i in range(args.rounds):
        for side, src in (("A", args.old_src), ("B", args.new_src)):
            out = _round(src, args.deploy_dir, bodies, args.clients, args.port + 2 * i + (side == "B"))
            per[side].append(out["cpu_ms_per_request"])
            print(json.dumps({"round": i, "side": side, **out}), flush=True)
    a, b = statistics.median(per["A"]), statistics.median(per["B"])
    print(
        json.dumps(
            {
                "median_cpu_ms_per_request": {"A_old": a, "B_new": b},
                "B_over_A": round(b / a, 3),
                "loadavg_1_5_15": os.getloadavg(),
            }
        )
    )


if __name__ == "__main__":
    main()
