"""Section 2: what the adapters cost: our runtime vs the same featurizer graph without adapters.

The no-adapter graph is the exporter's own trunk module over all L layers, exported, fused and quantized
by the exporter's own functions with the deployment's chosen optimization (prepare.noadapter_featurizer),
run with the runtime's session options and tokenizer and the task's linear head in numpy. So the ratio
covers the adapters' compute, the bank gathers and the split into two graphs; nothing else differs.
"""

from __future__ import annotations

from typing import Any

from adapterdeploy.config import CLS_ONLY_INPUT
from benchmarks.prepare import main_deployment, noadapter_featurizer, ours_available, signature_deployment
from benchmarks.sections.common import LABELS, SectionResult, Table, monitored, ours_spec
from benchmarks.sections.single import signature_workers
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
            # The reference skips what the runtime skips: with the adapted graph's cls_only input the runtime
            # computes the last layer at the CLS token only for these CLS-head tasks, so the reference does too.
            cls_only = CLS_ONLY_INPUT in variants[prec].io_dtypes.get("adapted", {})
            graph = noadapter_featurizer(p, variants[prec].optimization, prec, cls_only=cls_only)
            workers.append(ctx.worker(f"ours_{prec}", "ours", ours_spec(dep, prec)))
            spec = {"deployment": str(dep), "graph": str(graph), "precision": prec, "task": "t0000"}
            workers.append(ctx.worker(f"ours_noadapter_{prec}", "ours_noadapter", spec))
        signatures = signature_workers(ctx, p)  # the AdapterHub seq_bn / double_seq_bn imports (issue 15)
        workers += signatures

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
        sig_rows = _signature_rows(key, run_.timings, [w.name for w in signatures], targets)
        if sig_rows:
            s = Table(
                f"{key}: AdapterHub signatures imported, median ms with adapters / our featurizer without adapters",
                ["case", "system", "with", "without", "overhead", "featurizer variant"],
            )
            chosen = {  # each signature deployment's manifest, read once
                kind: Manifest.read(signature_deployment(p, kind)).featurizer.variants
                for kind in dict.fromkeys(r["kind"] for r in sig_rows)
            }
            for r in sig_rows:
                opt = chosen[r["kind"]][r["precision"]].optimization
                r["optimization"] = opt
                s.rows.append(
                    [
                        cases[r["case"]].description,
                        LABELS.get(r["system"], r["system"]),
                        f"{r['with_ms']:.2f}",
                        f"{r['without_ms']:.2f}",
                        f"{100 * r['overhead']:+.1f}%",
                        opt,
                    ]
                )
            result.tables.append(s)
        raw[key] = {
            "rows": rows,
            "signatures": sig_rows,
            "optimization": {k: v.optimization for k, v in variants.items()},
        }
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


def _signature_rows(
    key: str, timings: dict[str, Any], names: list[str], targets: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Overhead of each AdapterHub signature worker against the no-adapter featurizer of its precision.

    The no-adapter graph has the main deployment's optimization (fused or not); the table names the variant
    each signature's export chose, since a different choice is itself part of the gap."""
    rows = []
    for c in CASES:
        tm = timings[c]
        for name in names:
            if name not in tm:
                continue
            prec = name.rsplit("_", 1)[1]
            kind = name.removeprefix("ours_").removesuffix(f"_{prec}")
            with_, without = tm[name].stats.median, tm[f"ours_noadapter_{prec}"].stats.median
            rows.append(
                {
                    "case": c,
                    "system": name,
                    "kind": kind,
                    "precision": prec,
                    "with_ms": with_ * 1e3,
                    "without_ms": without * 1e3,
                    "overhead": with_ / without - 1,
                }
            )
            targets.append(
                {
                    "name": f"{key} {c}: AdapterHub {kind} overhead {prec} (%)",
                    "value": 100 * (with_ / without - 1),
                    "goal": 5.0,
                    "op": "<=",
                    "fmt": "{:+.1f}",
                }
            )
    return rows
