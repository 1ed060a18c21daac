"""Reproduce benchmarks/results/training.md: adapters on MiniLM for SST-2, MRPC, RTE, CoLA + one full fine-tune.

    python scripts/train_glue.py run --tasks sst2,mrpc,rte,cola,full-mrpc --threads 1   # into the JSON
    python scripts/train_glue.py report                                     # JSON -> markdown table

Splits (all deterministic; ``../shared/data`` format, see its README):

* training rows: the task's train file minus a held-out *selection* slice, optionally subsampled
  (SST-2: 8,000 rows) with the trainer's seeded subset;
* selection slice (picks the best epoch): rows of the train file whose ``sha256("<task>-select:<line>")``
  are the N smallest; never trained on;
* reported split: the GLUE dev file (SST-2, RTE, CoLA; GLUE's test labels are not public) or MRPC's
  test file (MRPC has no dev file). It plays no part in training or epoch selection.

Checkpoints go to ``--ckpts/<task>`` (outside the repo), the full fine-tune to ``--ckpts/full-<task>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

# task -> settings. select = held-out rows for epoch selection; report = file scored at the end.
TASKS: dict[str, dict[str, Any]] = {
    "sst2": {
        "train": "sst2/train.tsv",
        "report": "sst2/dev.tsv",
        "split": "dev",
        "select": 872,
        "max_train_rows": 8000,
        "max_length": 64,
    },
    "mrpc": {
        "train": "mrpc/train.tsv",
        "report": "mrpc/test.tsv",
        "split": "test",
        "select": 400,
        "max_train_rows": None,
        "max_length": 128,
    },
    "rte": {
        "train": "rte/train.tsv",
        "report": "rte/dev.tsv",
        "split": "dev",
        "select": 250,
        "max_train_rows": None,
        "max_length": 128,
    },
    "cola": {
        "train": "cola/train.tsv",
        "report": "cola/dev.tsv",
        "split": "dev",
        "select": 500,
        "max_train_rows": None,
        "max_length": 64,
    },
}


NAMES = {"sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE", "cola": "CoLA"}


def split_off(data: Any, n: int, salt: str) -> tuple[Any, Any]:
    """(rest, held_out): held_out = the n rows with the smallest sha256(f"{salt}:{file line}"), in file order."""
    lines = data.line_numbers
    ranked = sorted(range(len(data)), key=lambda i: hashlib.sha256(f"{salt}:{lines[i]}".encode()).digest())
    held = set(ranked[:n])

    def pick(keep: list[int]) -> Any:
        return dataclasses.replace(
            data, examples=tuple(data.examples[i] for i in keep), line_numbers=tuple(lines[i] for i in keep)
        )

    return pick([i for i in range(len(data)) if i not in held]), pick(sorted(held))


def run_one(key: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads:
        # On a shared machine one thread per process wastes less: with 2 threads each step waits at
        # barriers for whichever thread the scheduler last preempted.
        torch.set_num_threads(args.threads)

    from adapterdeploy.config import AdapterConfig, HeadConfig
    from adapterdeploy.datasets import read_dataset, subset
    from adapterdeploy.models.base import load_base
    from adapterdeploy.models.checkpoint import save_checkpoint
    from adapterdeploy.models.trainer import (
        TrainConfig,
        evaluate_dataset,
        full_finetune,
        save_full_finetune,
        train_task,
    )

    full = key.startswith("full-")
    task = key.removeprefix("full-")
    spec = TASKS[task]
    data_dir = Path(args.data)
    train_all = read_dataset(data_dir / spec["train"])
    rest, select = split_off(train_all, spec["select"], f"{task}-select")
    train = subset(rest, spec["max_train_rows"], args.seed)
    report = read_dataset(data_dir / spec["report"], labels=train.labels, problem_type=train.problem_type)
    head = HeadConfig(pooling=args.pooling)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.full_lr if full else args.lr,
        max_length=spec["max_length"],
        seed=args.seed,
        progress=True,
    )
    base = load_base(args.base)
    print(
        f"[{key}] train {len(train)} rows (of {len(train_all)}), select {len(select)}, "
        f"{spec['split']} {len(report)}; {cfg}",
        file=sys.stderr,
        flush=True,
    )
    out = Path(args.ckpts) / (f"{key}-{args.variant}" if args.variant else key)
    started = time.perf_counter()
    if full:
        result = full_finetune(base, train, select, name=task, head=head, config=cfg)
        model, metrics, info = result.model, result.metrics, result.training
        save_full_finetune(result, out, force=True)
        weights_file = out / "model.safetensors"
    else:
        adapter = (
            AdapterConfig(layers=tuple(range(args.adapter_drop, base.num_layers)))
            if args.adapter_drop
            else AdapterConfig()
        )
        ckpt = train_task(base, train, select, name=task, adapter=adapter, head=head, config=cfg)
        save_checkpoint(ckpt, out, force=True)
        model, metrics, info = ckpt.build_model(base), ckpt.metrics, ckpt.training
        weights_file = out / "adapter.safetensors"
    t0 = time.perf_counter()
    scored = evaluate_dataset(model, base.load_tokenizer(), report, max_length=cfg.max_length)
    row = {
        "key": f"{key}:{args.variant}" if args.variant else key,
        "task": task,
        "variant": args.variant,
        "mode": "full_finetune" if full else "adapters",
        "split": spec["split"],
        "report_file": spec["report"],
        "report_rows": len(report),
        "report_metrics": scored,
        "report_seconds": round(time.perf_counter() - t0, 2),
        "select_rows": len(select),
        "select_metrics": metrics,
        "train_rows": len(train),
        "train_file_rows": len(train_all),
        "max_train_rows": spec["max_train_rows"],
        "weights_file": str(weights_file),
        "weights_bytes": weights_file.stat().st_size,
        "base_weights_bytes": (base.path / "model.safetensors").stat().st_size,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "pooling": args.pooling,
        "adapter_drop": 0 if full else args.adapter_drop,
        "training": info,
        "torch_threads": torch.get_num_threads(),
    }
    print(
        f"[{key}] {spec['split']}: " + ", ".join(f"{k} {v:.4f}" for k, v in scored.items()), file=sys.stderr, flush=True
    )
    return row


def environment() -> dict[str, Any]:
    import tokenizers
    import torch
    import transformers

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "platform": platform.platform(),
        "date": dt.date.today().isoformat(),
    }


def cmd_run(args: argparse.Namespace) -> None:
    path = Path(args.results)
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    for key in args.tasks.split(","):
        if key.removeprefix("full-") not in TASKS:
            raise SystemExit(f"unknown task {key!r}; choose from {', '.join(TASKS)} (or full-<task>)")
        row = run_one(key, args)
        row["settings"] = {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "lr": args.full_lr if key.startswith("full-") else args.lr,
        }
        results["runs"][row["key"]] = row
        results["environment"] = environment()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")  # after every task: a crash keeps the others


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _size(n: int) -> str:
    return f"{n / 1024:.0f} KB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MB"


def _minutes(s: float) -> str:
    return f"{s / 60:.1f} min"


def _train_time(info: dict[str, Any]) -> str:
    wall = _minutes(info["train_seconds"])
    return f"{wall} (CPU {_minutes(info['train_cpu_seconds'])})" if "train_cpu_seconds" in info else wall


def cmd_report(args: argparse.Namespace) -> None:
    results = json.loads(Path(args.results).read_text())
    env, runs = results["environment"], results["runs"]
    rank = {"sst2": 0, "mrpc": 1, "rte": 2, "cola": 3}
    order = sorted(runs, key=lambda k: (k.startswith("full-"), rank.get(runs[k]["task"], 9), k))
    head = (
        "| task | method | train rows | selection rows | reported split (rows) | accuracy | F1 | MCC "
        "| trainable params | % of model | weights file | training time | best epoch (of) |"
    )
    lines = [head, "|" + " --- |" * 13]
    for key in order:
        r = runs[key]
        m, info = r["report_metrics"], r["training"]
        remaining = r["train_file_rows"] - r["select_rows"]
        rows = f"{r['train_rows']:,}" + ("" if r["train_rows"] == remaining else f" of {remaining:,}")
        method = "full fine-tuning" if r["mode"] == "full_finetune" else "adapters"
        if r.get("variant"):
            method += f" ({r['variant']})"
        lines.append(
            f"| {NAMES[r['task']]} | {method} | {rows} | {r['select_rows']:,} | {r['split']} ({r['report_rows']:,}) "
            f"| {_pct(m.get('accuracy'))} | {_pct(m.get('f1'))} | {_pct(m.get('mcc'))} "
            f"| {info['trainable_params']:,} | "
            f"{info['trainable_percent']:.2f}% | {_size(r['weights_bytes'])} | {_train_time(info)} | "
            f"{info['best_epoch']} ({info['epochs']}) |"
        )
    any_run = runs[order[0]]
    base_params = any_run["training"]["total_params"] - (
        0 if any_run["mode"] == "full_finetune" else any_run["training"]["trainable_params"]
    )
    adapters = [runs[k] for k in order if runs[k]["mode"] == "adapters"]
    sizes = ""
    if adapters:
        a = max(r["weights_bytes"] for r in adapters)
        b = any_run["base_weights_bytes"]
        sizes = (
            f"One adapter task adds at most {_size(a)} on disk; a fully fine-tuned copy of the model is "
            f"{_size(b)} (the base's `model.safetensors`), {b / a:.0f}x more per task."
        )
    text = TEMPLATE.format(
        base_params=base_params,
        sizes=sizes,
        date=env["date"],
        cpu=env["cpu"],
        cores=env["cores"],
        python=env["python"],
        torch=env["torch"],
        transformers=env["transformers"],
        tokenizers=env["tokenizers"],
        table="\n".join(lines),
        base_size=_size(any_run["base_weights_bytes"]),
        pooling=any_run["pooling"],
        epochs=_epochs(runs, order),
        full=_full(runs, order),
        threads=", ".join(sorted({str(runs[k]["torch_threads"]) for k in order})),
        per_epoch="\n".join(_history(runs[k]) for k in order),
    )
    out = Path(args.out)
    if out.exists() and NOTES in out.read_text():
        # Hand-written notes on the numbers survive regeneration.
        text += "\n" + NOTES + out.read_text().split(NOTES, 1)[1]
    out.write_text(text)
    print(f"wrote {args.out}")


NOTES = "## Notes"


def _epochs(runs: dict[str, Any], order: list[str]) -> str:
    parts = [
        f"{runs[k]['training']['epochs']} for {NAMES[runs[k]['task']]}"
        + (f" ({runs[k]['variant']})" if runs[k].get("variant") else "")
        for k in order
        if runs[k]["mode"] == "adapters"
    ]
    return ", ".join(parts)


def _full(runs: dict[str, Any], order: list[str]) -> str:
    parts = [
        f"{NAMES[runs[k]['task']]}: lr {runs[k]['training']['lr']:g}, {runs[k]['training']['epochs']} epochs, "
        f"batch {runs[k]['training']['batch_size']}"
        for k in order
        if runs[k]["mode"] == "full_finetune"
    ]
    return "; ".join(parts) or "not run"


def _history(r: dict[str, Any]) -> str:
    info = r["training"]
    main = info["main_metric"]
    parts = [
        f"epoch {h['epoch']}: loss {h['train_loss']:.3f}, {main} {h.get(main, float('nan')):.3f}"
        for h in info["history"]
    ]
    return f"- {r['key']} (selection metric {main}): " + "; ".join(parts)


TEMPLATE = """# Training results: adapters on all-MiniLM-L6-v2

