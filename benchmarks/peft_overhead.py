"""PEFT LoRA / IA3 tasks on MiniLM: overhead vs the plain model, mixed batches vs single-task, vs eager PEFT.

Usage: python -m benchmarks.peft_overhead [--out DIR] [--repeats 15] [--clock cpu|wall] [--rank 8]

Tasks, all on the embedded MiniLM with random weights (the timing does not depend on their values): a PEFT
LoRA adapter (``r`` = --rank, alpha 2r, on query + value: PEFT's default targets for BERT) and an IA3 adapter
(PEFT's defaults: key, value, output.dense), both built with the ``peft`` library, ``save_pretrained`` and
imported with ``import_peft``; one bottleneck task (``after_layer``, reduction 16). Two deployments (fp32):
``lora-only`` (the LoRA task alone, with ``--standalone``) and ``mixed`` (LoRA + IA3 + bottleneck).

Systems, each timed from texts to outputs (tokenization included) on the same texts (SST-2 dev sentences):
  plain        the LoRA task's standalone graph: LoRA folded into the weights, so exactly the plain model's
               nodes (base + head), in one onnxruntime session
  ours-lora    Deployment.predict on the lora-only deployment (LoRA gathered per row from the bank)
  single       Deployment.predict of the LoRA task alone on the mixed deployment
  mixed        Deployment.predict_mixed with rows cycling LoRA, IA3 and bottleneck tasks, same deployment
  peft-eager   PEFT's own PeftModel (PyTorch eager, LoRA unmerged), same adapter
Medians of interleaved runs (every system once per round). ``--clock cpu`` (default): CPU time of the calling
thread with one intra-op thread everywhere (onnxruntime and torch), which other processes on a shared
machine barely disturb; ``--clock wall``: wall time, same single thread.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from adapterdeploy.exporter.optimize import interleaved_medians

REPO = Path(__file__).resolve().parent.parent
SST2_DEV = REPO.parent / "shared" / "data" / "sst2" / "dev.tsv"


def _texts(n: int) -> list[str]:
    if SST2_DEV.is_file():
        lines = SST2_DEV.read_text().splitlines()[1:]
        return [line.split("\t")[0] for line in lines[:n]]
    return [f"sentence number {i} about a film that was rather good or bad" for i in range(n)]


def _bottleneck_task(base, out: Path) -> Path:
    import torch

    from adapterdeploy.config import AdapterConfig, HeadConfig
    from adapterdeploy.models.checkpoint import checkpoint_from_model, save_checkpoint
    from adapterdeploy.models.encoder import EncoderWithAdapters

    torch.manual_seed(0)
    model = EncoderWithAdapters(base, AdapterConfig(init_std=1e-2), HeadConfig(num_labels=2))
    return save_checkpoint(checkpoint_from_model(model, "bn", max_length=128, text_pair=False), out, force=True)


def _peft_adapter(base_dir: Path, out: Path, kind: str, rank: int):
    import torch
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)
    hf = AutoModelForSequenceClassification.from_pretrained(str(base_dir), num_labels=2, attn_implementation="eager")
    if kind == "lora":
        cfg = LoraConfig(task_type="SEQ_CLS", r=rank, lora_alpha=2 * rank, target_modules=["query", "value"])
    else:
        cfg = IA3Config(task_type="SEQ_CLS")
    model = get_peft_model(hf, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # PEFT initialises B to zero; give the delta a real value
                p.normal_(0.0, 0.02)
    model.save_pretrained(str(out))
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Directory for peft_overhead.json / .md")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch
    from tokenizers import Tokenizer

    from adapterdeploy.exporter.deployment import export_deployment
    from adapterdeploy.models.base import default_base_dir, load_base
    from adapterdeploy.models.checkpoint import save_checkpoint
    from adapterdeploy.models.peft_import import import_peft
    from adapterdeploy.runtime.deployment import Deployment

    torch.set_num_threads(1)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    base_dir = default_base_dir()
    base = load_base(base_dir)
    hf_tok = base.load_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        peft_model = _peft_adapter(base_dir, work / "a-lora", "lora", args.rank)
        _peft_adapter(base_dir, work / "a-ia3", "ia3", args.rank)
        lora = save_checkpoint(import_peft(base, work / "a-lora", "lora"), work / "ck" / "lora")
        ia3 = save_checkpoint(import_peft(base, work / "a-ia3", "ia3"), work / "ck" / "ia3")
        bn = _bottleneck_task(base, work / "ck" / "bn")
        solo = export_deployment(base_dir, [lora], work / "solo", standalone=True)
        export_deployment(base_dir, [lora, ia3, bn], work / "mixed")
        plain_path = work / "solo" / solo.standalone["lora"]["fp32"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
        plain = ort.InferenceSession(str(plain_path), opts, providers=["CPUExecutionProvider"])
        tok = Tokenizer.from_file(str(work / "solo" / "tokenizer.json"))
        tok.enable_truncation(128)
        tok.enable_padding()
        rows: list[dict] = []
        with (
            Deployment.open(work / "solo", threads=1, spin_us=0) as d_solo,
            Deployment.open(work / "mixed", threads=1, spin_us=0) as d_mixed,
        ):
            for batch in (1, 32):
                texts = _texts(batch)
                tasks = ["lora", "ia3", "bn"]
                mixed_rows = [(tasks[i % 3], t) for i, t in enumerate(texts)]

                def run_plain(texts=texts):
                    enc = tok.encode_batch(texts)
                    feed = {
                        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
                    }
                    return plain.run(None, feed)

                def run_peft(texts=texts):
                    enc = hf_tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
                    with torch.no_grad():
                        return peft_model(**enc).logits

                fns = {
                    "plain": run_plain,
                    "ours-lora": lambda texts=texts: d_solo.predict(texts, task="lora"),
                    "single": lambda texts=texts: d_mixed.predict(texts, task="lora"),
                    "mixed": lambda rows=mixed_rows: d_mixed.predict_mixed(rows),
                    "peft-eager": run_peft,
                }
                ms = interleaved_medians(
                    fns, repeats=args.repeats if batch == 1 else max(5, args.repeats // 2), warmup=1, clock=clock
                )
                rows.append(
                    {
                        "batch": batch,
                        "ms": ms,
                        "lora_overhead_vs_plain": round(ms["ours-lora"] / ms["plain"] - 1, 4),
                        "mixed_vs_single": round(ms["mixed"] / ms["single"], 4),
                        "peft_eager_vs_ours": round(ms["peft-eager"] / ms["ours-lora"], 4),
                    }
                )
    result = {
        "clock": args.clock,
        "threads": 1,
        "rank": args.rank,
        "repeats": args.repeats,
        "loadavg_after": list(os.getloadavg()),
        "rows": rows,
    }
    lines = [
        f"clock: {args.clock} (ms per call, 1 intra-op thread, medians of interleaved runs); "
        f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        "",
        "| batch | plain | ours-lora | single (mixed dep.) | mixed L+IA3+BN | peft-eager | LoRA overhead vs plain "
        "| mixed / single | PEFT eager / ours |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        m = r["ms"]
        lines.append(
            f"| {r['batch']} | {m['plain']} | {m['ours-lora']} | {m['single']} | {m['mixed']} | "
            f"{m['peft-eager']} | {r['lora_overhead_vs_plain']:+.1%} | {r['mixed_vs_single']:.2f}x | "
            f"{r['peft_eager_vs_ours']:.2f}x |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "peft_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "peft_overhead.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
