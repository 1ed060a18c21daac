"""``python -m benchmarks.coldstart SYSTEM SPEC_JSON``: a new process, from nothing to its first prediction.

The parent starts the clock before spawning the interpreter and stops it when this prints ``READY``
right after the first prediction, so the figure includes interpreter start-up and every import, as a
user's fresh process (a new server replica, a CLI call, a serverless function) pays it. Nothing heavy is
imported at module level; each system imports what it needs, as its own user code would.
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["main"]


def _ours(spec: dict[str, Any]) -> object:
    from adapterdeploy.runtime import Deployment

    dep = Deployment.open(spec["deployment"], precision=spec.get("precision", "fp32"), threads=spec["threads"])
    return dep.predict([spec["text"]], task=spec["task"])


def _ort_plain(spec: dict[str, Any]) -> object:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    so = ort.SessionOptions()
    so.intra_op_num_threads = spec["threads"]
    sess = ort.InferenceSession(spec["model_path"], so, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(spec["tokenizer"])
    enc = tok.encode(spec["text"])
    feed = {
        "input_ids": np.array([enc.ids], dtype=np.int64),
        "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
        "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
    }
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feed.items() if k in names})


def _optimum(spec: dict[str, Any]) -> object:
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    model = ORTModelForSequenceClassification.from_pretrained(spec["model_dir"])
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    return model(**tok([spec["text"]], return_tensors="pt")).logits


def _torch_eager(spec: dict[str, Any]) -> object:
    import torch

    torch.set_num_threads(spec["threads"])
    from adapterdeploy.models.base import load_base
    from adapterdeploy.models.checkpoint import load_checkpoint

    base = load_base(spec["base_dir"])
    model = load_checkpoint(spec["ckpt_dir"]).build_model(base)
    tok = base.load_tokenizer()
    with torch.inference_mode():
        return model(**tok([spec["text"]], return_tensors="pt")).softmax(-1)


SYSTEMS = {"ours": _ours, "ort_plain": _ort_plain, "optimum": _optimum, "torch_eager": _torch_eager}


def main() -> None:
    system, spec = sys.argv[1], json.loads(sys.argv[2])
    SYSTEMS[system](spec)
    print("READY", flush=True)


if __name__ == "__main__":
    main()
