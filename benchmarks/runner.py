"""Run the selected sections in order and write the report (``python -m benchmarks``, ``adapterdeploy bench``)."""

from __future__ import annotations

import importlib
import os
import time
import traceback
from pathlib import Path

from benchmarks.report import default_out_dir, machine_info, write_report
from benchmarks.sections.common import SectionResult
from benchmarks.settings import SECTIONS, BenchSettings, Context
from benchmarks.workloads import load_texts

__all__ = ["SECTION_MODULES", "RunOutcome", "run_benchmarks"]

SECTION_MODULES = {
    "peak": "benchmarks.sections.hardware",
    "single": "benchmarks.sections.single",
    "overhead": "benchmarks.sections.overhead",
    "many_tasks": "benchmarks.sections.many_tasks",
    "fanout": "benchmarks.sections.fanout",
    "loading": "benchmarks.sections.loading",
    "sizes": "benchmarks.sections.sizes",
    "accuracy": "benchmarks.sections.accuracy",
    "server": "benchmarks.sections.server",
}
assert set(SECTION_MODULES) == set(SECTIONS)


class RunOutcome:
    def __init__(self, report: Path, errors: dict[str, str]) -> None:
        self.report = report
        self.errors = errors


def run_benchmarks(settings: BenchSettings, *, out: Path | None = None, work: Path | None = None,
                   command: str = "python -m benchmarks") -> RunOutcome:
    """Run ``settings.sections`` (the peak first whenever a timing section needs it); write the report."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    info = machine_info()
    out = out or default_out_dir(settings.quick, info)
    work = work or Path(__file__).resolve().parent / ".work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(settings=settings, work=work, out=out, texts=load_texts())
    sections: list[SectionResult] = []
    errors: dict[str, str] = {}
    t0 = time.perf_counter()
    for key in SECTIONS:
        if key not in settings.sections:
            continue
        print(f"[bench] section {key} ...", flush=True)
        ts = time.perf_counter()
        try:
            result = importlib.import_module(SECTION_MODULES[key]).run(ctx)
        except Exception as exc:
            tb = traceback.format_exc()
            (out / "logs").mkdir(exist_ok=True)
            (out / "logs" / f"section-{key}.error.txt").write_text(tb)
            errors[key] = f"{type(exc).__name__}: {exc}"
            result = SectionResult(key, key,
                                   skipped=f"failed with {errors[key][:500]} (see logs/section-{key}.error.txt)")
            print(tb, flush=True)
        result.wall_s = time.perf_counter() - ts
        print(f"[bench] section {key} done in {time.perf_counter() - ts:.1f}s", flush=True)
        sections.append(result)
    if ctx.texts.source.startswith("synthetic"):
        sections[0].notes.append("texts: " + ctx.texts.source)
    report = write_report(out, info, settings.to_dict(), sections, command, time.perf_counter() - t0)
    return RunOutcome(report, errors)