Measured {date} on this project's build machine: {cores} CPU cores ({cpu}), shared with other jobs
(runs at `nice -n 10`, so the times are upper bounds). Python {python}, torch {torch}, transformers
{transformers}, tokenizers {tokenizers}. Base: the embedded all-MiniLM-L6-v2 (6 layers, hidden 384,
{base_params:,} parameters, `model.safetensors` {base_size}).

Reproduce: `nice -n 10 python scripts/train_glue.py run --tasks sst2,mrpc,rte,cola,full-mrpc --threads 1`
then `python scripts/train_glue.py report` (data from `../shared/data`; numbers below are from that run's
log, `benchmarks/results/training.json`).

{table}

{sizes}

Percentages: accuracy, F1 (of label 1; for RTE that is "not entailment") and Matthews correlation
(MCC, the metric that matters for CoLA, where 70% of the rows are "acceptable") on the reported split,
in %. "weights file" is what one
task adds on disk: `adapter.safetensors` (adapters + head, fp32) for adapters; the whole model for full
fine-tuning. Training time is the wall time of the optimisation loop only (tokenisation, per-epoch
selection scoring and model loading excluded); where recorded, the process CPU time is given too, which
depends less on the other jobs sharing the cores.

## Setup

- Adapters: the defaults of `adapterdeploy train`, i.e. the tutorial recipe: one bottleneck adapter
  after each of the 6 layers, reduction factor 16 (bottleneck 24), relu, init N(0, 1e-3), base frozen,
  AdamW, linear decay to 0, no warmup, gradient norm clipped at 1, batch 8, lr 1e-3, seed 42; head: one
  linear layer over {pooling} pooling (all-MiniLM-L6-v2 was trained as a mean-pooled sentence encoder).
  Epochs: {epochs}. Full fine-tuning: every weight of the base + the same head, no adapters,
  {full}.
