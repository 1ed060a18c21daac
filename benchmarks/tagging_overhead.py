"""Does the adapted graph's ``tokens`` output (for tagging tasks) slow sequence-only batches? And what does a
tagging row cost next to a sequence row?

Usage: python -m benchmarks.tagging_overhead [--out DIR] [--repeats 15] [--max-length 128]

One deployment on the embedded MiniLM (fp32) with a sequence task (``after_layer``, reduction 16, 2 labels) and
a tagging task (same adapter, 9 CoNLL-style labels), random weights (timing does not depend on them). The
"before" graph is a copy of that deployment whose ``adapted.onnx`` has the ``tokens`` graph output removed
(what the exporter wrote before tagging existed; onnxruntime then treats the last hidden state as an
intermediate). Systems, timed texts -> predictions (tokenization included), interleaved (every system once
per round, the order rotating), median CPU time of the calling thread, one intra-op thread, ``spin_us=0``:
  seq-before   sequence task on the copy without the tokens output
  seq-after    sequence task on the deployment with the tokens output (not requested by a sequence batch)
  tagging      the tagging task alone (requests tokens; words and offsets in Python)
  mixed        rows alternating the two tasks in one forward
at batch 1 and batch 32 (SST-2 dev sentences when ../shared/data is there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SST2_DEV = REPO.parent / "shared" / "data" / "sst2" / "dev.tsv"
TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


def _texts(n: int) -> list[str]:
    if SST2_DEV.is_file():
        return [line.split("\t")[0] for line in SST2_DEV.read_text().splitlines()[1 : n + 1]]
    return [f"sentence number {i} about a film that was rather good or bad" for i in range(n)]


def _checkpoint(base, out: Path, name: str, head) -> Path:
    import torch

    from adapterdeploy.config import AdapterConfig
    from adapterdeploy.models.checkpoint import checkpoint_from_model, save_checkpoint
    from adapterdeploy.models.encoder import EncoderWithAdapters

    torch.manual_seed(0)
    model = EncoderWithAdapters(base, AdapterConfig(init_std=1e-2), head)
    return save_checkpoint(checkpoint_from_model(model, name, max_length=128, text_pair=False), out, force=True)


def _strip_tokens_output(src: Path, dst: Path) -> None:
    """A copy of the deployment whose fp32 adapted graph lacks the ``tokens`` output (checksum updated)."""
    import dataclasses

    import onnx

    from adapterdeploy.artifacts import Manifest, file_entry

    shutil.copytree(src, dst)
    m = Manifest.read(dst)
    rel = m.featurizer.variants["fp32"].adapted
    model = onnx.load(str(dst / rel))
    keep = [o for o in model.graph.output if o.name != "tokens"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save(model, str(dst / rel))
    files = {**m.files, rel: file_entry(dst / rel)}
    dataclasses.replace(m, files=files).write(dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write results.json here")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args()

    from adapterdeploy.config import HeadConfig
    from adapterdeploy.exporter.deployment import export_deployment
    from adapterdeploy.models.base import default_base_dir, load_base
    from adapterdeploy.runtime import Deployment

    work = Path(tempfile.mkdtemp(prefix="tagging-bench-"))
    base = load_base(None)
    seq = _checkpoint(base, work / "seq", "seq", HeadConfig(num_labels=2))
    tag_head = HeadConfig(problem_type="token_classification", num_labels=len(TAGS), labels=TAGS)
    tag = _checkpoint(base, work / "ner", "ner", tag_head)
    after = work / "after"
    export_deployment(default_base_dir(), [seq, tag], after, precisions=("fp32",), max_length=args.max_length)
    before = work / "before"
    _strip_tokens_output(after, before)
    opts = {"threads": 1, "spin_us": 0}
    deps = {"before": Deployment.open(before, **opts), "after": Deployment.open(after, **opts)}
    texts = _texts(32)
    results: dict[str, dict[str, float]] = {}
    for batch in (1, 32):
        rows = texts[:batch]
        systems = {
            "seq-before": lambda rows=rows: deps["before"].predict(rows, task="seq"),
            "seq-after": lambda rows=rows: deps["after"].predict(rows, task="seq"),
            "tagging": lambda rows=rows: deps["after"].predict(rows, task="ner"),
            "mixed": lambda rows=rows: deps["after"].predict_mixed(
                [("seq" if i % 2 else "ner", r) for i, r in enumerate(rows)]
            ),
        }
        for f in systems.values():  # warm-up
            f()
        times: dict[str, list[float]] = {k: [] for k in systems}
        names = list(systems)
        for r in range(args.repeats):  # the order rotates each round: no system is always first
            for name in names[r % len(names) :] + names[: r % len(names)]:
                f = systems[name]
                t0 = time.thread_time()
                f()
                times[name].append((time.thread_time() - t0) * 1000)
        med = {k: round(statistics.median(v), 3) for k, v in times.items()}
        med["ratio_seq_after_over_before"] = round(med["seq-after"] / med["seq-before"], 4)
        results[f"batch{batch}"] = med
        print(f"batch {batch}: {json.dumps(med)}")
    load = os.getloadavg()
    out = {
        "unit": "median ms of CPU time (time.thread_time) per call, 1 intra-op thread, spin_us=0",
        "repeats": args.repeats,
        "max_length": args.max_length,
        "load_average": [round(x, 2) for x in load],
        "results": results,
    }
    print(f"load average at the end: {load}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    for d in deps.values():
        d.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
