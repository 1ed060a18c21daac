"""Timing harness: one worker process per system, interleaved blocks, medians, and a load monitor.

Why a process per system: memory (RSS) must belong to one system only, torch and onnxruntime thread
pools must not spin against each other inside one process, and a fresh process is what a user starts.
Why interleaving (A B C, B C A, ...): on a shared machine the background load drifts over minutes; if
system A ran entirely before system B, the drift would show up as a difference between A and B. With
short alternating blocks every system sees the same load, and the spread of the per-round medians says
how noisy the run was.

Semantics of the reported numbers:

    call time   t_i   = perf_counter() after one call - before it (inside the worker; no IPC in it)
    median            = median over every timed call of every round (warm-up calls excluded)
    round median      = median of one block; ``spread`` = (max - min) / median over the round medians
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "PROTOCOL_PREFIX",
    "LoadMonitor",
    "LoadReport",
    "Stats",
    "Worker",
    "WorkerError",
    "interleave",
    "start_workers",
    "summarize",
    "thread_env",
]

PROTOCOL_PREFIX = "@@bench "
REPO_ROOT = Path(__file__).resolve().parent.parent


class WorkerError(RuntimeError):
    """A benchmark worker failed; the message carries the tail of its log."""


@dataclass(frozen=True)
class Stats:
    """Order statistics of a list of seconds (all fields in seconds except ``n`` and ``spread``)."""

    n: int
    median: float
    mean: float
    p10: float
    p90: float
    p95: float
    p99: float
    min: float
    max: float
    spread: float = 0.0  # relative spread of the per-round medians (0 when there is one round)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default) of an already sorted list."""
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarize(samples: Sequence[float], round_medians: Sequence[float] = ()) -> Stats:
    """Stats of ``samples``; ``round_medians`` (one per interleaved block) gives the spread."""
    if not samples:
        raise ValueError("no samples to summarize")
    xs = sorted(samples)
    med = statistics.median(xs)
    spread = 0.0
    if len(round_medians) > 1 and med > 0:
        spread = (max(round_medians) - min(round_medians)) / med
    return Stats(
        n=len(xs),
        median=med,
        mean=statistics.fmean(xs),
        p10=_quantile(xs, 0.10),
        p90=_quantile(xs, 0.90),
        p95=_quantile(xs, 0.95),
        p99=_quantile(xs, 0.99),
        min=xs[0],
        max=xs[-1],
        spread=spread,
    )


def thread_env(threads: int) -> dict[str, str]:
    """Environment that fixes every thread pool we know of to ``threads`` (set before the imports)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["BENCH_THREADS"] = str(threads)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_load_generator(module_args: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run ``python -m MODULE ARGS`` (a closed-loop load generator) in its own single-threaded process, so
    that it does not share the measured server's interpreter; return the JSON object of its last line."""
    out = subprocess.run(
        [sys.executable, "-m", *module_args],
        capture_output=True,
        text=True,
        cwd=str(REPO_ROOT),
        env=thread_env(1),
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator {module_args[0]} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- load


@dataclass(frozen=True)
class LoadReport:
    """How busy the machine was with work that is NOT this benchmark, during one measured stretch.

    ``others_cores``: CPU-seconds per second spent by every other process (system busy time minus the
    CPU time of this benchmark's process tree), i.e. cores' worth of foreign load. 0 = quiet machine.
    """

    wall_s: float
    cpu_count: int
    others_cores_mean: float
    others_cores_max: float
    loadavg_start: tuple[float, float, float]
    loadavg_end: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"other processes used {self.others_cores_mean:.2f} of {self.cpu_count} cores on average "
            f"(max {self.others_cores_max:.2f}); load average {self.loadavg_start[0]:.2f} -> {self.loadavg_end[0]:.2f}"
        )


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


class _TreeCpu:
    """CPU seconds of this process and its descendants, remembering processes that have since exited."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.last: dict[int, float] = {}
        self.gone = 0.0

    def total(self) -> float:
        procs = [self.me]
        try:
            procs += self.me.children(recursive=True)
        except psutil.Error:
            pass
        seen: dict[int, float] = {}
        for p in procs:
            try:
                t = p.cpu_times()
                seen[p.pid] = t.user + t.system
            except psutil.Error:
                continue
        for pid, cpu in self.last.items():
            if pid not in seen:
                self.gone += cpu
        self.last = seen
        return self.gone + sum(seen.values())


class LoadMonitor:
    """Samples foreign CPU load in a background thread (every ``interval`` s) while a section runs."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._first: tuple[float, float, float] | None = None
        self._la0: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __enter__(self) -> LoadMonitor:
        self._tree = _TreeCpu()
        self._t0 = time.perf_counter()
        self._la0 = os.getloadavg()
        self._first = (self._t0, _busy_seconds(), self._tree.total())
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        prev = self._first
        assert prev is not None
        while not self._stop.wait(self.interval):
            now = (time.perf_counter(), _busy_seconds(), self._tree.total())
            dt = now[0] - prev[0]
            if dt > 0:
                self.samples.append(max(0.0, ((now[1] - prev[1]) - (now[2] - prev[2])) / dt))
            prev = now

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        t1, busy1, ours1 = time.perf_counter(), _busy_seconds(), self._tree.total()
        assert self._first is not None
        t0, busy0, ours0 = self._first
        wall = max(t1 - t0, 1e-9)
        mean = max(0.0, ((busy1 - busy0) - (ours1 - ours0)) / wall)
        self.report = LoadReport(
            wall_s=wall,
            cpu_count=psutil.cpu_count() or 1,
            others_cores_mean=mean,
            others_cores_max=max([*self.samples, mean]),
            loadavg_start=self._la0,
            loadavg_end=os.getloadavg(),
        )


