"""Section: what Stack and AdapterFusion tasks cost, ours against the adapters library's own eager composition.

Tasks (seq_bn adapters, reduction factor 16, random weights: speed does not depend on them), built and saved
by the adapters library itself, then imported and exported by us:

    plain   one adapter                       (deployment P: plain only, the reference)
    stack   Stack(lang, task), lang rf 2      (deployment S: stack + plain)
    fuse2   Fuse of 2 adapters                (deployment F2: fuse2 + plain; featurizer with 2 fusion slots)
    fuse8   Fuse of 8 adapters                (deployment F8: fuse8 + fuse2 + plain; 8 fusion slots)

Systems, each in its own worker process and timed in interleaved rounds (the harness): the library (eager
PyTorch, ``Stack`` / ``Fuse`` / one adapter loaded from the saved directories), ours fp32 on the deployment
above, ours on the plain task of F8 (what a plain task pays on a fusion featurizer), and fuse8's standalone
graph (a dedicated single-task graph, weights as constants: the "dedicated featurizer variant" alternative).
Timed in CPU seconds of the calling thread (run with ``--threads 1``: then a call's whole work is on that
thread, and other processes' load barely moves the figure). Cases: one text of max_length tokens (batch 1),
32 SST-2 sentences (single-task), and the same 32 rows
spread round-robin over the deployment's tasks (mixed: one forward for us; one forward per task for the
library, which cannot mix compositions in one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.prepare import Prepared, ours_available
from benchmarks.sections.common import SectionResult, Table, monitored, ours_spec
from benchmarks.settings import Context
from benchmarks.workloads import make_cases

__all__ = ["COMPOSITION_TASKS", "run"]

FUSE_N = (2, 8)
COMPOSITION_TASKS = ("plain", "stack", "fuse2", "fuse8")
DEPLOYMENTS = {"P": ("plain",), "S": ("stack", "plain"), "F2": ("fuse2", "plain"), "F8": ("fuse8", "fuse2", "plain")}
# (worker, system, deployment, task): every measured system; "hub_*" run the library's own composition.
CASES = ("b1_128", "b32_dyn", "b32_mixed")
# CPU seconds of the calling thread per call (worker.py): with one thread per system that is all of a call's
# work, and on a shared machine other processes barely move it (wall time there is mostly waiting).
CLOCK = {"clock": "thread"}


def _build(p: Prepared) -> dict[str, Any]:
    """Save the library's adapters / fusions / heads, import them, export the four deployments (cached)."""
    out = p.work / "composition"
    done = out / "done.txt"
    hub = out / "hub"
    if not done.is_file():
        import adapters as ah
        import torch
        from adapters.composition import Fuse

        from adapterdeploy.exporter.compose import export_standalone_folder
        from adapterdeploy.exporter.deployment import export_deployment
        from adapterdeploy.models.adapterhub import import_adapterhub
        from adapterdeploy.models.adapterhub_fusion import import_adapterhub_fusion
        from adapterdeploy.models.adapterhub_stack import import_adapterhub_stack
        from adapterdeploy.models.base import load_base
        from adapterdeploy.models.checkpoint import save_checkpoint

        torch.manual_seed(0)
        model = ah.AutoAdapterModel.from_pretrained(str(p.base_dir), attn_implementation="eager")
        names = [f"f{i}" for i in range(max(FUSE_N))]
        model.add_adapter("lang", config=ah.SeqBnConfig(reduction_factor=2))
        for n in ("task", *names):
            model.add_adapter(n, config=ah.SeqBnConfig(reduction_factor=16))
        for n in FUSE_N:
            model.add_adapter_fusion(Fuse(*names[:n]))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if ".adapters." in name or "adapter_fusion_layer" in name:
                    param.add_(torch.randn_like(param) * 0.02)
        hub.mkdir(parents=True, exist_ok=True)
        for n in ("lang", "task", *names):
            model.save_adapter(str(hub / n), n, with_head=False)
        for task in COMPOSITION_TASKS:  # a 2-label head per task (loaded under the task's name)
            model.add_classification_head(f"head_{task}", num_labels=2)
            model.save_head(str(hub / f"head_{task}"), f"head_{task}")
        for n in FUSE_N:
            (hub / f"fusion{n}").mkdir(exist_ok=True)
            model.save_adapter_fusion(str(hub / f"fusion{n}"), ",".join(names[:n]))
        base = load_base(p.base_dir)
        ck = out / "ckpt"
        ckpts = {
            "plain": import_adapterhub(base, hub / "f0", hub / "head_plain", task_name="plain"),
            "stack": import_adapterhub_stack(base, hub / "lang", hub / "task", hub / "head_stack", task_name="stack"),
            **{
                f"fuse{n}": import_adapterhub_fusion(
                    base, hub / f"fusion{n}", [hub / a for a in names[:n]], hub / f"head_fuse{n}", f"fuse{n}"
                )
                for n in FUSE_N
            },
        }
        paths = {t: save_checkpoint(c, ck / t, force=True) for t, c in ckpts.items()}
        for name, tasks in DEPLOYMENTS.items():
            export_deployment(p.base_dir, [paths[t] for t in tasks], out / name, max_length=p.max_length, force=True)
        export_standalone_folder(out / "F8", "fuse8", out / "fuse8-standalone", precisions=("fp32",))
        done.write_text("ok\n")
    names = [f"f{i}" for i in range(max(FUSE_N))]
    setups = {
        "plain": {"adapters": [str(hub / "f0")], "head": str(hub / "head_plain")},
        "stack": {"adapters": [str(hub / "lang"), str(hub / "task")], "stack": True, "head": str(hub / "head_stack")},
        **{
            f"fuse{n}": {
                "adapters": [str(hub / a) for a in names[:n]],
                "fusion": str(hub / f"fusion{n}"),
                "head": str(hub / f"head_fuse{n}"),
            }
            for n in FUSE_N
        },
    }
    return {"dir": out, "setups": setups, "standalone": out / "fuse8-standalone" / "onnx" / "model.onnx"}


