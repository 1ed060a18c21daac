"""``python -m benchmarks.int8_rows``: int8 with int8 adapter rows, against fp32 adapter rows and fp32 (issue 15).

docs/performance.md section 4 was measured with these commands, on a model prepared by
``python -m benchmarks --prepare-only`` (``--work``, default ``benchmarks/.work``):

* ``ceiling``: the plain model without adapters, int8 / fp32 speed of our featurizer graphs (unfused and
  fused, ``prepare.noadapter_featurizer``) and of optimum's O3 export, each quantized by the exporter's own
  ``quantize_int8``. If this is under 2x, quantizing the adapters cannot make the adapted model 2x.
* ``ab``: ``Deployment.predict`` end to end on one deployment in three forms, interleaved in one process:
  fp32; int8 *before* (``quantize_int8`` of the fp32 adapted graph: the adapters' MatMuls stay fp32, fed fp32
  rows, as exported before issue 15); int8 *after* (the same graph through ``quantize_bank_matmuls``: int8
  rows). Both int8 forms come from the same source graph, so the comparison isolates the adapter rows.
* ``accuracy``: the three forms' dev-set scores with trained checkpoints added to a copy of the deployment.

``--threads 1`` times CPU seconds of the calling thread (``time.thread_time``; steadier on a shared machine),
otherwise wall time. Quote ratios, with the load average printed at the start and the end.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from adapterdeploy.exporter.optimize import interleaved_medians

__all__ = ["int8_forms", "interleaved"]

WORK = Path(__file__).resolve().parent / ".work"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEV = {"sst2": "sst2/dev.tsv", "mrpc": "mrpc/test.tsv", "rte": "rte/dev.tsv", "cola": "cola/dev.tsv"}
METRIC = {"sst2": "accuracy", "mrpc": "f1", "rte": "accuracy", "cola": "mcc"}


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, threads: int) -> dict[str, float]:
    """Median ms of each callable, A B C A B C ... after 3 warm-up calls each; CPU time of the calling thread
    at 1 thread (steadier under load), wall time otherwise."""
    clock = time.thread_time if threads == 1 else time.perf_counter
    return interleaved_medians(fns, repeats=rounds, warmup=3, clock=clock)


def int8_forms(dep_dir: Path, out: Path) -> dict[str, Path]:
    """Two copies of ``dep_dir`` (symlinked files) whose int8 adapted graph is the *before* / *after* form."""
    from adapterdeploy.artifacts import Manifest, file_entry
    from adapterdeploy.exporter.quantize import quantize_bank_matmuls, quantize_int8

    manifest = Manifest.read(dep_dir)
    rel = manifest.featurizer.variants["int8"].adapted
    forms = {}
    for form in ("before", "after"):
        root = out / form
        if root.exists():
            shutil.rmtree(root)
        for src in dep_dir.rglob("*"):
            if src.is_file() and src.name != "deployment.json" and src.relative_to(dep_dir).as_posix() != rel:
                dst = root / src.relative_to(dep_dir)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(src.resolve())
        quantize_int8(dep_dir / manifest.featurizer.variants["fp32"].adapted, root / rel)
        if form == "after":
            quantize_bank_matmuls(root / rel, root / rel)
        copy = Manifest.read(dep_dir)
        copy.files[rel] = file_entry(root / rel)
        copy.write(root)
        forms[form] = root
    return forms


def _open_three(dep_dir: Path, out: Path, threads: int) -> dict[str, Any]:
    from adapterdeploy.runtime import Deployment

    forms = int8_forms(dep_dir, out)
    return {
        "fp32": Deployment.open(dep_dir, precision="fp32", threads=threads),
        "int8 before": Deployment.open(forms["before"], precision="int8", threads=threads),
        "int8 after": Deployment.open(forms["after"], precision="int8", threads=threads),
    }


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """int8 adapter rows vs fp32 adapter rows vs fp32 (docs/performance.md section 4)."""


@main.command()
@click.option("--work", type=click.Path(path_type=Path), default=WORK / "minilm", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=WORK / "int8-rows", show_default=True)
@click.option("--threads", default=1, show_default=True, type=int)
@click.option("--rounds", default=150, show_default=True, type=int, help="Rounds at batch 1 (batch 32: 12).")
def ceiling(work: Path, out: Path, threads: int, rounds: int) -> None:
    """Plain model (no adapters): int8 / fp32 speed of our graphs and optimum's O3 export."""
    import onnxruntime as ort

    from adapterdeploy.exporter.quantize import quantize_int8

    click.echo(_load())
    fp32 = {
        "ours unfused": work / "noadapter" / "noadapter.plain.onnx",
        "ours fused": work / "noadapter" / "noadapter.fused.onnx",
        "optimum O3": work / "optimum-plain" / "model.onnx",
    }
    graphs = {}
    for name, path in fp32.items():
        q = out / work.name / f"{name.replace(' ', '-')}.int8.onnx"  # --work is only read
        if not q.is_file():
            q.parent.mkdir(parents=True, exist_ok=True)
            quantize_int8(path, q)
        graphs[f"{name} fp32"], graphs[f"{name} int8"] = path, q
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.spin_duration_us", "50")
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in graphs.items()}
    rng = np.random.default_rng(0)
    for b, s, n in ((1, 53, rounds), (32, 46, 12), (32, 128, 5)):
        ids = rng.integers(1000, 20000, (b, s)).astype(np.int64)
        types = np.zeros_like(ids)
        types[:, s // 2 :] = 1
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": types}
        med = interleaved({k: (lambda se=se, f=feeds: se.run(None, f)) for k, se in sessions.items()}, n, threads)
        ratios = ", ".join(f"{name} {med[f'{name} fp32'] / med[f'{name} int8']:.2f}x" for name in fp32)
        click.echo(f"{b} x {s}, {threads} thread(s), int8 speed / fp32 speed: {ratios}")
    click.echo(_load())


@main.command()
@click.argument("deployment", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=WORK / "int8-rows", show_default=True)
@click.option("--task", default="t0000", show_default=True, help="A single-text task (batch 32).")
@click.option("--pair-task", default="p0000", show_default=True, help="A pair task (batch 1).")
@click.option("--threads", default=1, show_default=True, type=int)
@click.option("--rounds", default=150, show_default=True, type=int, help="Rounds at batch 1 (batch 32: 15).")
def ab(deployment: Path, out: Path, task: str, pair_task: str, threads: int, rounds: int) -> None:
    """fp32 / int8 before / int8 after, Deployment.predict end to end: batch 1 pair and batch 32."""
    from adapterdeploy.datasets import read_dataset

    click.echo(_load())
    deps = _open_three(deployment, out / deployment.name, threads)
    mrpc = read_dataset(DATA / DEV["mrpc"]).examples
    sst2 = read_dataset(DATA / DEV["sst2"]).examples
    cases = [
        ("b1 pair", [[mrpc[0].text, mrpc[0].text_pair]], pair_task, rounds),
        ("b32", [e.text for e in sst2[:32]], task, 15),
    ]
    for label, rows, name, n in cases:
        med = interleaved({k: (lambda d=d, r=rows, t=name: d.predict(r, task=t)) for k, d in deps.items()}, n, threads)
        click.echo(
            f"{deployment.name} {label}, {threads} thread(s): "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items())
            + f" | int8 speed / fp32: before {med['fp32'] / med['int8 before']:.2f}x, "
            f"after {med['fp32'] / med['int8 after']:.2f}x; time before / after "
            f"{med['int8 before'] / med['int8 after']:.3f}"
        )
    click.echo("bank bytes of " + task + ": " + ", ".join(f"{k} {d._task(task).rows.nbytes}" for k, d in deps.items()))
    click.echo(_load())


