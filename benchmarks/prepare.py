"""Everything the systems load, built once per model in the work directory (cached between runs).

Models:
    tiny      adapterdeploy.models.tiny.build_tiny_base (hidden 32, 4 layers): ``--quick`` only
    minilm    the embedded all-MiniLM-L6-v2 (real weights)
    bertbase  a randomly initialised BERT-base shape (768 hidden, 12 layers, 12 heads, FFN 3072) with
              MiniLM's tokenizer, i.e. bert-base-uncased's vocabulary, so texts tokenize as for BERT-base.
              Timing does not depend on weight values.

Per model: random-weight task checkpoints (our default adapter: after_layer, reduction factor 16, relu;
adapter weights drawn N(0, 0.02) so they are not ~0), the optimum exports (plain model with a
classification head, and the whole model with one task's adapters), and deployments (our exporter).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.peak import ModelShape

__all__ = ["MODELS", "Prepared", "prepare_model"]

MODELS = ("tiny", "minilm", "bertbase")
DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
# Where each GLUE task is scored: its dev split (MRPC has none here: its test split).
DEV_FILES = {"sst2": "sst2/dev.tsv", "mrpc": "mrpc/test.tsv", "rte": "rte/dev.tsv", "cola": "cola/dev.tsv"}
ADAPTER_STD = 0.02
REDUCTION_FACTOR = 16.0
MAX_LENGTH = 128


@dataclass
class Prepared:
    """Paths and facts about one model's artifacts."""

    key: str
    work: Path
    base_dir: Path
    tokenizer: Path
    shape: ModelShape
    num_layers: int
    hidden: int
    max_length: int = MAX_LENGTH

    @property
    def tasks_dir(self) -> Path:
        return self.work / "tasks"

    def task_dirs(self, n: int, *, pairs: bool = False) -> list[Path]:
        """The first ``n`` random task checkpoints (created on first use): ``t0000``.. take single texts,
        ``p0000``.. are the same weights taking text pairs (the runtime checks a task's input kind)."""
        make_random_tasks(self, n)
        if not pairs:
            return [self.tasks_dir / f"t{i:04d}" for i in range(n)]
        make_pair_tasks(self, n)
        return [self.tasks_dir / f"p{i:04d}" for i in range(n)]

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "base_dir": str(self.base_dir),
            "layers": self.num_layers,
            "hidden": self.hidden,
            "shape": self.shape.to_dict(),
            "max_length": self.max_length,
        }


def _log(msg: str) -> None:
    print(f"[prepare] {msg}", flush=True)


def _bert_base_shape(out: Path) -> Path:
    """A random BERT-base-shaped encoder with bert-base-uncased's vocabulary (MiniLM's tokenizer files)."""
    import torch
    from transformers import BertConfig, BertModel

    from adapterdeploy.models.base import default_base_dir

    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    src = default_base_dir()
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, tmp / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(tmp), safe_serialization=True)
    tmp.rename(out)
    return out


def _base_dir(key: str, work: Path) -> Path:
    if key == "tiny":
        from adapterdeploy.models.tiny import build_tiny_base

        out = work / "base"
        if not (out / "config.json").is_file():
            build_tiny_base(out, "bert")
        return out
    if key == "minilm":
        from adapterdeploy.models.base import default_base_dir

        return default_base_dir()
    if key == "bertbase":
        return _bert_base_shape(work / "base")
    raise ValueError(f"unknown model {key!r}; choose one of {', '.join(MODELS)}")


