"""Section 3: a stream of requests over N random tasks; ours (one featurizer, mixed batches) vs one model per task.

Stream: ``many_tasks_rows`` requests, each (random task of N, SST-2 sentence), served in batches of 32
rows; the texts are the same at every N, only the tasks differ. Ours runs each batch as one mixed forward
(``predict_mixed``; N = 1 is plain ``predict``). The common way holds one onnxruntime session per task
(optimum's O3 export of the whole model with the task) and runs each batch as one call per task present
in it. Phase 1 times ours at every N together (interleaved, a fresh process per N): mixed vs single task.
Phase 2 times, per N, the per-task sessions against ours again (interleaved, fresh processes). RSS is
read after the stream. The per-task sessions stop at the memory budget: an N that does not fit is
reported with how many models fitted, not timed.

The N per-task sessions are N parses of the same whole-model file: onnxruntime shares no weights between
sessions, so memory and time are those of N different task models (the RSS column shows it).
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness import start_workers
from benchmarks.prepare import clone_tasks, main_deployment, optimum_export, ours_available
from benchmarks.sections.common import SectionResult, Table, first_model, mib, monitored, ort_spec, ours_spec
from benchmarks.settings import Context
from benchmarks.workloads import task_stream

__all__ = ["run"]

BATCH = 32


def _batches(stream: list[list[Any]]) -> list[list[list[Any]]]:
    return [stream[i : i + BATCH] for i in range(0, len(stream), BATCH)]


def run(ctx: Context) -> SectionResult:
    result = SectionResult("many_tasks", "3. Many tasks: one shared featurizer vs one model per task")
    missing = ours_available()
    if missing:
        result.skipped = missing
        return result
    s, key, p = first_model(ctx, result)  # MiniLM in a full run: the deployment target of the issue
    n_max = max(s.many_tasks_n)
    dep = main_deployment(p, not ctx.settings.quick)
    paths = [str(d) for d in clone_tasks(p, dep, "t0000", "b", max(n_max, s.resident_tasks))]
    task_model = optimum_export(p, "task")
    budget = s.memory_budget_bytes
    streams = {n: _batches(task_stream(ctx.texts, _tasks(n), s.many_tasks_rows, seed=n)) for n in s.many_tasks_n}
    # Phase 1: ours at every N in one interleaved run (fresh process each): the mixed-vs-single comparison.
    ours = [ctx.worker(f"ours_n{n}", "ours", ours_spec(dep, "fp32", load_tasks=paths[:n])) for n in s.many_tasks_n]
    run_ = monitored(
        result,
        "many_tasks/ours at every N",
        lambda: ctx.time_cases(
            ours, ["stream"], lambda w, _c: {"kind": "batches", "batches": streams[int(w.name.split("_n")[1])]}
        ),
    )
    rows: list[dict[str, Any]] = []
    for n in s.many_tasks_n:
        t, mem = run_.timings["stream"][f"ours_n{n}"], run_.memory[f"ours_n{n}"]
        rows.append(
            {
                "n": n,
                "system": "ours",
                "rows_per_s": BATCH / t.stats.mean,
                "median_batch_ms": t.stats.median * 1e3,
                "rss_bytes": mem["rss_bytes"],
                "load_s": mem.get("load_s"),
                "models_loaded": n,
            }
        )
    single = rows[0]["rows_per_s"] if s.many_tasks_n[0] == 1 else None
    for r in rows:
        r["vs_single_task"] = r["rows_per_s"] / single if single else None
    # Phase 2: per N, one ORT model per task vs ours again, interleaved, until the memory budget.
    for n in s.many_tasks_n:
        payload = {"kind": "batches", "batches": streams[n]}
        spec = {**ort_spec(p, task_model), "tasks": _tasks(n), "budget_bytes": budget}
        pair = [
            ctx.worker(f"ours_vs_ort_n{n}", "ours", ours_spec(dep, "fp32", load_tasks=paths[:n])),
            ctx.worker(f"ort_n{n}", "ort_per_task", spec),
        ]
        run2, status = monitored(
            result,
            f"many_tasks/one model per task N={n}",
            lambda pair=pair, payload=payload: _time_n(ctx, pair[0], pair[1], payload),
        )
        row: dict[str, Any] = {
            "n": n,
            "system": "ort_per_task",
            "models_loaded": status["loaded"],
            "load_s": status["load_s"],
            "rss_bytes": status["rss_bytes"],
            "rows_per_s": None,
            "median_batch_ms": None,
            "vs_single_task": None,
            "vs_ours_same_run": None,
        }
        if not status["over_budget"]:
            t_ort, t_ours = run2.timings["stream"][f"ort_n{n}"], run2.timings["stream"][f"ours_vs_ort_n{n}"]
            row.update(
                rows_per_s=BATCH / t_ort.stats.mean,
                median_batch_ms=t_ort.stats.median * 1e3,
                rss_bytes=run2.memory[f"ort_n{n}"]["rss_bytes"],
                vs_ours_same_run=t_ours.stats.mean / t_ort.stats.mean,
            )
        rows.append(row)
    resident = _resident(ctx, dep, paths[: s.resident_tasks], result)
    result.raw = {
        "model": key,
        "rows": rows,
        "resident": resident,
        "budget_bytes": budget,
        "stream_rows": s.many_tasks_rows,
        "targets": _targets(rows, resident, key, s.resident_tasks),
    }
    _tables(result, rows, resident, budget, key, s)
    return result


def _tasks(n: int) -> list[str]:
    """The clone names b0000.. of the first ``n`` random tasks."""
    return [f"b{i:04d}" for i in range(n)]


def _time_n(ctx: Context, ours: Any, common: Any, payload: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Start both; drop the per-task sessions if they passed the budget; time the rest interleaved."""
    workers, failed = start_workers([ours, common])
    if failed:
        for w in workers:
            w.close()
        raise RuntimeError(f"many-tasks workers failed: {failed}")
    status = common.request("call", method="status")["result"]
    if status["over_budget"]:
        common.close()
        workers = [ours]
    return ctx.time_started(workers, ["stream"], lambda w, c: payload), status