def _workers(ctx: Context, p: Prepared, built: dict[str, Any]) -> list[tuple[Any, str, tuple[str, ...]]]:
    """(worker, measured task, tasks of its mixed case)."""
    out: Path = built["dir"]
    hub_base = {"base_dir": str(p.base_dir), "tokenizer": str(p.tokenizer), "max_length": p.max_length, **CLOCK}
    measured = [("plain", "P"), ("stack", "S"), ("fuse2", "F2"), ("fuse8", "F8")]
    workers = []
    for task, dep in measured:
        tasks = DEPLOYMENTS[dep]
        spec = {**hub_base, "tasks": {t: built["setups"][t] for t in tasks}}
        workers.append((ctx.worker(f"hub_{task}", "torch_adapterhub_composed", spec), task, tasks))
        workers.append((ctx.worker(f"ours_{task}", "ours", ours_spec(out / dep, "fp32", **CLOCK)), task, tasks))
    workers.append(
        (ctx.worker("ours_plain_on_F8", "ours", ours_spec(out / "F8", "fp32", **CLOCK)), "plain", ("plain",))
    )
    standalone = {
        "model_path": str(built["standalone"]),
        "tokenizer": str(p.tokenizer),
        "max_length": p.max_length,
        **CLOCK,
    }
    workers.append((ctx.worker("standalone_fuse8", "ort_model", standalone), "fuse8", ("fuse8",)))
    return workers


def run(ctx: Context) -> SectionResult:
    result = SectionResult("composition", "Stack and AdapterFusion tasks: ours vs the adapters library's composition")
    missing = ours_available()
    if missing:
        result.skipped = missing
        return result
    for key in ctx.settings.models:
        p = ctx.model(key)
        built = _build(p)
        cases = make_cases(ctx.texts, str(p.tokenizer), p.max_length)
        entries = _workers(ctx, p, built)
        plan = {w.name: (task, tasks) for w, task, tasks in entries}

        def payload(w: Any, case: str, cases: dict = cases, plan: dict = plan) -> dict[str, Any]:
            task, tasks = plan[w.name]
            if case != "b32_mixed":
                return cases[case].payload(task)
            return {"kind": "batch", "rows": [[tasks[i % len(tasks)], r] for i, r in enumerate(cases["b32_dyn"].rows)]}

        run_ = monitored(
            result,
            f"composition/{key}",
            lambda entries=entries, payload=payload: ctx.time_cases([w for w, _, _ in entries], list(CASES), payload),
        )
        for name, why in run_.failed.items():
            result.notes.append(f"{key}: {name} could not run here: {why}")
        rows: list[dict[str, Any]] = []
        for case in CASES:
            timings = run_.timings[case]
            for task in COMPOSITION_TASKS:
                hub, ours = timings.get(f"hub_{task}"), timings.get(f"ours_{task}")
                if hub is None or ours is None:
                    continue
                rows.append(
                    {
                        "case": case,
                        "task": task,
                        "library_ms": hub.stats.median * 1e3,
                        "ours_ms": ours.stats.median * 1e3,
                        "speedup": hub.stats.median / ours.stats.median,
                        "ours_vs_plain": ours.stats.median / timings["ours_plain"].stats.median
                        if "ours_plain" in timings
                        else None,
                    }
                )
            extra = {n: timings[n].stats.median * 1e3 for n in ("ours_plain_on_F8", "standalone_fuse8") if n in timings}
            rows.append({"case": case, "task": "extra", **extra})
        result.raw[key] = {"rows": rows, "memory": run_.memory, "failed": run_.failed, "model": p.describe()}
        t = Table(
            f"{key}: median ms per call, fp32 (case: b1_128 = batch 1 x {p.max_length} tokens, b32_dyn = 32 "
            "sentences of one task, b32_mixed = the same 32 rows over the deployment's tasks)",
            ["case", "task", "library eager", "ours", "x library", "ours / ours plain task"],
        )
        for r in rows:
            if r["task"] == "extra":
                continue
            t.rows.append(
                [
                    r["case"],
                    r["task"],
                    f"{r['library_ms']:.2f}",
                    f"{r['ours_ms']:.2f}",
                    f"{r['speedup']:.2f}",
                    "n/a" if r["ours_vs_plain"] is None else f"{r['ours_vs_plain']:.2f}",
                ]
            )
        result.tables.append(t)
        t2 = Table(
            f"{key}: a plain task on the 8-slot fusion featurizer, and fuse8 as a dedicated standalone graph (ms)",
            ["case", "plain task on F8", "fuse8 standalone graph"],
        )
        for r in rows:
            if r["task"] == "extra":
                t2.rows.append(
                    [
                        r["case"],
                        f"{r.get('ours_plain_on_F8', float('nan')):.2f}",
                        f"{r.get('standalone_fuse8', float('nan')):.2f}",
                    ]
                )
        result.tables.append(t2)
    return result