def prepare_model(key: str, work_root: Path) -> Prepared:
    work = work_root / key
    work.mkdir(parents=True, exist_ok=True)
    base_dir = _base_dir(key, work)
    cfg = json.loads((base_dir / "config.json").read_text())
    layers, hidden = int(cfg["num_hidden_layers"]), int(cfg["hidden_size"])
    shape = ModelShape(
        layers=layers,
        hidden=hidden,
        intermediate=int(cfg["intermediate_size"]),
        bottleneck=max(1, int(hidden // REDUCTION_FACTOR)),
        adapter_sites=1,
        adapted_layers=layers,
    )
    max_length = min(MAX_LENGTH, int(cfg["max_position_embeddings"]))
    return Prepared(key, work, base_dir, base_dir / "tokenizer.json", shape, layers, hidden, max_length)


def make_random_tasks(p: Prepared, n: int) -> None:
    """Checkpoints ``t0000 .. t{n-1}``: one model, re-drawn per task (seeded by the task index)."""
    missing = [i for i in range(n) if not (p.tasks_dir / f"t{i:04d}" / "task.json").is_file()]
    if not missing:
        return
    import torch

    from adapterdeploy.config import AdapterConfig, HeadConfig
    from adapterdeploy.models.base import load_base
    from adapterdeploy.models.checkpoint import checkpoint_from_model, save_checkpoint
    from adapterdeploy.models.encoder import EncoderWithAdapters

    t0 = time.perf_counter()
    base = load_base(p.base_dir)
    model = EncoderWithAdapters(base, AdapterConfig(reduction_factor=REDUCTION_FACTOR, activation="relu"), HeadConfig())
    for i in missing:
        torch.manual_seed(1000 + i)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.startswith("adapters."):
                    param.normal_(0.0, ADAPTER_STD)
                elif name.startswith("head.") and name.endswith("weight"):
                    param.normal_(0.0, 0.05)
        ckpt = checkpoint_from_model(model, f"t{i:04d}", max_length=p.max_length, text_pair=False)
        save_checkpoint(ckpt, p.tasks_dir / f"t{i:04d}", force=True)
    _log(f"{p.key}: {len(missing)} random task checkpoints in {time.perf_counter() - t0:.1f}s")


# The AdapterHub configs users bring (issue 15): Pfeiffer (one adapter per layer, after the FFN) and Houlsby
# (one after attention and one after the FFN). Our own default placement is ``after_layer``.
ADAPTERHUB_SIGNATURES = ("seq_bn", "double_seq_bn")


def adapterhub_checkpoints(p: Prepared, kind: str) -> list[Path]:
    """``t0000`` (single texts) and ``p0000`` (pairs) of one AdapterHub signature, made the way a user's are:
    the adapters library's own config (reduction factor 16, relu, random weights), ``save_adapter`` with
    its classification head, then our ``import_adapterhub``. Timing does not depend on the weights' values."""
    out = p.work / f"ckpt-adapterhub-{kind}"
    dirs = [out / "t0000", out / "p0000"]
    if all((d / "task.json").is_file() for d in dirs):
        return dirs
    import tempfile

    import adapters
    import torch

    from adapterdeploy.models.adapterhub import import_adapterhub
    from adapterdeploy.models.base import load_base
    from adapterdeploy.models.checkpoint import save_checkpoint

    t0 = time.perf_counter()
    configs = {"seq_bn": adapters.SeqBnConfig, "double_seq_bn": adapters.DoubleSeqBnConfig}
    model = adapters.AutoAdapterModel.from_pretrained(str(p.base_dir), local_files_only=True)
    model.add_adapter("t0000", config=configs[kind](reduction_factor=REDUCTION_FACTOR, non_linearity="relu"))
    model.add_classification_head("t0000", num_labels=2, layers=1)
    torch.manual_seed(7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ("adapters.t0000" in name and param.dim() == 2) or ("heads.t0000" in name and name.endswith("weight")):
                param.normal_(0.0, ADAPTER_STD)
    base = load_base(p.base_dir)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_adapter(tmp, "t0000", with_head=True)
        for d, pair in zip(dirs, (False, True), strict=True):
            ckpt = import_adapterhub(base, tmp, task_name=d.name, max_length=p.max_length, text_pair=pair)
            save_checkpoint(ckpt, d, force=True)
    _log(f"{p.key}: AdapterHub {kind} checkpoints (adapters library -> import) in {time.perf_counter() - t0:.1f}s")
    return dirs


def signature_deployment(p: Prepared, kind: str) -> Path:
    """The main deployment's shape (t0000 + p0000, fp32 + int8) for an AdapterHub signature."""
    return deployment(
        p, 0, checkpoints=adapterhub_checkpoints(p, kind), name=f"sig-{kind}", precisions=("fp32", "int8")
    )


def make_pair_tasks(p: Prepared, n: int) -> None:
    """``p0000 ..``: copies of ``t0000 ..`` marked ``text_pair`` (same weights, pair inputs)."""
    import dataclasses

    from adapterdeploy.models.checkpoint import load_checkpoint, save_checkpoint

    for i in range(n):
        out = p.tasks_dir / f"p{i:04d}"
        if not (out / "task.json").is_file():
            ckpt = load_checkpoint(p.tasks_dir / f"t{i:04d}")
            save_checkpoint(dataclasses.replace(ckpt, name=f"p{i:04d}", text_pair=True), out, force=True)


def optimum_export(p: Prepared, kind: str) -> Path:
    """optimum's ONNX export + O3 of ``plain`` (BertForSequenceClassification) or ``task`` (t0000 whole model).

    ``plain`` is the target reference: the base with a classification head and no adapters. ``task`` is
    "the common way" to ship one adapter task: the whole model, adapters included, one file per task.
    Both go through ``optimum.exporters.onnx.onnx_export_from_model(..., optimize="O3")``.
    """
    out = p.work / f"optimum-{kind}"
    if (out / "model.onnx").is_file():
        return out / "model.onnx"
    import torch
    from optimum.exporters.onnx import onnx_export_from_model
    from transformers import BertForSequenceClassification, BertPreTrainedModel
    from transformers.modeling_outputs import SequenceClassifierOutput

    t0 = time.perf_counter()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if kind == "plain":
        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(str(p.base_dir), num_labels=2, local_files_only=True)
    elif kind == "task":
        from adapterdeploy.models.base import load_base
        from adapterdeploy.models.checkpoint import load_checkpoint

        base = load_base(p.base_dir)
        enc = load_checkpoint(p.task_dirs(1)[0]).build_model(base)

        class AdapterTaskModel(BertPreTrainedModel):
            """Our EncoderWithAdapters seen as a transformers sequence classifier, for optimum's exporter."""

            def __init__(self, config: Any, encoder: torch.nn.Module) -> None:
                super().__init__(config)
                self.encoder = encoder

            def forward(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None) -> Any:
                return SequenceClassifierOutput(logits=self.encoder(input_ids, attention_mask, token_type_ids))

        # optimum infers the library from the class's module; this wrapper is a transformers model.
        AdapterTaskModel.__module__ = "transformers.models.bert.adapterdeploy_bench"
        model = AdapterTaskModel(base.model.config, enc)
    else:
        raise ValueError(kind)
    model.eval()
    onnx_export_from_model(model, str(tmp), task="text-classification", optimize="O3", do_validation=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    _log(f"{p.key}: optimum export ({kind}, O3) in {time.perf_counter() - t0:.1f}s")
    return out / "model.onnx"


def _export_fn() -> Any:
    try:
        from adapterdeploy.exporter import export_deployment
    except ImportError:
        from adapterdeploy.exporter.deployment import export_deployment
    return export_deployment


def ours_available() -> str | None:
    """None when the exporter and runtime are in this build, else why not (the sections then skip ours)."""
    try:
        _export_fn()
        from adapterdeploy.runtime import Deployment  # noqa: F401
    except ImportError as exc:
        return f"adapterdeploy's exporter/runtime are not importable in this build ({exc})"
    return None


def deployment(
    p: Prepared,
    n_tasks: int,
    *,
    pairs: int = 0,
    adapter_drop: int = 0,
    precisions: tuple[str, ...] = ("fp32", "int8"),
    checkpoints: list[Path] | None = None,
    name: str | None = None,
    **kwargs: Any,
) -> Path:
    """Export (once) a deployment of the first ``n_tasks`` random single-text tasks and ``pairs`` pair tasks
    (or of ``checkpoints``) at AdapterDrop K; tasks with adapters below K are deployed without them."""
    tag = name or (f"n{n_tasks}" + (f"p{pairs}" if pairs else ""))
    out = p.work / f"dep-{tag}-k{adapter_drop}-{'-'.join(precisions)}"
    if (out / "deployment.json").is_file():
        return out
    export_deployment = _export_fn()
    t0 = time.perf_counter()
    ckpts = checkpoints
    if ckpts is None:
        ckpts = p.task_dirs(n_tasks) + (p.task_dirs(pairs, pairs=True) if pairs else [])
    if adapter_drop > 0:
        kwargs.setdefault("allow_drop", True)
    export_deployment(p.base_dir, ckpts, out, adapter_drop=adapter_drop, precisions=precisions, **kwargs)
    _log(f"{p.key}: deployment {out.name} ({len(ckpts)} tasks) in {time.perf_counter() - t0:.1f}s")
    return out


def _cls_only_encoder(base: Any) -> Any:
    """Embeddings + layers [0, L-1), then the last layer at token 0 only (keys and values of every token):
    what a deployment's adapted graph computes with ``cls_only`` fed, minus the adapters. Its ``hidden`` is
    ``[B, 1, H]``, the CLS state. (A factory: this module imports torch only when it builds graphs.)"""
    import torch

    from adapterdeploy.exporter.featurizer import (
        Trunk,
        _extended_mask,
        copy_encoder,
        foldable_key_value,
        query_attention,
    )

    class ClsOnlyEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            hf = copy_encoder(base)
            self.trunk = Trunk(base, base.num_layers - 1, hf)
            self.hf = hf
            self.last = hf.encoder.layer[base.num_layers - 1]

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            h = self.trunk(input_ids, attention_mask, token_type_ids)
            ext = _extended_mask(self.hf, attention_mask, h.dtype)
            first = torch.zeros(1, dtype=torch.long)
            # The folded form when the deployment's adapted graph would take it (design note 31).
            folded = torch.tensor(True) if foldable_key_value(self.last, (), base.num_layers - 1) else None
            return self.last.feed_forward_chunk(query_attention(self.last.attention, h, ext, first, folded))

    return ClsOnlyEncoder()


def noadapter_featurizer(p: Prepared, optimization: str, precision: str, *, cls_only: bool = False) -> Path:
    """Our featurizer graph WITHOUT adapters: embeddings + all L layers, exported, fused and quantized
    exactly as the exporter does it for a deployment (its own Trunk module, export_trunk, optimize_graph,
    quantize_int8), so that the only difference to a deployment's graphs is the adapters.

    ``optimization`` is the deployment variant's choice (``plain`` / ``fused``, maybe ``+int8-dynamic``).
    ``cls_only``: the last layer at the first token only (the exporter's ``query_attention``), as the runtime
    runs a deployment whose adapted graph has the ``cls_only`` input for CLS heads; without it the reference
    would do work the deployment skips, and the "overhead" would hide the adapters' cost.
    """
    fused = optimization.startswith("fused")
    tag = ("fused" if fused else "plain") + (".cls" if cls_only else "")
    name = f"noadapter.{tag}{'.int8' if precision == 'int8' else ''}.onnx"
    out = p.work / "noadapter" / name
    if out.is_file():
        return out
    from adapterdeploy.exporter.featurizer import Trunk
    from adapterdeploy.exporter.onnx_graphs import export_trunk
    from adapterdeploy.exporter.optimize import optimize_graph
    from adapterdeploy.exporter.quantize import quantize_int8
    from adapterdeploy.models.base import load_base

    out.parent.mkdir(parents=True, exist_ok=True)
    plain = p.work / "noadapter" / f"noadapter.{'plain.cls' if cls_only else 'plain'}.onnx"
    if not plain.is_file():
        base = load_base(p.base_dir)
        module = _cls_only_encoder(base) if cls_only else Trunk(base, base.num_layers)
        export_trunk(module, plain, opset=17, vocab_size=int(base.model.config.vocab_size))  # type: ignore[arg-type]
    fp32 = plain
    if fused:
        fp32 = p.work / "noadapter" / f"noadapter.{tag}.onnx"
        if not fp32.is_file():
            cfg = json.loads((p.base_dir / "config.json").read_text())
            optimize_graph(plain, fp32, num_heads=int(cfg["num_attention_heads"]), hidden_size=p.hidden)
    if precision == "int8":
        quantize_int8(fp32, out)
    return out


def main_deployment(p: Prepared, standalone: bool = True) -> Path:
    """The deployment the speed sections share: t0000 (single texts) + p0000 (pairs), fp32 + int8, and the
    standalone per-task files unless ``standalone`` is False (``--quick``: they only feed the sizes table)."""
    return deployment(
        p,
        0,
        checkpoints=[*p.task_dirs(1), *p.task_dirs(1, pairs=True)],
        name="main" if standalone else "main-nostandalone",
        precisions=("fp32", "int8"),
        standalone=standalone,
    )


def k_deployment(p: Prepared, k: int, standalone: bool = True) -> Path:
    """AdapterDrop K: the main deployment for K = 0, else t0000 exported with adapter_drop=K (fp32)."""
    if k == 0:
        return main_deployment(p, standalone)
    return deployment(p, 0, checkpoints=p.task_dirs(1), adapter_drop=k, precisions=("fp32",), name="k")


def clone_tasks(p: Prepared, dep: Path, template: str, prefix: str, n: int) -> list[Path]:
    """``n`` more task pieces for ``dep``'s featurizer, made from the exported ``template`` piece.

    Why: exporting a task (PyTorch reference, parity check, head graph) takes about a second, so 1000
    tasks would take longer than the whole benchmark. A clone is written in the exporter's task-piece
    format (task.json with sizes and sha256, adapters.safetensors with the same keys, shapes, dtypes and
    metadata) with the template's head and NEW random adapter rows (normal, the template tensor's std,
    seeded by index); the runtime loads it through its ordinary path (task.json, fingerprint, checksums,
    safetensors, bank rows). Its task.json says it is a clone; it is not parity-checked.
    """
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from adapterdeploy.artifacts import sha256_file

    src = dep / "tasks" / template
    root = p.work / "clones" / f"{dep.name}-{prefix}"
    spec = json.loads((src / "task.json").read_text())
    with safe_open(str(src / "adapters.safetensors"), "np") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    out = []
    for i in range(n):
        name = f"{prefix}{i:04d}"
        d = root / name
        out.append(d)
        if (d / "task.json").is_file():
            continue
        tmp = root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        rng = np.random.default_rng(i)
        new = {
            k: (rng.normal(0.0, float(v.std()) or 1e-3, v.shape).astype(v.dtype) if k.startswith("bank.") else v)
            for k, v in tensors.items()
        }
        save_file(new, str(tmp / "adapters.safetensors"), metadata={**meta, "task": name})
        files = {}
        for fname in spec["files"]:
            if fname != "adapters.safetensors":
                shutil.copy(src / fname, tmp / fname)
            files[fname] = {"size": (tmp / fname).stat().st_size, "sha256": sha256_file(tmp / fname)}
        clone = {
            **spec,
            "name": name,
            "files": files,
            "parity": {"note": f"benchmark clone of {template} with random adapter rows; not exported"},
        }
        (tmp / "task.json").write_text(json.dumps(clone, indent=2) + "\n")
        tmp.rename(d)
    return out


def find_real_tasks(p: Prepared, ckpt_dir: Path) -> list[dict[str, Any]]:
    """Trained task checkpoints for ``p``'s base under ``ckpt_dir`` (one per GLUE task), with their eval file.

    A checkpoint counts when its task.json is an adapterdeploy task checkpoint for this very base
    (fingerprint) and its name or folder names sst2, mrpc, rte or cola.
    """
    from adapterdeploy.models.base import load_base

    if not ckpt_dir.is_dir():
        return []
    fingerprint = load_base(p.base_dir).fingerprint
    found: list[dict[str, Any]] = []
    # os.walk with followlinks: a folder of symlinks to checkpoints (one per task, picked from several runs)
    # is a natural way to choose them, and Path.rglob (Python 3.11) does not enter symlinked folders.
    metas = sorted(
        Path(root) / "task.json" for root, _, files in os.walk(ckpt_dir, followlinks=True) if "task.json" in files
    )
    for meta in metas:
        try:
            data = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        same_base = data.get("base", {}).get("fingerprint") == fingerprint
        if data.get("format") != "adapterdeploy.task-checkpoint" or not same_base:
            continue
        for ds, rel in DEV_FILES.items():
            if ds in str(data.get("name", "")).lower() or ds in meta.parent.name.lower():
                if (DATA_DIR / rel).is_file() and not any(f["dataset"] == ds for f in found):
                    found.append({"name": data["name"], "dataset": ds, "ckpt": meta.parent, "eval": DATA_DIR / rel})
                break
    return found


def drop_deployments(p: Prepared, k: int, real: list[Path], standalone: bool = True) -> tuple[Path, Path | None]:
    """(deployment holding t0000, deployment holding the trained ``real`` tasks) at AdapterDrop K.

    One export per K serves both the fan-out timing (t0000 and its clones) and the accuracy of the trained
    tasks (fp32, plus int8 at K = 0). When the trained tasks' adapter signature differs from t0000's (they
    cannot share a featurizer), they get their own deployment.
    """
    from adapterdeploy.errors import ConfigError, FingerprintMismatchError

    if not real:
        return k_deployment(p, k, standalone), None
    precs = ("fp32", "int8") if k == 0 else ("fp32",)
    try:
        dep = deployment(p, 0, checkpoints=[*p.task_dirs(1), *real], adapter_drop=k, precisions=precs, name="drop")
    except (ConfigError, FingerprintMismatchError) as exc:
        _log(f"{p.key}: trained tasks get their own deployment at K={k} ({exc})")
    else:
        return dep, dep
    real_dep = deployment(p, 0, checkpoints=real, adapter_drop=k, precisions=precs, name="real")
    return k_deployment(p, k, standalone), real_dep