# ------------------------------------------------------------------------------------------- worker


@dataclass
class Worker:
    """A ``python -m benchmarks.worker`` subprocess holding one system, driven by JSON lines.

    The worker answers each request with one line ``@@bench {json}`` on its protocol pipe; anything
    else it or its libraries print goes to ``log`` (a file), whose tail is shown when it fails.
    """

    name: str
    system: str
    spec: dict[str, Any]
    threads: int
    log_dir: Path
    timeout_s: float = 900.0
    proc: subprocess.Popen | None = field(default=None, repr=False)
    started_at: float = 0.0
    load_reply: dict[str, Any] = field(default_factory=dict)

    def start(self) -> Worker:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"worker-{self.name}.log"
        self._log = open(self.log_path, "w")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=thread_env(self.threads),
            cwd=str(REPO_ROOT),
            text=True,
            bufsize=1,
        )
        self._send({"op": "load", "system": self.system, "spec": self.spec, "threads": self.threads})
        return self

    def wait_loaded(self) -> dict[str, Any]:
        reply = self._receive("load")
        reply["spawn_to_ready_s"] = time.perf_counter() - self.started_at
        return reply

    def request(self, op: str, **kwargs: Any) -> dict[str, Any]:
        self._send({"op": op, **kwargs})
        return self._receive(op)

    def _send(self, msg: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise WorkerError(f"worker {self.name} ({self.system}) died: {self.log_tail()}") from exc

    def _receive(self, op: str) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(timeout=10)
                raise WorkerError(
                    f"worker {self.name} ({self.system}) exited with {self.proc.returncode} during {op!r}: "
                    f"{self.log_tail()}"
                )
            if line.startswith(PROTOCOL_PREFIX):
                reply = json.loads(line[len(PROTOCOL_PREFIX) :])
                if not reply.get("ok"):
                    raise WorkerError(
                        f"worker {self.name} ({self.system}) failed in {op!r}: {reply.get('error')}\n"
                        f"{reply.get('traceback', '')}"
                    )
                return reply

    def log_tail(self, chars: int = 3000) -> str:
        try:
            self._log.flush()
            return self.log_path.read_text()[-chars:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self._send({"op": "exit"})
                self.proc.wait(timeout=30)
            except (WorkerError, subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.proc = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_workers(workers: Sequence[Worker]) -> tuple[list[Worker], dict[str, str]]:
    """Start every worker at once (their imports overlap), then wait for each to report 'loaded'.

    Returns the workers that loaded and, for the others, why not (they are closed): one system that
    cannot run here (e.g. torch.compile without a compiler) must not stop the comparison of the rest.
    """
    for w in workers:
        w.start()
    ok, failed = [], {}
    for w in workers:
        try:
            w.load_reply = w.wait_loaded()
            ok.append(w)
        except WorkerError as exc:
            failed[w.name] = str(exc).strip().splitlines()[-1][:300]
            w.close()
    return ok, failed


@dataclass(frozen=True)
class Timing:
    """One system on one case: every timed call plus the per-round medians."""

    system: str
    case: str
    stats: Stats
    calls_per_round: int
    rounds: int
    samples: tuple[float, ...] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "case": self.case,
            "calls_per_round": self.calls_per_round,
            "rounds": self.rounds,
            **{f"{k}_s": v for k, v in self.stats.to_dict().items() if k not in ("n", "spread")},
            "n": self.stats.n,
            "spread": self.stats.spread,
        }


def interleave(
    workers: Sequence[Worker],
    case: str,
    *,
    rounds: int,
    block_s: float,
    warmup: int,
    max_calls_per_round: int = 200,
    budget_s: float | None = None,
    min_rounds: int = 3,
    slow_s: float = 1.0,
) -> dict[str, Timing]:
    """Time ``case`` on every worker in interleaved rounds; the order rotates each round.

    Each worker first runs ``warmup`` untimed calls (just one when that call took over ``slow_s``: a
    multi-second call is warm after one) and one calibration call; its block size is then
    ``ceil(block_s / calibration time)`` calls (at least 1), so a fast system gets many calls per round
    and a slow one at least one. With ``budget_s``, the rounds are cut (to no fewer than ``min_rounds``)
    so that the timed part of this case takes about that long: slow shapes get fewer rounds, never none.
    """
    per_round: dict[str, int] = {}
    round_s = 0.0
    for w in workers:
        first = w.request("run", case=case, n=1)["times"][0]
        n_more = (warmup - 1 if first < slow_s else 0) + 1
        t = max(w.request("run", case=case, n=n_more)["times"][-1], 1e-6)
        per_round[w.name] = max(1, min(max_calls_per_round, math.ceil(block_s / t)))
        round_s += per_round[w.name] * t
    if budget_s is not None and round_s > 0:
        rounds = max(min(rounds, min_rounds), min(rounds, int(budget_s / round_s)))
    samples: dict[str, list[float]] = {w.name: [] for w in workers}
    medians: dict[str, list[float]] = {w.name: [] for w in workers}
    for r in range(rounds):
        k = r % len(workers)
        for w in list(workers[k:]) + list(workers[:k]):
            times = w.request("run", case=case, n=per_round[w.name])["times"]
            samples[w.name].extend(times)
            medians[w.name].append(statistics.median(times))
    return {
        w.name: Timing(
            system=w.name,
            case=case,
            stats=summarize(samples[w.name], medians[w.name]),
            calls_per_round=per_round[w.name],
            rounds=rounds,
            samples=tuple(samples[w.name]),
        )
        for w in workers
    }