def _resident(ctx: Context, dep: Any, paths: list[str], result: SectionResult) -> dict[str, Any]:
    """A fresh runtime process with ``len(paths)`` tasks loaded: RSS before and after loading them."""
    n = len(paths)
    w = ctx.worker(f"resident_{n}", "ours", ours_spec(dep, "fp32"))

    def measure() -> dict[str, Any]:
        _, failed = start_workers([w])
        if failed:
            raise RuntimeError(f"resident-tasks worker failed: {failed}")
        try:
            r = w.request("call", method="load_many", kwargs={"task_paths": paths})["result"]
            return {
                "tasks": n,
                "rss_before_bytes": r["before"]["rss_bytes"],
                "rss_after_bytes": r["after"]["rss_bytes"],
                "load_s": r["load_s"],
            }
        finally:
            w.close()

    return monitored(result, f"many_tasks/resident {n}", measure)


def _targets(rows: list[dict[str, Any]], resident: dict[str, Any], key: str, n_res: int) -> list[dict[str, Any]]:
    out = [
        {
            "name": f"{key}: mixed-task throughput at N={r['n']} / single task",
            "value": r["vs_single_task"],
            "goal": 0.9,
            "op": ">=",
            "fmt": "{:.2f}x",
        }
        for r in rows
        if r["system"] == "ours" and r["n"] > 1 and r["vs_single_task"] is not None
    ]
    out.append(
        {
            "name": f"{key}: RSS with {n_res} tasks resident (MiB)",
            "value": resident["rss_after_bytes"] / (1 << 20),
            "goal": 1024.0,
            "op": "<=",
            "fmt": "{:.0f}",
        }
    )
    return out


def _tables(
    result: SectionResult, rows: list[dict[str, Any]], resident: dict[str, Any], budget: int, key: str, s: Any
) -> None:
    t = Table(
        f"{key}: stream of {s.many_tasks_rows} requests over N random tasks, batches of {BATCH}; "
        f"memory budget for one-model-per-task: {mib(budget):.0f} MiB",
        [
            "N tasks",
            "system",
            "rows/s",
            "/ ours at N=1",
            "/ ours, same run",
            "median ms / batch",
            "RSS MiB",
            "models loaded",
            "load s",
        ],
    )
    for r in sorted(rows, key=lambda r: (r["n"], r["system"] != "ours")):
        label = "ours (shared featurizer, mixed batches)" if r["system"] == "ours" else "one ORT model per task"
        over = r["rows_per_s"] is None
        t.rows.append(
            [
                r["n"],
                label,
                "over budget" if over else f"{r['rows_per_s']:.1f}",
                "n/a" if r["vs_single_task"] is None else f"{r['vs_single_task']:.2f}",
                "n/a" if r.get("vs_ours_same_run") is None else f"{r['vs_ours_same_run']:.2f}",
                "n/a" if over else f"{r['median_batch_ms']:.1f}",
                mib(r["rss_bytes"] or 0),
                f"{r['models_loaded']}" + (" (stopped at budget)" if over else ""),
                "n/a" if r["load_s"] is None else f"{r['load_s']:.2f}",
            ]
        )
    result.tables.append(t)
    result.tables.append(
        Table(
            f"{key}: {resident['tasks']} random tasks resident in one runtime process",
            ["RSS before loading MiB", "RSS after MiB", "per task KiB", "load all s"],
            [
                [
                    mib(resident["rss_before_bytes"]),
                    mib(resident["rss_after_bytes"]),
                    f"{(resident['rss_after_bytes'] - resident['rss_before_bytes']) / resident['tasks'] / 1024:.0f}",
                    f"{resident['load_s']:.2f}",
                ]
            ],
        )
    )
    ns = sorted({r["n"] for r in rows})
    series: dict[str, list[Any]] = {}
    for system, label in (("ours", "ours"), ("ort_per_task", "one ORT model per task")):
        series[label] = [
            next((r["rows_per_s"] for r in rows if r["n"] == n and r["system"] == system), None) for n in ns
        ]
    result.plots.append(
        {
            "file": f"many-tasks-{key}.png",
            "kind": "line",
            "title": f"{key}: throughput vs number of tasks",
            "x": ns,
            "series": series,
            "xlabel": "N tasks",
            "ylabel": "rows/s",
            "logx": True,
        }
    )
    # Points only where all N tasks were loaded (an N over the budget has no point, not a misleading one).
    mem = {
        label: [
            next(
                (
                    r["rss_bytes"] / (1 << 20)
                    for r in rows
                    if r["n"] == n and r["system"] == system and r["rss_bytes"] and r["rows_per_s"] is not None
                ),
                None,
            )
            for n in ns
        ]
        for system, label in (("ours", "ours"), ("ort_per_task", "one ORT model per task"))
    }
    result.plots.append(
        {
            "file": f"many-tasks-rss-{key}.png",
            "kind": "line",
            "title": f"{key}: RSS vs number of tasks (dashed: the memory budget)",
            "x": ns,
            "series": mem,
            "xlabel": "N tasks",
            "ylabel": "RSS MiB",
            "logx": True,
            "logy": True,
            "hline": budget / (1 << 20),
        }
    )