- Threads: {threads} torch thread(s) per run, at `nice -n 10`, while other jobs used the same 2 cores
  (on this shared machine one thread per process was about 10x faster per step than two).
- Splits: the best epoch is chosen on a slice held out from the *train* file (SST-2 872 rows, MRPC 400,
  RTE 250, CoLA 500; never trained on), then scored once on the reported split, which plays no part in
  training or selection. SST-2, RTE, CoLA report the GLUE dev file (GLUE test labels are not public);
  MRPC reports its test file (it has no dev file).
- Subsets: SST-2 trains on a seeded random 8,000 of its 66,477 remaining train rows (CPU time); the
  other tasks on all remaining rows. Max length: 64 tokens for SST-2 and CoLA, 128 for MRPC and RTE.
- Checkpoints: `/work/ckpts/{{sst2,mrpc,rte,cola}}` (outside the repository).

## Per-epoch training loss and selection-slice metric

{per_epoch}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="train and score tasks, merging into the results JSON")
    run.add_argument("--tasks", default="sst2,mrpc,rte,cola,full-mrpc")
    run.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    run.add_argument("--base", default=None, help="base model dir (default: the embedded MiniLM)")
    run.add_argument("--ckpts", default="/work/ckpts")
    run.add_argument("--results", default=str(RESULTS / "training.json"))
    run.add_argument("--epochs", type=int, default=2)
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--lr", type=float, default=1e-3)
    run.add_argument("--full-lr", type=float, default=2e-5)
    run.add_argument("--pooling", default="mean")
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--variant", default="", help="tag for a second setting of a task (own key and checkpoint dir)")
    run.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    run.add_argument(
        "--adapter-drop",
        type=int,
        default=0,
        help="train adapters on layers >= K only (AdapterDrop trained for a K-layer shared trunk)",
    )
    run.set_defaults(func=cmd_run)
    rep = sub.add_parser("report", help="write the markdown table from the results JSON")
    rep.add_argument("--results", default=str(RESULTS / "training.json"))
    rep.add_argument("--out", default=str(RESULTS / "training.md"))
    rep.set_defaults(func=cmd_report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
