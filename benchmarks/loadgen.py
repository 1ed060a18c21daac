"""``python -m benchmarks.loadgen URL REQUESTS_JSON CLIENTS SECONDS WARMUP [route]``: closed-loop HTTP load.

Each of CLIENTS coroutines sends one request (the next of REQUESTS_JSON, round robin: ``{"task", "inputs"}``
bodies for ``POST /v1/predict``), waits for the answer, and sends the next at once (closed loop: the
offered load adapts to the server's speed). Requests answered during the first WARMUP seconds are not
counted. Prints one JSON line: requests, rows, errors, seconds, throughput, latency p50/p95/p99, and
``cold``: answers whose ``x-adapterdeploy-cold-tasks`` header was not 0 (the task was read on the replica
that answered). With ``route`` each request carries Ray Serve's routing header
``serve_multiplexed_model_id: <task>`` (task affinity across replicas).

It runs in its own process (aiohttp, one event loop) so that its CPU use is visible as its own; on a
2-core machine it still competes with the server for the cores, which the report says.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from typing import Any

__all__ = ["main", "run_load"]


async def run_load(
    url: str, bodies: list[dict[str, Any]], clients: int, seconds: float, warmup: float, route: bool = False
) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    rows = 0
    errors = 0
    cold = 0
    counter = itertools.count()
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup, t_start + warmup + seconds
    payloads = [json.dumps(b).encode() for b in bodies]
    headers = [
        {"content-type": "application/json", **({"serve_multiplexed_model_id": b["task"]} if route else {})}
        for b in bodies
    ]

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal rows, errors, cold
        while True:
            i = next(counter)
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            try:
                async with session.post(
                    url, data=payloads[i % len(payloads)], headers=headers[i % len(headers)]
                ) as resp:
                    await resp.read()
                    ok = resp.status == 200
                    was_cold = resp.headers.get("x-adapterdeploy-cold-tasks", "0") != "0"
            except aiohttp.ClientError:
                ok = False
            t1 = time.perf_counter()
            if t0 >= t_measure and t1 <= t_end:
                if ok:
                    latencies.append(t1 - t0)
                    cold += was_cold
                    rows += len(bodies[i % len(bodies)]["inputs"])
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    lat = sorted(latencies)

    def q(x: float) -> float | None:
        return lat[min(len(lat) - 1, round(x * (len(lat) - 1)))] if lat else None

    return {
        "clients": clients,
        "requests": len(lat),
        "rows": rows,
        "errors": errors,
        "cold": cold,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "p50_s": q(0.50),
        "p95_s": q(0.95),
        "p99_s": q(0.99),
    }


def main() -> None:
    url, path, clients, seconds, warmup = sys.argv[1:6]
    with open(path) as f:
        bodies = json.load(f)
    route = sys.argv[6:7] == ["route"]
    result = asyncio.run(run_load(url, bodies, int(clients), float(seconds), float(warmup), route))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
