"""``python -m benchmarks.profile_runtime``: where our runtime's time goes, for the misses in the report.

Two views of one case (a model prepared by ``python -m benchmarks --prepare-only``, one batch shape):

1. **Operators** (onnxruntime's profiler): per-op-type kernel time per run of the deployment's adapted
   graph against the same featurizer without adapters (``prepare.noadapter_featurizer``), both with the
   runtime's session options. The difference is what the adapters cost, operator by operator.
2. **End to end** (``time.perf_counter`` around the pieces): tokenize + pad, trunk, adapted, heads, and
   the rest of ``Deployment.predict`` (Python), medians over many calls.
3. **Thread scaling** (``--scaling``): the session runs alone (no tokenizer, no Python of ours) of optimum's
   O3 export of the plain model, our featurizer without adapters (whole last layer, and CLS-only), and the
   native, ``seq_bn`` and ``double_seq_bn`` deployments (CLS-only), each at 1 thread and at ``--threads``,
   wall time, every system interleaved in one process. It separates what the adapters cost from what a
   graph loses when a second thread joins (batch 1 runs many small operators, each a thread-pool sync).

The profiler adds its own per-node cost, so its absolute numbers are inflated; compare within a column.
Example: ``python -m benchmarks.profile_runtime --model minilm --precision int8 --batch 1 --seq 53``;
``python -m benchmarks.profile_runtime --scaling --seq 42 --rounds 15`` for the third view.
"""

from __future__ import annotations

import collections
import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

__all__ = ["op_profile", "predict_breakdown", "session_feeds", "thread_scaling"]

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def op_profile(graph: Path, feeds: dict[str, np.ndarray], options: Any, runs: int) -> dict[str, Any]:
    """Per-op-type kernel microseconds per run (and node counts) of ``graph`` under onnxruntime's profiler."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in sess.get_inputs()}
        feeds = {k: v for k, v in feeds.items() if k in wanted}
        for _ in range(runs):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    us: dict[str, float] = collections.defaultdict(float)
    nodes: collections.Counter[str] = collections.Counter()
    model_runs, run_us = 0, 0.0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            us[e["args"]["op_name"]] += e["dur"]
            nodes[e["args"]["op_name"]] += 1
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            model_runs += 1
            run_us += e["dur"]
    n = max(model_runs, 1)
    return {"run_us": run_us / n, "ops": {op: {"us": v / n, "nodes": nodes[op] / n} for op, v in us.items()}}


def _median_us(fn: Callable[[], object], calls: int) -> float:
    for _ in range(max(3, calls // 10)):
        fn()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def session_feeds(dep: Any, task: str, tokens: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trunk feeds, adapted feeds) for one task over ``tokens`` (input_ids / attention_mask / token_type_ids
    of B rows): the inputs the runtime's engine builds for a single-task batch, hidden from the trunk."""
    eng = dep._engine
    _, bank = eng._bank([dep._task(task)], 0, None)
    rows = len(tokens["input_ids"])
    trunk_feeds = {k: v for k, v in tokens.items() if k in eng.trunk_inputs}
    hidden = eng.trunk.run([eng.trunk_output], trunk_feeds)[0]
    adapted_feeds = {
        "hidden": hidden,
        "attention_mask": tokens["attention_mask"],
        "row_source": np.arange(rows, dtype=np.int64),
        "task_index": np.zeros(rows, dtype=np.int64),
        **bank,
    }
    return trunk_feeds, adapted_feeds


def predict_breakdown(dep: Any, rows: list[Any], task: str, calls: int) -> dict[str, float]:
    """Median microseconds of ``dep.predict`` and of its pieces, each timed alone."""
    eng = dep._engine
    loaded = dep._task(task)
    padded = dep._encoder.pad(dep._encoder.tokenize(rows))
    trunk_feeds, adapted_feeds = session_feeds(dep, task, {k: getattr(padded, k) for k in TOKEN_INPUTS})
    features = dict(zip(eng.output_names, eng.adapted.run(eng.output_names, adapted_feeds), strict=True))
    pooled = features[loaded.head.feature]
    parts = {
        "tokenize + pad": lambda: dep._encoder.pad(dep._encoder.tokenize(rows)),
        "trunk session": lambda: eng.trunk.run([eng.trunk_output], trunk_feeds),
        "adapted session": lambda: eng.adapted.run(eng.output_names, adapted_feeds),
        "head (numpy)": lambda: loaded.head.logits(pooled),
        "Deployment.predict, whole": lambda: dep.predict(rows, task=task),
    }
    out = {name: _median_us(fn, calls) for name, fn in parts.items()}
    out["rest of predict (Python)"] = out["Deployment.predict, whole"] - sum(
        v for k, v in out.items() if k != "Deployment.predict, whole"
    )
    return out


