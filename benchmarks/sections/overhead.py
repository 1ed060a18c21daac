"""Section 2: what the adapters cost: our runtime vs the same featurizer graph without adapters.

The no-adapter graph is the exporter's own trunk module over all L layers, exported, fused and quantized
by the exporter's own functions with the deployment's chosen optimization (prepare.noadapter_featurizer),
run with the runtime's session options and tokenizer and the task's linear head in numpy. So the ratio
covers the adapters' compute, the bank gathers and the split into two graphs; nothing else differs.
"""

from __future__ import annotations

from typing import Any

from benchmarks.prepare import main_deployment, noadapter_featurizer, ours_available
from benchmarks.sections.common import LABELS, SectionResult, Table, monitored, ours_spec
from benchmarks.settings import Context
from benchmarks.workloads import CASES, make_cases

__all__ = ["run"]


def run(ctx: Context) -> SectionResult:
    result = SectionResult("overhead", "2. Adapter overhead: our runtime vs the same featurizer without adapters")
    missing = ours_available()
    if missing:
        result.skipped = missing
        return result
    from adapterdeploy.artifacts import Manifest

    targets: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    for key in ctx.settings.models:
        p = ctx.model(key)
        cases = make_cases(ctx.texts, str(p.tokenizer), p.max_length)
        dep = main_deployment(p, not ctx.settings.quick)
        variants = Manifest.read(dep).featurizer.variants
        workers = []
        for prec in ("fp32", "int8"):
            graph = noadapter_featurizer(p, variants[prec].optimization, prec)
            workers.append(ctx.worker(f"ours_{prec}", "ours", ours_spec(dep, prec)))
            spec = {"deployment": str(dep), "graph": str(graph), "precision": prec, "task": "t0000"}
            workers.append(ctx.worker(f"ours_noadapter_{prec}", "ours_noadapter", spec))

        def payload(_w: Any, case: str, cases: dict = cases) -> dict[str, Any]:
            return cases[case].payload("p0000" if case == "b1_pair" else "t0000")

        run_ = monitored(
            result,
            f"overhead/{key}",
            lambda workers=workers, payload=payload: ctx.time_cases(workers, list(CASES), payload),
        )
        t = Table(
            f"{key}: median ms with adapters / without (same graphs otherwise); overhead = ratio - 1",
            ["case", "fp32 with", "fp32 without", "fp32 overhead", "int8 with", "int8 without", "int8 overhead"],
        )
        rows = []
        for c in CASES:
            tm = run_.timings[c]
            row: dict[str, Any] = {"case": c}
            cells: list[Any] = [cases[c].description]
            for prec in ("fp32", "int8"):
                with_ = tm[f"ours_{prec}"].stats.median
                without = tm[f"ours_noadapter_{prec}"].stats.median
                row[prec] = {"with_ms": with_ * 1e3, "without_ms": without * 1e3, "overhead": with_ / without - 1}
                cells += [f"{with_ * 1e3:.2f}", f"{without * 1e3:.2f}", f"{100 * (with_ / without - 1):+.1f}%"]
                targets.append(
                    {
                        "name": f"{key} {c}: adapter overhead {prec} (%)",
                        "value": 100 * (with_ / without - 1),
                        "goal": 5.0,
                        "op": "<=",
                        "fmt": "{:+.1f}",
                    }
                )
            rows.append(row)
            t.rows.append(cells)
        result.tables.append(t)
        raw[key] = {"rows": rows, "optimization": {k: v.optimization for k, v in variants.items()}}
        result.plots.append(
            {
                "file": f"overhead-{key}.png",
                "kind": "grouped_bar",
                "title": f"{key}: adapter overhead (%)",
                "groups": list(CASES),
                "ylabel": "% slower than without adapters",
                "hline": 5.0,
                "series": {
                    LABELS[f"ours_{prec}"]: [100 * r[prec]["overhead"] for r in rows] for prec in ("fp32", "int8")
                },
            }
        )
    result.raw = {**raw, "targets": targets}
    return result
