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

__all__ = ["SECTION_MODULES", "RunOutcome", "prepare_everything", "run_benchmarks"]

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
    "scale": "benchmarks.sections.scale",
    "composition": "benchmarks.sections.composition",
}
assert set(SECTION_MODULES) == set(SECTIONS)


def prepare_everything(settings: BenchSettings, work: Path | None = None) -> None:
    """Build (or find cached) every model, export, deployment and clone a run with ``settings`` uses.

    The exporter times candidate graphs to choose between them, so run this on a quiet machine too; it
    only moves that work out of the measured run.
    """
    from benchmarks.prepare import (
        ADAPTERHUB_SIGNATURES,
        clone_tasks,
        drop_deployments,
        find_real_tasks,
        main_deployment,
        noadapter_featurizer,
        optimum_export,
        ours_available,
        signature_deployment,
    )
    from benchmarks.sections.single import MIXED_TASKS

    work = work or Path(__file__).resolve().parent / ".work"
    ctx = Context(settings=settings, work=work, out=work / "prepare-logs", texts=load_texts())
    ours = ours_available() is None
    s = settings
    for i, key in enumerate(s.models):
        t0 = time.perf_counter()
        p = ctx.model(key)
        p.task_dirs(1, pairs=True)
        optimum_export(p, "plain")
        optimum_export(p, "task")
        if not ours:
            continue
        from adapterdeploy.artifacts import Manifest

        dep = main_deployment(p, not s.quick)
        n_mixed = MIXED_TASKS if not s.quick else 8
        clone_tasks(p, dep, "p0000", "q", n_mixed)
        clone_tasks(p, dep, "t0000", "b", max(n_mixed, *s.many_tasks_n, s.resident_tasks) if i == 0 else n_mixed)
        for prec, variant in Manifest.read(dep).featurizer.variants.items():
            if prec in ("fp32", "int8"):
                noadapter_featurizer(p, variant.optimization, prec)
        for kind in ADAPTERHUB_SIGNATURES if not s.quick else ADAPTERHUB_SIGNATURES[:1]:
            signature_deployment(p, kind)
        if i == 0:
            real = [t["ckpt"] for t in find_real_tasks(p, s.ckpt_dir)]
            for k in s.fanout_k if s.fanout_k is not None else range(p.num_layers):
                rand_dep, _ = drop_deployments(p, k, real, not s.quick)
                clone_tasks(p, rand_dep, "t0000", "f", max(s.fanout_n))
        print(f"[prepare] {key}: ready in {time.perf_counter() - t0:.0f}s", flush=True)


class RunOutcome:
    def __init__(self, report: Path, errors: dict[str, str]) -> None:
        self.report = report
        self.errors = errors


def run_benchmarks(
    settings: BenchSettings, *, out: Path | None = None, work: Path | None = None, command: str = "python -m benchmarks"
) -> RunOutcome:
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
            result = SectionResult(
                key, key, skipped=f"failed with {errors[key][:500]} (see logs/section-{key}.error.txt)"
            )
            print(tb, flush=True)
        result.wall_s = time.perf_counter() - ts
        print(f"[bench] section {key} done in {time.perf_counter() - ts:.1f}s", flush=True)
        sections.append(result)
    if ctx.texts.source.startswith("synthetic"):
        sections[0].notes.append("texts: " + ctx.texts.source)
    report = write_report(out, info, settings.to_dict(), sections, command, time.perf_counter() - t0)
    return RunOutcome(report, errors)
