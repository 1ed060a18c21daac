"""Featurizer with adapters (our export) vs optimum's O3 export of the plain base, on onnxruntime CPU.

Usage: python -m benchmarks.exporter_vs_optimum [--out DIR] [--placements after_layer,pfeiffer,houlsby]
                                                [--clock wall|cpu]

For each placement it exports a deployment of one MiniLM task with random adapters (adapters in every layer,
K = 0, fp32, our exporter's kept variant), exports the plain base with optimum (ORTOptimizer, O3), and times
``trunk + adapted`` (bank of that one task) against optimum's single graph at batch 1 x 32 tokens and
32 rows x 53 tokens: medians of interleaved runs, same SessionOptions for both. Prints a markdown table.
``--clock wall``: wall time, onnxruntime's default threads; ``--clock cpu``: CPU time of the calling thread
with one intra-op thread (``time.thread_time``), which other processes on a shared machine barely disturb.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from adapterdeploy.exporter.optimize import interleaved_medians


def _optimum_o3(base_dir: Path, out: Path) -> Path:
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    model = ORTModelForFeatureExtraction.from_pretrained(str(base_dir), export=True)
    ORTOptimizer.from_pretrained(model).optimize(save_dir=str(out), optimization_config=AutoOptimizationConfig.O3())
    return next(out.glob("*optimized*.onnx"))


def _checkpoint(base, out: Path, placement: str) -> Path:
    import torch

    from adapterdeploy.config import AdapterConfig, HeadConfig
    from adapterdeploy.models.checkpoint import checkpoint_from_model, save_checkpoint
    from adapterdeploy.models.encoder import EncoderWithAdapters

    torch.manual_seed(0)
    model = EncoderWithAdapters(base, AdapterConfig(placement=placement, init_std=0.02), HeadConfig())
    return save_checkpoint(
        checkpoint_from_model(model, placement.replace("_", "-"), max_length=128, text_pair=False),
        out / placement,
        force=True,
    )


def main() -> None:
    import onnxruntime as ort

    from adapterdeploy.artifacts import Manifest
    from adapterdeploy.exporter.deployment import bank_of, export_deployment
    from adapterdeploy.models.base import load_base

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--placements", default="after_layer,pfeiffer,houlsby")
    ap.add_argument("--repeats-small", type=int, default=60)
    ap.add_argument("--repeats-large", type=int, default=15)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--reuse", action="store_true", help="reuse exports already in --out")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="exporter-bench-"))
    base = load_base(None)
    o3 = next((work / "o3").glob("*optimized*.onnx"), None) if args.reuse else None
    o3 = o3 or _optimum_o3(base.path, work / "o3")
    opts = ort.SessionOptions()
    clock = time.perf_counter
    if args.clock == "cpu":
        opts.intra_op_num_threads, opts.inter_op_num_threads, clock = 1, 1, time.thread_time
    plain = ort.InferenceSession(str(o3), opts, providers=["CPUExecutionProvider"])
    runs = {}
    for placement in args.placements.split(","):
        ckpt = _checkpoint(base, work / "ckpts", placement)
        dep = work / f"dep-{placement}"
        if not (args.reuse and (dep / "deployment.json").is_file()):
            export_deployment(base.path, [ckpt], dep, force=True)
        manifest = Manifest.read(dep)
        variant = manifest.featurizer.variants["fp32"]
        trunk = ort.InferenceSession(str(dep / variant.trunk), opts, providers=["CPUExecutionProvider"])
        adapted = ort.InferenceSession(str(dep / variant.adapted), opts, providers=["CPUExecutionProvider"])
        bank = dict(zip(manifest.featurizer.bank_inputs, bank_of(dep, list(manifest.tasks)), strict=True))
        runs[placement] = (trunk, adapted, bank, variant)
    rng = np.random.default_rng(0)
    rows = [
        "| batch | optimum O3 plain (ms) | " + " | ".join(f"{p} (ms) | ratio" for p in runs) + " |",
        "|---|---:|" + "---:|---:|" * len(runs),
    ]
    for (b, s), repeats in (((1, 32), args.repeats_small), ((32, 53), args.repeats_large)):
        ids = rng.integers(1000, 20000, size=(b, s)).astype(np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        mask, tt = np.ones_like(ids), np.zeros_like(ids)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}
        idx = np.arange(b, dtype=np.int64)
        rest = {"attention_mask": mask, "row_source": idx, "task_index": np.zeros(b, dtype=np.int64)}
        fns = {"o3": lambda feed=feed: plain.run(None, feed)}
        for p, (trunk, adapted, bank, _v) in runs.items():

            def run(trunk=trunk, adapted=adapted, bank=bank, feed=feed, rest=rest):
                (hidden,) = trunk.run(None, feed)
                adapted.run(None, {"hidden": hidden, **rest, **bank})

            fns[p] = run
        med = interleaved_medians(fns, repeats=repeats, clock=clock)
        cells = " | ".join(f"{med[p]:.2f} | {med[p] / med['o3']:.3f}" for p in runs)
        rows.append(f"| {b} x {s} | {med['o3']:.2f} | {cells} |")
    print(f"clock: {args.clock}")
    print("\n".join(rows))
    for p, (_t, _a, _b, v) in runs.items():
        print(
            f"{p}: kept {v.timings.get('chosen')} ({v.optimization}); adapted fused ops "
            f"{ {k: n for k, n in v.op_counts['adapted'].items() if n} }"
        )


if __name__ == "__main__":
    main()
