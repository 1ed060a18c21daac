"""What a Stack task costs: our runtime (stacked vs plain task) against the adapters library's eager ``Stack``.

Run: ``python -m benchmarks.stack_cost --out DIR`` (MiniLM, the embedded base; builds the adapters with the
adapters library, random weights: speed does not depend on them). Measures CPU time per call
(``time.thread_time``, one thread everywhere: torch.set_num_threads(1), onnxruntime threads=1, no spinning),
median of interleaved runs, so other processes on a shared machine barely move the figures. Batches: 1 text
and 8 texts of ~32 tokens, one task.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

TEXTS = ["the company said its shares were up two percent after the new film was a great story and more"] * 8


def main() -> None:
    import adapters as ah
    import torch
    from adapters.composition import Stack

    from adapterdeploy.exporter.deployment import export_deployment
    from adapterdeploy.exporter.optimize import interleaved_medians
    from adapterdeploy.models.adapterhub import import_adapterhub
    from adapterdeploy.models.adapterhub_stack import import_adapterhub_stack
    from adapterdeploy.models.base import default_base_dir, load_base
    from adapterdeploy.models.checkpoint import save_checkpoint
    from adapterdeploy.runtime.deployment import Deployment

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    base_dir = default_base_dir()
    base = load_base(base_dir)
    model = ah.AutoAdapterModel.from_pretrained(str(base_dir), attn_implementation="eager")
    model.add_adapter("lang", config=ah.SeqBnConfig(reduction_factor=2))
    model.add_adapter("task", config=ah.SeqBnConfig(reduction_factor=16))
    model.add_classification_head("task", num_labels=2)
    model.eval()
    model.save_adapter(str(out / "lang"), "lang", with_head=False)
    model.save_adapter(str(out / "task"), "task", with_head=True)
    stacked = save_checkpoint(
        import_adapterhub_stack(base, out / "lang", out / "task", task_name="stacked"), out / "ck_stacked", force=True
    )
    plain = save_checkpoint(import_adapterhub(base, out / "task", task_name="plain"), out / "ck_plain", force=True)
    export_deployment(base_dir, [stacked, plain], out / "deploy", max_length=64, force=True)
    model.set_active_adapters(Stack("lang", "task"))
    model.active_head = "task"
    tok = base.load_tokenizer()
    dep = Deployment.open(out / "deploy", threads=1, spin_us=0)
    results = {}
    for n in (1, 8):
        texts = TEXTS[:n]
        enc = tok(texts, padding=True, return_tensors="pt")

        def eager(enc=enc):
            with torch.no_grad():
                return model(**enc).logits

        fns = {
            "adapters library eager Stack": eager,
            "adapterdeploy stacked task": lambda texts=texts: dep.predict(texts, task="stacked"),
            "adapterdeploy plain task": lambda texts=texts: dep.predict(texts, task="plain"),
        }
        results[f"batch {n}"] = interleaved_medians(fns, clock=time.thread_time)
    dep.close()
    print(json.dumps(results, indent=2))
    (out / "stack_cost.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
