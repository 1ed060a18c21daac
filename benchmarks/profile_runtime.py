"""``python -m benchmarks.profile_runtime``: where our runtime's time goes, for the misses in the report.

Two views of one case (a model prepared by ``python -m benchmarks --prepare-only``, one batch shape):

1. **Operators** (onnxruntime's profiler): per-op-type kernel time per run of the deployment's adapted
   graph against the same featurizer without adapters (``prepare.noadapter_featurizer``), both with the
   runtime's session options. The difference is what the adapters cost, operator by operator.
2. **End to end** (``time.perf_counter`` around the pieces): tokenize + pad, trunk, adapted, heads, and
   the rest of ``Deployment.predict`` (Python), medians over many calls.

The profiler adds its own per-node cost, so its absolute numbers are inflated; compare within a column.
Example: ``python -m benchmarks.profile_runtime --model minilm --precision int8 --batch 1 --seq 53``.
"""

from __future__ import annotations

import collections
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

__all__ = ["op_profile", "predict_breakdown", "session_feeds"]

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
def main(model: str, work: Path, precision: str, batch: int, seq: int, threads: int, runs: int) -> None:
    """Print the operator profile (with vs without adapters) and the end-to-end breakdown of one case."""
    from adapterdeploy.artifacts import Manifest
    from adapterdeploy.runtime import Deployment
    from benchmarks.prepare import main_deployment, noadapter_featurizer, prepare_model

    p = prepare_model(model, work)
    dep_dir = main_deployment(p)
    variant = Manifest.read(dep_dir).featurizer.variants[precision]
    plain = noadapter_featurizer(p, variant.optimization, precision)
    dep = Deployment.open(dep_dir, precision=precision, threads=threads)
    rng = np.random.default_rng(0)
    vocab = dep._encoder._plain.get_vocab_size()
    ids = rng.integers(min(1000, vocab // 2), min(20000, vocab), (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    tokens = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
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