def _calls(fn: Callable[[], object], n: int) -> None:
    """``n`` calls of ``fn``: one timed block of :func:`thread_scaling` (a round's time is per block)."""
    for _ in range(n):
        fn()


def _trunk_then_adapted(eng: Any, trunk_feeds: dict[str, Any], adapted_feeds: dict[str, Any]) -> object:
    """The engine's two session runs for a single-task batch, CLS features only."""
    hidden = eng.trunk.run([eng.trunk_output], trunk_feeds)[0]
    return eng.adapted.run(["cls"], {**adapted_feeds, "hidden": hidden})


def thread_scaling(
    p: Any, tokens: dict[str, np.ndarray], threads: int, rounds: int, calls: int, precision: str = "fp32"
) -> list[dict[str, Any]]:
    """Session time at 1 thread and at ``threads`` of O3 plain, our featurizer without adapters (whole and
    CLS-only last layer) and the native / seq_bn / double_seq_bn deployments, one row per system."""
    import onnxruntime as ort

    from adapterdeploy.artifacts import Manifest
    from adapterdeploy.exporter.optimize import interleaved_samples
    from adapterdeploy.runtime import Deployment
    from benchmarks.prepare import main_deployment, noadapter_featurizer, optimum_export, signature_deployment

    deployments = {"native": main_deployment(p)}
    deployments.update({kind: signature_deployment(p, kind) for kind in ("seq_bn", "double_seq_bn")})
    optimization = Manifest.read(deployments["native"]).featurizer.variants[precision].optimization
    graphs = {
        "optimum O3 (plain model)": optimum_export(p, "plain"),
        "ours, no adapters": noadapter_featurizer(p, optimization, precision),
        "ours, no adapters, CLS-only": noadapter_featurizer(p, optimization, precision, cls_only=True),
    }
    systems: dict[str, Callable[[], object]] = {}
    for n in (1, threads):
        deps = {name: Deployment.open(path, precision=precision, threads=n) for name, path in deployments.items()}
        options = deps["native"]._factory.options  # the session options the runtime uses at n threads
        for name, graph in graphs.items():
            sess = ort.InferenceSession(str(graph), options(), providers=["CPUExecutionProvider"])
            feeds = {k: v for k, v in tokens.items() if k in {i.name for i in sess.get_inputs()}}
            systems[f"{name}/{n}"] = functools.partial(sess.run, None, feeds)
        for name, dep in deps.items():
            eng = dep._engine
            trunk_feeds, adapted_feeds = session_feeds(dep, "t0000", tokens)
            if eng.cls_only:
                adapted_feeds["cls_only"] = np.array(True)
            systems[f"{name}/{n}"] = functools.partial(_trunk_then_adapted, eng, trunk_feeds, adapted_feeds)
    blocks: dict[str, Callable[[], object]] = {k: functools.partial(_calls, fn, calls) for k, fn in systems.items()}
    samples = {
        k: [ms / calls for ms in v]
        for k, v in interleaved_samples(blocks, repeats=rounds, warmup=1, shuffle=True).items()
    }
    times = {k: statistics.median(v) for k, v in samples.items()}
    spread = {k: (max(v) - min(v)) / times[k] for k, v in samples.items()}
    o3 = "optimum O3 (plain model)"
    return [
        {
            "system": name,
            "ms_1": times[f"{name}/1"],
            f"ms_{threads}": times[f"{name}/{threads}"],
            "speedup": times[f"{name}/1"] / times[f"{name}/{threads}"],
            "vs_o3_1": times[f"{name}/1"] / times[f"{o3}/1"],
            f"vs_o3_{threads}": times[f"{name}/{threads}"] / times[f"{o3}/{threads}"],
            "spread_1": spread[f"{name}/1"],
            f"spread_{threads}": spread[f"{name}/{threads}"],
        }
        for name in [*graphs, *deployments]
    ]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default="minilm", show_default=True, help="A model prepared in --work (minilm, bertbase).")
