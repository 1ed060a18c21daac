"""``python -m benchmarks.grpc_vs_rest``: Open Inference Protocol throughput, gRPC vs REST, one server.

One ``adapterdeploy serve DEPLOYMENT --grpc-port N`` process (one worker, ``--threads``) answers both
protocols; a closed-loop load generator in its own process sends one SST-2 sentence per request to task
``t0000`` of the benchmarks' main deployment: REST ``POST /v2/models/t0000/infer`` (JSON tensors, aiohttp,
one keep-alive connection per client) or gRPC ``ModelInfer`` (``bytes_contents``, grpc.aio, one channel
shared by the clients, as a gRPC application usually holds one). Every round measures each client count
with both protocols back to back, alternating which goes first (A B B A ...), so both halves of a ratio see
the same machine state; the reported ratio is the median of the per-round gRPC/REST ratios. The load
generator shares the cores with the server, and other processes' load shows in every absolute number:
the output records the machine, the date and the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["main"]

TASK = "t0000"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------ load side
async def _closed_loop(send: Any, texts: list[str], clients: int, seconds: float, warmup: float) -> dict[str, Any]:
    """``clients`` coroutines each send, await, and send again; count the answers completed in the window.

    Counting by completion time (not "started and finished inside") keeps slow answers: at 64 clients on
    2 busy cores one answer can take seconds, longer than a short window would allow.
    """
    latencies: list[float] = []
    errors = 0
    counter = itertools.count()
    t_measure = time.perf_counter() + warmup
    t_end = t_measure + seconds

    async def client() -> None:
        nonlocal errors
        while True:
            i = next(counter)
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            ok = await send(texts[i % len(texts)])
            t1 = time.perf_counter()
            if t_measure <= t1 <= t_end:  # answers completed inside the window (latency may exceed it)
                if ok:
                    latencies.append(t1 - t0)
                else:
                    errors += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    lat = sorted(latencies)

    def q(x: float) -> float | None:
        return lat[min(len(lat) - 1, round(x * (len(lat) - 1)))] if lat else None

    return {
        "clients": clients,
        "requests": len(lat),
        "errors": errors,
        "seconds": seconds,
        "requests_per_s": len(lat) / seconds,
        "p50_s": q(0.5),
        "p99_s": q(0.99),
    }


async def _rest(base: str, texts: list[str], clients: int, seconds: float, warmup: float) -> dict[str, Any]:
    import aiohttp

    url = f"{base}/v2/models/{TASK}/infer"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def send(text: str) -> bool:
            body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
            try:
                async with session.post(url, json=body) as resp:
                    await resp.read()
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        return await _closed_loop(send, texts, clients, seconds, warmup)


async def _grpc(target: str, texts: list[str], clients: int, seconds: float, warmup: float) -> dict[str, Any]:
    import grpc

    from adapterdeploy.serving.grpc_v2 import messages, method_path

    pb = messages()
    async with grpc.aio.insecure_channel(target) as channel:
        infer = channel.unary_unary(
            method_path("ModelInfer"),
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )

        async def send(text: str) -> bool:
            tensor = pb.ModelInferRequest.InferInputTensor(
                name="text",
                datatype="BYTES",
                shape=[1],
                contents=pb.InferTensorContents(bytes_contents=[text.encode()]),
            )
            try:
                await infer(pb.ModelInferRequest(model_name=TASK, inputs=[tensor]))
            except grpc.RpcError:
                return False
            return True

        return await _closed_loop(send, texts, clients, seconds, warmup)


def _load_main(argv: list[str]) -> None:
    proto, target, texts_file, clients, seconds, warmup = argv
    texts = json.loads(Path(texts_file).read_text())
    run = _rest if proto == "rest" else _grpc
    print(json.dumps(asyncio.run(run(target, texts, int(clients), float(seconds), float(warmup)))), flush=True)


# ---------------------------------------------------------------------------------------- driver side
def _start_server(dep: Path, port: int, grpc_port: int, threads: int, log: Path) -> subprocess.Popen:
    from benchmarks.harness import REPO_ROOT, thread_env

    args = [
        sys.executable,
        "-m",
        "adapterdeploy.cli",
        "serve",
        str(dep),
        "--port",
        str(port),
        "--grpc-port",
        str(grpc_port),
        "--threads",
        str(threads),
        "--max-queue",
        "4096",
        "--log-level",
        "warning",
    ]
    with open(log, "w") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT), env=thread_env(threads))
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            if time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"server not ready after 180 s: {log.read_text()[-2000:]}") from None
            time.sleep(0.2)


def _load(proto: str, target: str, texts_file: Path, clients: int, seconds: float, warmup: float) -> dict[str, Any]:
    from benchmarks.harness import run_load_generator

    args = [
        "benchmarks.grpc_vs_rest",
        "--load",
        proto,
        target,
        str(texts_file),
        str(clients),
        str(seconds),
        str(warmup),
    ]
    return run_load_generator(args, timeout=seconds + warmup + 120)


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def run(
    model: str, work: Path, clients: list[int], seconds: float, warmup: float, rounds: int, threads: int, out: Path
) -> dict[str, Any]:
    from benchmarks.prepare import main_deployment, prepare_model
    from benchmarks.workloads import load_texts

    p = prepare_model(model, work)
    dep = main_deployment(p, standalone=False)
    out.mkdir(parents=True, exist_ok=True)
    texts_file = out / "grpc-vs-rest-texts.json"
    texts_file.write_text(json.dumps(list(load_texts().singles[:1024])))
    port, grpc_port = _free_port(), _free_port()
    result: dict[str, Any] = {
        "machine": _machine(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average_before": os.getloadavg(),
        "model": model,
        "deployment": str(dep),
        "threads": threads,
        "seconds": seconds,
        "warmup": warmup,
        "rounds": [],
    }
    proc = _start_server(dep, port, grpc_port, threads, out / "grpc-vs-rest-server.log")
    targets = {"rest": f"http://127.0.0.1:{port}", "grpc": f"127.0.0.1:{grpc_port}"}
    try:
        for proto in ("rest", "grpc"):  # warm both paths (task load, first batches)
            _load(proto, targets[proto], texts_file, 4, 1.0, 0.5)
        for r in range(rounds):
            order = ("rest", "grpc") if r % 2 == 0 else ("grpc", "rest")
            for c in clients:
                row = {"round": r, "clients": c}
                for proto in order:
                    row[proto] = _load(proto, targets[proto], texts_file, c, seconds, warmup)
                row["ratio"] = row["grpc"]["requests_per_s"] / max(row["rest"]["requests_per_s"], 1e-9)
                result["rounds"].append(row)
                print(
                    f"round {r} clients {c}: rest {row['rest']['requests_per_s']:.1f}/s "
                    f"grpc {row['grpc']['requests_per_s']:.1f}/s ratio {row['ratio']:.2f}",
                    flush=True,
                )
    finally:
        proc.terminate()
        proc.wait(60)
    result["load_average_after"] = os.getloadavg()
    summary = {}
    for c in clients:
        rows = [x for x in result["rounds"] if x["clients"] == c]
        summary[str(c)] = {
            "rest_requests_per_s_median": statistics.median(x["rest"]["requests_per_s"] for x in rows),
            "grpc_requests_per_s_median": statistics.median(x["grpc"]["requests_per_s"] for x in rows),
            "grpc_over_rest_median_ratio": statistics.median(x["ratio"] for x in rows),
            "rest_p50_ms_median": 1000 * statistics.median(x["rest"]["p50_s"] or 0 for x in rows),
            "grpc_p50_ms_median": 1000 * statistics.median(x["grpc"]["p50_s"] or 0 for x in rows),
            "errors": sum(x["rest"]["errors"] + x["grpc"]["errors"] for x in rows),
        }
    result["summary"] = summary
    path = out / f"grpc-vs-rest-{model}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                "summary": summary,
                "load_average_before": result["load_average_before"],
                "load_average_after": result["load_average_after"],
                "written": str(path),
            },
            indent=2,
        )
    )
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--load"]:
        _load_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpc_vs_rest", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm", choices=("tiny", "minilm", "bertbase"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.work"))
    parser.add_argument("--clients", default="16,64", help="Comma-separated client counts.")
    parser.add_argument("--seconds", type=float, default=8.0, help="Measured seconds per protocol and client count.")
    parser.add_argument("--warmup", type=float, default=4.0, help="Seconds before the window (> one latency).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads of the server.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grpc-vs-rest"))
    a = parser.parse_args(argv)
    run(a.model, a.work, [int(c) for c in a.clients.split(",")], a.seconds, a.warmup, a.rounds, a.threads, a.out)


if __name__ == "__main__":
    main()