@main.command()
@click.argument("deployment", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("ckpts", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=WORK / "int8-rows-accuracy", show_default=True)
def accuracy(deployment: Path, ckpts: tuple[Path, ...], out: Path) -> None:
    """Dev-set scores of fp32 / int8 before / int8 after, the CKPTS (folders named sst2, mrpc, rte, cola)
    added to a copy of DEPLOYMENT."""
    from adapterdeploy.datasets import read_dataset
    from adapterdeploy.exporter.updates import add_tasks
    from adapterdeploy.metrics import classification_metrics

    base = out / deployment.name
    if base.exists():
        shutil.rmtree(base)
    shutil.copytree(deployment, base)
    add_tasks(base, list(ckpts), log=click.echo)
    deps = _open_three(base, out / "forms", threads=2)
    scores: dict[str, dict[str, float]] = {}
    for ckpt in ckpts:
        task, ds = json.loads((ckpt / "task.json").read_text())["name"], ckpt.name
        labels = tuple(deps["fp32"].task_spec(task).head.labels) or None
        data = read_dataset(DATA / DEV[ds], labels=labels)
        rows = [e.text if e.text_pair is None else [e.text, e.text_pair] for e in data.examples]
        y = np.array([int(e.label) for e in data.examples])
        preds = {}
        for k, d in deps.items():
            got = [p for i in range(0, len(rows), 32) for p in d.predict(rows[i : i + 32], task=task)]
            preds[k] = np.array([int(np.argmax(list(p.probabilities.values()))) for p in got])
        scores[ds] = {k: 100 * classification_metrics(y, v, num_labels=2)[METRIC[ds]] for k, v in preds.items()}
        same = {k: 100 * float((v == preds["fp32"]).mean()) for k, v in preds.items()}
        click.echo(
            f"{ds} ({len(rows)} rows, {METRIC[ds]}): "
            + ", ".join(f"{k} {scores[ds][k]:.2f} (same label as fp32 {same[k]:.1f}%)" for k in preds)
        )
    (out / "accuracy.json").write_text(json.dumps(scores, indent=1))


if __name__ == "__main__":
    main()