@click.option(
    "--work", type=click.Path(path_type=Path), default=Path(__file__).resolve().parent / ".work", show_default=True
)
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "int8"]))
@click.option("--batch", default=1, show_default=True, type=int)
@click.option("--seq", default=53, show_default=True, type=int, help="Tokens per row (random ids).")
@click.option("--threads", default=2, show_default=True, type=int)
@click.option("--runs", default=300, show_default=True, type=int, help="Profiled runs per graph.")
@click.option("--scaling", is_flag=True, help="Only the thread-scaling view (1 thread against --threads).")
@click.option("--rounds", default=15, show_default=True, type=int, help="Interleaved rounds (--scaling).")
def main(
    model: str, work: Path, precision: str, batch: int, seq: int, threads: int, runs: int, scaling: bool, rounds: int
) -> None:
    """Print the operator profile (with vs without adapters) and the end-to-end breakdown of one case, or
    (``--scaling``) the thread-scaling view."""
    from adapterdeploy.artifacts import Manifest
    from adapterdeploy.runtime import Deployment
    from benchmarks.prepare import main_deployment, noadapter_featurizer, prepare_model

    p = prepare_model(model, work)
    dep_dir = main_deployment(p)
    variant = Manifest.read(dep_dir).featurizer.variants[precision]
    dep = Deployment.open(dep_dir, precision=precision, threads=threads)
    rng = np.random.default_rng(0)
    vocab = dep._encoder._plain.get_vocab_size()
    ids = rng.integers(min(1000, vocab // 2), min(20000, vocab), (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    tokens = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    if scaling:
        rows = thread_scaling(p, tokens, threads, rounds, calls=20, precision=precision)
        click.echo(f"{model} {precision}, batch {batch} x {seq} tokens, sessions only, wall ms, {rounds} rounds")
        n = f"{threads}t"
        click.echo(
            f"{'system':30} {'1t ms':>9} {n + ' ms':>10} {'speedup':>8} {'/O3 1t':>7} {'/O3 ' + n:>7} "
            f"{'round spread 1t / ' + n:>22}"
        )
        for r in rows:
            click.echo(
                f"{r['system']:30} {r['ms_1']:9.3f} {r[f'ms_{threads}']:10.3f} {r['speedup']:8.2f} "
                f"{r['vs_o3_1']:7.3f} {r[f'vs_o3_{threads}']:7.3f} "
                f"{r['spread_1']:>14.0%} / {r[f'spread_{threads}']:.0%}"
            )
        return
    plain = noadapter_featurizer(p, variant.optimization, precision)
    feeds = {**tokens, **session_feeds(dep, "t0000", tokens)[1]}  # op_profile keeps what each graph reads
    with_ = op_profile(dep_dir / variant.adapted, feeds, dep._factory.options(), runs)
    without = op_profile(plain, feeds, dep._factory.options(), runs)
    click.echo(f"{model} {precision}, batch {batch} x {seq} tokens, {threads} threads, {runs} profiled runs")
    click.echo(
        f"model_run us/run: with adapters {with_['run_us']:.0f}, without {without['run_us']:.0f} "
        f"({100 * (with_['run_us'] / without['run_us'] - 1):+.1f}%)"
    )
    click.echo(f"{'op type':24} {'with us':>9} {'nodes':>6} {'without us':>11} {'nodes':>6} {'delta us':>9}")
    ops = sorted(set(with_["ops"]) | set(without["ops"]), key=lambda o: -with_["ops"].get(o, {"us": 0})["us"])
    zero = {"us": 0.0, "nodes": 0.0}
    for op in ops:
        a, b = with_["ops"].get(op, zero), without["ops"].get(op, zero)
        click.echo(
            f"{op:24} {a['us']:9.1f} {a['nodes']:6.0f} {b['us']:11.1f} {b['nodes']:6.0f} {a['us'] - b['us']:+9.1f}"
        )
    texts = ["a sentence about twenty tokens long, for the end-to-end breakdown of one predict call"] * batch
    click.echo("end to end, median us per call:")
    for name, us in predict_breakdown(dep, texts, "t0000", max(50, 3000 // (batch * seq // 16 + 1))).items():
        click.echo(f"  {name:28} {us:9.1f}")


if __name__ == "__main__":
    main()
