"""Section 4: one text to n tasks (``fan_out``) vs n separate calls, at each AdapterDrop K.

At AdapterDrop K the layers [0, K) carry no adapters, so a fan-out runs them once for the text and only
layers [K, L) once per task. Per K: one deployment of 16 random tasks exported with ``adapter_drop=K``;
per n: ``fan_out([text], tasks[:n])`` and ``[predict([text], task=t) for t in tasks[:n]]``, timed
interleaved in the same process (each K in a fresh one). The accuracy of real trained tasks at each K is
measured in section 7 (same deployments' precision, same dev sets) and repeated here.

Then (full runs) the adapters library's own answer to "one text, n tasks": its ``Parallel`` composition of n
seq_bn adapters in eager PyTorch (``torch_adapterhub_parallel``, layers [0, K) left out, as the library
shares them), against our fan-out in fp32 and int8 at K = 3, n = 8, each system in its own worker,
interleaved; plus each system's single-task call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.prepare import Prepared, clone_tasks, deployment, drop_deployments, find_real_tasks, ours_available
from benchmarks.sections.common import SectionResult, Table, adapterhub_spec, first_model, monitored, ours_spec
from benchmarks.settings import Context

__all__ = ["run"]

N_TASKS = 16
PARALLEL_K, PARALLEL_N = 3, 8  # the case issue 15 names: one text to 8 tasks at K = 3


def run(ctx: Context) -> SectionResult:
    result = SectionResult("fanout", "4. Fan-out with AdapterDrop: one text, n tasks, K dropped layers")
    missing = ours_available()
    if missing:
        result.skipped = missing
        return result
    s, key, p = first_model(ctx, result)
    ks = s.fanout_k if s.fanout_k is not None else tuple(range(p.num_layers))
    ks = tuple(k for k in ks if k < p.num_layers)
    n_tasks = max(max(s.fanout_n), 1)
    text = ctx.texts.singles[0] if ctx.texts.singles else "a short text"
    # A median-length SST-2 sentence: a typical single request.
    singles = sorted(ctx.texts.singles[:400], key=len)
    text = singles[len(singles) // 2] if singles else text
    rows: list[dict[str, Any]] = []
    real = [t["ckpt"] for t in find_real_tasks(p, s.ckpt_dir)]  # the same exports serve section 7
    deps: dict[int, Path] = {}
    for k in ks:
        dep, _ = drop_deployments(p, k, real, not ctx.settings.quick)
        deps[k] = dep
        extra = [str(d) for d in clone_tasks(p, dep, "t0000", "f", n_tasks)]
        w = ctx.worker(f"fanout_k{k}", "ours", ours_spec(dep, "fp32", load_tasks=extra))
        cases = [f"{kind}_n{n}" for n in s.fanout_n for kind in ("fanout", "separate")]

        def payload(_w: Any, case: str) -> dict[str, Any]:
            kind, n = case.split("_n")
            return {"kind": kind, "text": text, "tasks": [f"f{i:04d}" for i in range(int(n))]}

        run_ = monitored(
            result, f"fanout/K={k}", lambda w=w, cases=cases, payload=payload: ctx.time_cases([w], cases, payload)
        )
        for n in s.fanout_n:
            fan = run_.timings[f"fanout_n{n}"][w.name].stats
            sep = run_.timings[f"separate_n{n}"][w.name].stats
            rows.append(
                {
                    "k": k,
                    "n": n,
                    "fanout_ms": fan.median * 1e3,
                    "separate_ms": sep.median * 1e3,
                    "speedup": sep.median / fan.median,
                    "fanout_p90_ms": fan.p90 * 1e3,
                }
            )
    result.raw = {"model": key, "text": text, "rows": rows, "ks": list(ks)}
    if not s.quick:  # the library's model takes a worker and ~10 s to build: full runs only
        _vs_parallel(ctx, result, p, key, text, deps)
    t = Table(
        f"{key}: fan-out of one median-length SST-2 sentence to n tasks vs n separate predict calls (fp32)",
        ["K (dropped layers)", "n tasks", "fan_out ms", "n separate calls ms", "speed-up", "fan_out ms / task"],
    )
    for r in rows:
        t.rows.append(
            [
                r["k"],
                r["n"],
                f"{r['fanout_ms']:.2f}",
                f"{r['separate_ms']:.2f}",
                f"{r['speedup']:.2f}x",
                f"{r['fanout_ms'] / r['n']:.2f}",
            ]
        )
    result.tables.append(t)
    result.plots.append(
        {
            "file": f"fanout-{key}.png",
            "kind": "line",
            "title": f"{key}: fan_out time vs n tasks at each K",
            "x": list(s.fanout_n),
            "xlabel": "n tasks",
            "ylabel": "ms per fan-out",
            "logx": True,
            "series": {
                f"K={k}": [next(r["fanout_ms"] for r in rows if r["k"] == k and r["n"] == n) for n in s.fanout_n]
                for k in ks
            }
            | {
                "n separate calls (K=0)": [
                    next(r["separate_ms"] for r in rows if r["k"] == ks[0] and r["n"] == n) for n in s.fanout_n
                ]
            },
        }
    )
    return result


def _vs_parallel(ctx: Context, result: SectionResult, p: Prepared, key: str, text: str, deps: dict[int, Path]) -> None:
    """Our fan-out (fp32, int8) vs the adapters library's ``Parallel`` of the same number of adapters."""
    s = ctx.settings
    k = PARALLEL_K if PARALLEL_K in deps else max(deps)
    n = PARALLEL_N if PARALLEL_N in s.fanout_n else max(s.fanout_n)
    dep8 = deployment(p, 0, checkpoints=p.task_dirs(1), adapter_drop=k, precisions=("fp32", "int8"), name="k")
    tasks = [f"f{i:04d}" for i in range(n)]
    workers = [
        ctx.worker(f"ours_fp32_k{k}", "ours", ours_spec(deps[k], "fp32", load_tasks=_clones(p, deps[k], n))),
        ctx.worker(f"ours_int8_k{k}", "ours", ours_spec(dep8, "int8", load_tasks=_clones(p, dep8, n))),
        ctx.worker(
            f"adapterhub_parallel_k{k}",
            "torch_adapterhub_parallel",
            {**adapterhub_spec(p), "adapters": n, "adapter_drop": k},
        ),
    ]

    def payload(_w: Any, case: str) -> dict[str, Any]:
        return {"kind": case, "text": text, "tasks": tasks if case == "fanout" else tasks[:1]}

    run_ = monitored(result, f"fanout/parallel K={k}", lambda: ctx.time_cases(workers, ["fanout", "separate"], payload))
    med = {
        (case, w.name): run_.timings[case][w.name].stats.median
        for case in ("fanout", "separate")
        for w in workers
        if w.name in run_.timings[case]
    }
    par = med.get(("fanout", workers[2].name))
    rows = []
    for w, label in zip(workers, ("ours fp32", "ours int8", "adapters Parallel (eager fp32)"), strict=True):
        fan, one = med.get(("fanout", w.name)), med.get(("separate", w.name))
        if fan is None or one is None:
            continue
        rows.append(
            {
                "system": label,
                "fanout_ms": fan * 1e3,
                "single_ms": one * 1e3,
                "fanout_per_single": fan / one,
                "parallel_per_fanout": par / fan if par else None,
            }
        )
    result.raw["parallel"] = {"k": k, "n": n, "rows": rows, "failed": run_.failed}
    t = Table(
        f"{key}: one text to {n} tasks at K={k}: our fan_out vs the adapters library's Parallel({n}) composition",
        ["system", f"fan-out to {n} ms", "single-task call ms", "fan-out / single", "Parallel time / this"],
    )
    for r in rows:
        t.rows.append(
            [
                r["system"],
                f"{r['fanout_ms']:.2f}",
                f"{r['single_ms']:.2f}",
                f"{r['fanout_per_single']:.2f}x",
                f"{r['parallel_per_fanout']:.2f}x" if r["parallel_per_fanout"] else "-",
            ]
        )
    result.tables.append(t)


def _clones(p: Prepared, dep: Path, n: int) -> list[str]:
    return [str(d) for d in clone_tasks(p, dep, "t0000", "f", n)]
