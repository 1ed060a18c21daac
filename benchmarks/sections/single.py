"""Section 1: one task, latency at batch 1 and throughput at batch 32, every system side by side.

Also section 2 (adapter overhead) when the no-adapter featurizer is available: it is timed in the same
interleaved rounds, so its ratio to ``ours`` is not disturbed by drift between separate runs.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from benchmarks.harness import Worker
from benchmarks.peak import encoder_flops
from benchmarks.prepare import (
    ADAPTERHUB_SIGNATURES,
    Prepared,
    clone_tasks,
    main_deployment,
    optimum_export,
    ours_available,
    signature_deployment,
)
from benchmarks.sections.common import (
    LABELS,
    SectionResult,
    Table,
    adapterhub_spec,
    mib,
    monitored,
    ort_spec,
    ours_spec,
    torch_spec,
)
from benchmarks.settings import Context
from benchmarks.workloads import CASES, Case, make_cases

__all__ = ["MIXED_TASKS", "run", "systems_for"]

MIXED_TASKS = 64
NO_ADAPTER_SYSTEMS = ("ort_plain", "ort_plain_nospin", "ours_noadapter_fp32", "ours_noadapter_int8")


def systems_for(ctx: Context, p: Prepared, result: SectionResult) -> list[Worker]:
    """The workers of section 1 for model ``p`` (ours only when the exporter and runtime are present)."""
    s = ctx.settings
    workers = [ctx.worker("torch_eager", "torch_ours", torch_spec(p))]
    if not s.quick:
        workers.append(ctx.worker("adapterhub", "torch_adapterhub", adapterhub_spec(p)))
    if s.compile and p.key == s.models[0]:  # compiling BERT-base takes minutes on 2 cores: first model only
        workers.append(ctx.worker("torch_compile", "torch_compile", torch_spec(p)))
    workers.append(ctx.worker("ort_task", "ort_model", ort_spec(p, optimum_export(p, "task"))))
    workers.append(ctx.worker("ort_plain", "ort_model", ort_spec(p, optimum_export(p, "plain"))))
    if not s.quick:  # our runtime turns spinning off; the target reference is the better of the two
        workers.append(
            ctx.worker("ort_plain_nospin", "ort_model", {**ort_spec(p, optimum_export(p, "plain")), "spin": False})
        )
    missing = ours_available()
    if missing:
        result.notes.append(f"our runtime was not measured: {missing}")
        return workers
    n_mixed = MIXED_TASKS if not s.quick else 8
    result.notes.append(
        f"'many tasks loaded, mixed': {n_mixed} tasks loaded besides the measured one; each "
        f"batch-1 call goes to the next of them, each batch-32 row to a random one of them."
    )
    dep = main_deployment(p, not ctx.settings.quick)
    extra = [str(d) for d in clone_tasks(p, dep, "t0000", "b", n_mixed) + clone_tasks(p, dep, "p0000", "q", n_mixed)]
    for prec in ("fp32", "int8"):
        workers.append(ctx.worker(f"ours_{prec}", "ours", ours_spec(dep, prec)))
        if prec == "fp32":  # the target is about fp32 (int8 mixed was within a few % of int8 in trial runs)
            workers.append(ctx.worker(f"ours_{prec}_mixed", "ours", ours_spec(dep, prec, load_tasks=extra)))
    workers += signature_workers(ctx, p)
    return workers


def signature_workers(ctx: Context, p: Prepared) -> list[Worker]:
    """Our runtime on the AdapterHub signatures users import (``--quick``: seq_bn fp32 only, to run the path)."""
    kinds = ADAPTERHUB_SIGNATURES if not ctx.settings.quick else ADAPTERHUB_SIGNATURES[:1]
    precisions = ("fp32", "int8") if not ctx.settings.quick else ("fp32",)
    return [
        ctx.worker(f"ours_{kind}_{prec}", "ours", ours_spec(signature_deployment(p, kind), prec))
        for kind in kinds
        for prec in precisions
    ]


def _payload(case: Case, worker: str, n_tasks: int, seed: int) -> dict[str, Any]:
    pair = case.name == "b1_pair"  # pair tasks (p0000, clones q0000..) take the sentence pair
    if not worker.endswith("_mixed"):
        return case.payload("p0000" if pair else "t0000")
    rng = random.Random(seed)
    tasks = [f"{'q' if pair else 'b'}{i:04d}" for i in range(n_tasks)]
    if case.batch == 1:  # each call: the same text for the next task in a shuffled rotation
        rng.shuffle(tasks)
        return {"kind": "batches", "batches": [[[t, case.rows[0]]] for t in tasks]}
    return {"kind": "batch", "rows": [[rng.choice(tasks), r] for r in case.rows]}


def run(ctx: Context) -> SectionResult:
    result = SectionResult("single", "1. Single task: latency (batch 1) and throughput (batch 32)")
    for key in ctx.settings.models:
        p = ctx.model(key)
        cases = make_cases(ctx.texts, str(p.tokenizer), p.max_length)
        workers = systems_for(ctx, p, result)
        n_mixed = MIXED_TASKS if not ctx.settings.quick else 8

        def payload(w: Worker, case: str, cases: dict = cases, n_mixed: int = n_mixed) -> dict[str, Any]:
            return _payload(cases[case], w.name, n_mixed, 0)

        run_ = monitored(
            result,
            f"single/{key}",
            lambda workers=workers, payload=payload: ctx.time_cases(workers, list(CASES), payload),
        )
        for name, why in run_.failed.items():
            result.notes.append(f"{key}: {LABELS.get(name, name)} could not run here: {why}")
        rows: list[dict[str, Any]] = []
        for case_name in CASES:
            case = cases[case_name]
            timings = run_.timings[case_name]
            ref = timings.get("torch_eager")
            plains = [t for name, t in timings.items() if name.startswith("ort_plain")]
            plain = min(plains, key=lambda t: t.stats.median) if plains else None
            for name, t in timings.items():
                med = t.stats.median
                adapters = name not in NO_ADAPTER_SYSTEMS
                shape = replace(p.shape, adapter_sites=2) if "double_seq_bn" in name else p.shape  # Houlsby: 2/layer
                flops = encoder_flops(shape, case.batch, case.seq, adapters=adapters)
                precision = "int8" if "int8" in name else "fp32"
                peak = ctx.peak.get("peak_gflops", {}).get(precision)
                rows.append(
                    {
                        "model": key,
                        "case": case_name,
                        "system": name,
                        "median_ms": med * 1e3,
                        "p90_ms": t.stats.p90 * 1e3,
                        "spread": t.stats.spread,
                        "n": t.stats.n,
                        "rows_per_s": case.batch / med,
                        "speedup_vs_eager": (ref.stats.median / med) if ref else None,
                        "vs_ort_plain_o3": (med / plain.stats.median) if plain else None,
                        "gflops": flops / med / 1e9,
                        "pct_of_peak": (100 * flops / med / 1e9 / peak) if peak else None,
                    }
                )
        result.raw[key] = {
            "cases": {c: cases[c].to_dict() for c in CASES},
            "rows": rows,
            "memory": run_.memory,
            "failed": run_.failed,
            "model": p.describe(),
        }
        _tables(result, key, cases, rows, run_.memory)
    return result


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _tables(
    result: SectionResult,
    key: str,
    cases: dict[str, Case],
    rows: list[dict[str, Any]],
    memory: dict[str, dict[str, Any]],
) -> None:
    systems = list(dict.fromkeys(r["system"] for r in rows))
    for case_name in CASES:
        case = cases[case_name]
        t = Table(
            f"{key}: {case.description} (padded to {case.seq} tokens)",
            [
                "system",
                "median ms",
                "p90 ms",
                "rows/s",
                "x eager PyTorch",
                "time / best ORT-O3 plain",
                "GFLOP/s",
                "% of peak",
                "calls",
                "round spread",
            ],
        )
        for r in (r for r in rows if r["case"] == case_name):
            t.rows.append(
                [
                    LABELS.get(r["system"], r["system"]),
                    _fmt(r["median_ms"], ".2f"),
                    _fmt(r["p90_ms"], ".2f"),
                    _fmt(r["rows_per_s"], ".1f"),
                    _fmt(r["speedup_vs_eager"], ".2f"),
                    _fmt(r["vs_ort_plain_o3"], ".3f"),
                    _fmt(r["gflops"], ".1f"),
                    _fmt(r["pct_of_peak"], ".1f"),
                    r["n"],
                    _fmt(100 * r["spread"], ".0f") + "%",
                ]
            )
        result.tables.append(t)
    mem = Table(
        f"{key}: memory of each system's process after the timed runs", ["system", "RSS MiB", "peak RSS MiB", "load s"]
    )
    for name in systems:
        m = memory.get(name, {})
        mem.rows.append(
            [
                LABELS.get(name, name),
                mib(m.get("rss_bytes", 0)),
                mib(m.get("peak_rss_bytes", 0)),
                _fmt(m.get("load_s"), ".2f"),
            ]
        )
    result.tables.append(mem)
    result.plots.append(
        {
            "file": f"single-{key}.png",
            "kind": "grouped_bar",
            "title": f"{key}: speed-up over eager PyTorch (higher is better)",
            "groups": list(CASES),
            "ylabel": "x eager PyTorch (log scale)",
            "logy": True,
            "hline": 1.0,
            "series": {
                LABELS.get(s, s): [
                    next((r["speedup_vs_eager"] or 0 for r in rows if r["system"] == s and r["case"] == c), 0)
                    for c in CASES
                ]
                for s in systems
            },
        }
    )
