"""Closed-loop load generator for a running ``adapterdeploy serve``: N clients, M requests over random tasks.

    python deploy/loadtest.py http://127.0.0.1:8080 --clients 64 --requests 3000 --rows 1-3

Each client sends its next ``/v1/predict`` as soon as the previous one answered (closed loop), with
1-3 random sentences and a random task among the deployment's single-text tasks. Prints client-side
throughput and latency percentiles, and the server's own batch statistics read from ``/metrics``
(rows per forward, forwards mixing tasks). Needs ``aiohttp`` (the ``bench``/``dev`` extras). Only point
it at servers you run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import time
import urllib.request
from collections import Counter

WORDS = (
    "the a good bad movie film story plot actor acting market stock price shares people world day year new "
    "best worst great terrible fun boring love hate company percent"
).split()


def metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("adapterdeploy_batch") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def single_text_tasks(url: str) -> list[str]:
    spec = json.load(urllib.request.urlopen(f"{url}/openapi.json", timeout=10))
    names = spec["components"]["schemas"]["PredictRequest"]["properties"]["task"].get("enum", [])
    singles = []
    for name in names:
        meta = json.load(urllib.request.urlopen(f"{url}/v2/models/{name}", timeout=10))
        if len(meta["inputs"]) == 1:
            singles.append(name)
    return singles


async def run(url: str, clients: int, requests: int, rows: tuple[int, int], tasks: list[str]) -> dict:
    import aiohttp

    issued = itertools.count()
    latencies: list[float] = []
    statuses: Counter = Counter()
    sent_rows = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:

        async def client(k: int) -> None:
            nonlocal sent_rows
            rng = random.Random(k)
            while next(issued) < requests:
                n = rng.randint(*rows)
                body = {
                    "task": rng.choice(tasks),
                    "inputs": [" ".join(rng.choices(WORDS, k=rng.randint(4, 20))) for _ in range(n)],
                }
                t0 = time.perf_counter()
                async with http.post("/v1/predict", json=body) as r:
                    await r.read()
                    statuses[r.status] += 1
                latencies.append(time.perf_counter() - t0)
                sent_rows += n

        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.perf_counter() - t0
    return {"elapsed": elapsed, "latencies": latencies, "statuses": statuses, "rows": sent_rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rows", default="1-3", help="rows per request, MIN-MAX")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks (default: every single-text task)")
    args = ap.parse_args()
    url = args.url.rstrip("/")
    lo, _, hi = args.rows.partition("-")
    tasks = args.tasks.split(",") if args.tasks else single_text_tasks(url)
    before = metrics(url)
    out = asyncio.run(run(url, args.clients, args.requests, (int(lo), int(hi or lo)), tasks))
    after = metrics(url)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    lat = sorted(out["latencies"])
    pct = {p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000 for p in (50, 90, 99)}
    forwards = delta("adapterdeploy_batch_rows_count")
    single = delta('adapterdeploy_batch_tasks_bucket{le="1.0"}')
    print(
        f"{args.requests} requests, {out['rows']} rows, {args.clients} clients, {len(tasks)} tasks: "
        f"{out['elapsed']:.2f} s"
    )
    print(
        f"throughput: {args.requests / out['elapsed']:.0f} req/s, {out['rows'] / out['elapsed']:.0f} rows/s; "
        f"statuses {dict(out['statuses'])}"
    )
    mean = statistics.mean(lat) * 1000
    print(f"latency ms: p50 {pct[50]:.1f}, p90 {pct[90]:.1f}, p99 {pct[99]:.1f}, mean {mean:.1f}")
    if forwards:
        print(
            f"server: {forwards:.0f} forwards, {delta('adapterdeploy_batch_rows_sum') / forwards:.1f} rows/forward, "
            f"{forwards - single:.0f} forwards mixed >1 task, forward time "
            f"{delta('adapterdeploy_batch_duration_seconds_sum'):.2f} s"
        )


if __name__ == "__main__":
    main()
