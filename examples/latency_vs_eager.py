"""Quick-start latency line: the onnxruntime deployment vs eager PyTorch on the same task and inputs.

Measured, not estimated: both systems run the same texts, interleaved (A B A B) after a warm-up, and the
median of many calls is reported with the ratio. Threads are fixed for both. This is a smoke-sized
comparison for the quick start; ``python -m benchmarks`` holds the full, recorded benchmark.

    python examples/latency_vs_eager.py DEPLOY_DIR CKPT_DIR [--base DIR] [--repeats 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

TEXTS = [
    "a gripping, beautifully acted film that never loses its nerve.",
    "the plot is thin and the jokes land with a thud.",
    "an uneven but often charming comedy.",
    "i would not watch it again.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("deploy_dir")
    ap.add_argument("ckpt_dir")
    ap.add_argument("--base", default=None, help="base model dir (default: the embedded MiniLM)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    import torch

    from adapterdeploy.models.base import load_base
    from adapterdeploy.models.checkpoint import load_checkpoint
    from adapterdeploy.runtime import Deployment

    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.ckpt_dir)
    base = load_base(args.base)
    model = ckpt.build_model(base)
    tok = base.load_tokenizer()

    def eager(texts: list[str]) -> None:
        enc = tok(texts, padding=True, truncation=True, max_length=ckpt.max_length, return_tensors="pt")
        with torch.inference_mode():
            model(**enc)

    with Deployment.open(args.deploy_dir, threads=args.threads) as dep:

        def ours(texts: list[str]) -> None:
            dep.predict(texts, task=ckpt.name)

        for batch_name, texts in (("batch 1", TEXTS[:1]), ("batch 4", TEXTS)):
            for fn in (eager, ours, eager, ours):  # warm-up, interleaved
                fn(texts)
            times: dict[str, list[float]] = {"eager": [], "ours": []}
            for _ in range(args.repeats):
                for name, fn in (("eager", eager), ("ours", ours)):
                    t0 = time.perf_counter()
                    fn(texts)
                    times[name].append(time.perf_counter() - t0)
            e, o = statistics.median(times["eager"]) * 1e3, statistics.median(times["ours"]) * 1e3
            print(
                f"latency {batch_name} ({ckpt.name}, {args.threads} threads, median of {args.repeats}): "
                f"eager PyTorch {e:.1f} ms, adapterdeploy onnxruntime {o:.1f} ms -> {e / o:.2f}x"
            )


if __name__ == "__main__":
    main()
