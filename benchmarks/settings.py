"""Benchmark settings (one frozen object passed down) and the shared per-run context."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import Timing, Worker, interleave, start_workers
from benchmarks.prepare import Prepared, prepare_model
from benchmarks.workloads import Texts

__all__ = ["QUICK_SECTIONS", "SECTIONS", "BenchSettings", "Context", "TimedRun", "full_settings", "quick_settings"]

SECTIONS = (
    "peak",
    "single",
    "overhead",
    "many_tasks",
    "fanout",
    "loading",
    "sizes",
    "accuracy",
    "server",
    "scale",
    "composition",
)
# ``--quick`` (CI) leaves out the composition section: its library models, four exports and ten worker
# processes take ~2 min even on the tiny model; run it with ``--sections composition``.
QUICK_SECTIONS = tuple(s for s in SECTIONS if s != "composition")


@dataclass(frozen=True)
class BenchSettings:
    """How much to measure. ``quick`` = the tiny model and few repeats (CI); full = MiniLM + BERT-base shape."""

    quick: bool
    models: tuple[str, ...]
    sections: tuple[str, ...]
    threads: int = 2
    rounds: int = 7  # interleaved rounds per case
    block_s: float = 0.4  # target seconds per system per round
    warmup: int = 3  # untimed calls before timing (plus one calibration call)
    case_budget_s: float | None = 60.0  # cut rounds (to >= 3) when one case's timed part would take longer
    compile: bool = True  # include torch.compile
    many_tasks_n: tuple[int, ...] = (1, 8, 64, 512)
    many_tasks_rows: int = 256  # requests in the many-task stream
    resident_tasks: int = 1000
    memory_budget_bytes: int = 4 << 30  # for one-ORT-model-per-task
    fanout_n: tuple[int, ...] = (1, 4, 8, 16)
    fanout_k: tuple[int, ...] | None = None  # None = 0 .. L-1
    load_repeats: int = 200
    cold_repeats: int = 3
    accuracy_rows: int | None = None  # None = whole dev sets
    ckpt_dir: Path = Path("/work/ckpts")
    server_clients: tuple[int, ...] = (1, 16, 64)
    server_seconds: float = 10.0
    server_rounds: int = 3  # load / offline pairs at the target point (most clients, batching on)
    scale_n: tuple[int, ...] = (10, 100, 1000, 10000)  # tasks in the deployment (scale section)
    scale_budget: int = 1000  # the server's --max-loaded-tasks
    scale_export_n: tuple[int, ...] = (1, 4, 16)  # real checkpoints per measured export
    scale_clients: int = 16
    scale_seconds: float = 10.0
    scale_cold: int = 20  # cold tasks probed per N
    scale_add_task: bool = True  # time the real add-task at every N (a torch start each: off in --quick)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ckpt_dir"] = str(self.ckpt_dir)
        return d


def quick_settings(**overrides: Any) -> BenchSettings:
    base = BenchSettings(
        quick=True,
        models=("tiny",),
        sections=QUICK_SECTIONS,
        threads=1,
        rounds=3,
        block_s=0.02,
        warmup=1,
        compile=False,
        case_budget_s=None,
        many_tasks_n=(1, 8),
        many_tasks_rows=64,
        resident_tasks=32,
        memory_budget_bytes=1 << 30,
        fanout_n=(1, 4),
        fanout_k=(0, 2),
        load_repeats=20,
        cold_repeats=1,
        accuracy_rows=32,
        server_clients=(1, 4),
        server_seconds=0.5,
        server_rounds=1,
        scale_n=(10, 40),
        scale_budget=16,
        scale_export_n=(),
        scale_clients=4,
        scale_seconds=0.5,
        scale_cold=3,
        scale_add_task=False,
    )
    return _override(base, overrides)


def full_settings(**overrides: Any) -> BenchSettings:
    return _override(BenchSettings(quick=False, models=("minilm", "bertbase"), sections=SECTIONS), overrides)


def _override(s: BenchSettings, overrides: dict[str, Any]) -> BenchSettings:
    from dataclasses import replace

    return replace(s, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class TimedRun:
    """Timings per case and system, systems that could not load (and why), RSS and load time per system."""

    timings: dict[str, dict[str, Timing]]
    failed: dict[str, str]
    memory: dict[str, dict[str, Any]]


@dataclass
class Context:
    """What every section gets: settings, the work and output folders, texts, prepared models, the peak."""

    settings: BenchSettings
    work: Path
    out: Path
    texts: Texts
    models: dict[str, Prepared] = field(default_factory=dict)
    peak: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def model(self, key: str) -> Prepared:
        if key not in self.models:
            self.models[key] = prepare_model(key, self.work)
        return self.models[key]

    def worker(self, name: str, system: str, spec: dict[str, Any]) -> Worker:
        return Worker(name, system, spec, self.settings.threads, self.out / "logs")

    def time_cases(
        self,
        workers: list[Worker],
        cases: list[str],
        payload_for: Callable[[Worker, str], dict[str, Any]],
        rounds: int | None = None,
    ) -> TimedRun:
        """Start ``workers``, then time each case on all of them, interleaved. Closes the workers.

        ``payload_for(worker, case)`` gives the rows a worker runs for a case (the same rows for every
        system, but e.g. a mixed-task system spreads them over its tasks).
        """
        workers, failed = start_workers(workers)
        return self.time_started(workers, cases, payload_for, rounds=rounds, failed=failed)

    def time_started(
        self,
        workers: list[Worker],
        cases: list[str],
        payload_for: Callable[[Worker, str], dict[str, Any]],
        *,
        rounds: int | None = None,
        failed: dict[str, str] | None = None,
    ) -> TimedRun:
        """:meth:`time_cases` for workers that are already started (closes them too)."""
        s = self.settings
        try:
            for case in cases:
                for w in workers:
                    w.request("case", case=case, payload=payload_for(w, case))
            out = {
                case: interleave(
                    workers,
                    case,
                    rounds=rounds or s.rounds,
                    block_s=s.block_s,
                    warmup=s.warmup,
                    budget_s=s.case_budget_s,
                )
                for case in cases
            }
            rss = {w.name: {**w.request("rss"), "load_s": w.load_reply.get("load_s")} for w in workers}
            return TimedRun(out, failed or {}, rss)
        finally:
            for w in workers:
                w.close()
