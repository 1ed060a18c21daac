"""Section 4: one text to n tasks (``fan_out``) vs n separate calls, at each AdapterDrop K.

At AdapterDrop K the layers [0, K) carry no adapters, so a fan-out runs them once for the text and only
layers [K, L) once per task. Per K: one deployment of 16 random tasks exported with ``adapter_drop=K``;
per n: ``fan_out([text], tasks[:n])`` and ``[predict([text], task=t) for t in tasks[:n]]``, timed
interleaved in the same process (each K in a fresh one). The accuracy of real trained tasks at each K is
measured in section 7 (same deployments' precision, same dev sets) and repeated here.
"""

from __future__ import annotations

from typing import Any

from benchmarks.prepare import clone_tasks, drop_deployments, find_real_tasks, ours_available
from benchmarks.sections.common import SectionResult, Table, first_model, monitored, ours_spec
from benchmarks.settings import Context

__all__ = ["run"]

N_TASKS = 16


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
    for k in ks:
        dep, _ = drop_deployments(p, k, real, not ctx.settings.quick)
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
