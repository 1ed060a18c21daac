"""PEFT LoRA / IA3 adapters made with the peft library: import parity, refusals, and the banked round trip.

Every adapter is built with ``peft`` on a tiny random base with all LoRA / IA3 / head parameters randomised,
saved with ``save_pretrained``, imported, and compared with PEFT's own model (``PeftModel.from_pretrained``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from adapterdeploy.cli import main
from adapterdeploy.errors import (
    AdapterDeployError,
    ArtifactError,
    ConfigError,
    FingerprintMismatchError,
    UnsupportedAdapterError,
)
from adapterdeploy.models.base import load_base
from adapterdeploy.models.checkpoint import load_checkpoint, save_checkpoint
from adapterdeploy.models.peft_import import import_peft

pytest.importorskip("peft")

from peft_helpers import make_peft_adapter, peft_logits

TOL = 1e-5
TEXTS = ["the movie was good", "a very bad film and a boring plot , the actors were terrible", "yes"]
ALL_MODULES = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


def _enc(base, texts=TEXTS) -> dict[str, torch.Tensor]:
    return dict(base.load_tokenizer()(texts, padding=True, return_tensors="pt", return_token_type_ids=True))


def _ours(base, ckpt, enc) -> torch.Tensor:
    with torch.no_grad():
        return ckpt.build_model(base)(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])


CASES = [
    (
        "bert",
        "lora",
        {"target_modules": ["query", "key", "value", "dense"], "r": 3, "lora_alpha": 5, "use_rslora": True},
    ),  # "dense" also hits BERT's pooler: folded into the head
    ("roberta", "lora", {"target_modules": ALL_MODULES, "rank_pattern": {"value": 2}, "alpha_pattern": {"query": 3}}),
    (
        "electra",
        "ia3",
        {
            "target_modules": ["key", "value", "output.dense", "intermediate.dense"],
            "feedforward_modules": ["output.dense"],
        },
    ),
]


@pytest.mark.parametrize(("model_type", "kind", "config"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_import_matches_peft(tiny_bases, tmp_path, model_type, kind, config):
    base = load_base(tiny_bases[model_type])
    adapter = make_peft_adapter(tiny_bases[model_type], tmp_path / "a", kind, **config)
    ckpt = import_peft(base, adapter, "t")
    enc = _enc(base)
    want = peft_logits(tiny_bases[model_type], adapter, 3, enc)
    got = _ours(base, ckpt, enc)
    assert float((got - want).abs().max()) <= TOL
    # the deltas matter: with them zeroed the logits move far beyond the tolerance
    zeroed = {k: torch.zeros_like(v) if k.startswith("lora.") else v for k, v in ckpt.weights.items()}
    assert float((_ours(base, dataclasses.replace(ckpt, weights=zeroed), enc) - want).abs().max()) > 100 * TOL


@pytest.fixture(scope="module")
def bert(tiny_bases):
    return load_base(tiny_bases["bert"])


@pytest.fixture(scope="module")
def lora_dir(tiny_bases, tmp_path_factory) -> Path:
    return make_peft_adapter(
        tiny_bases["bert"], tmp_path_factory.mktemp("peft") / "lora", "lora", target_modules=["query", "value"], r=4
    )


def _copy(src: Path, dst: Path, config: dict | None = None, weights=None) -> Path:
    shutil.copytree(src, dst)
    if config is not None:
        cfg = json.loads((dst / "adapter_config.json").read_text())
        cfg.update(config)
        (dst / "adapter_config.json").write_text(json.dumps(cfg))
    if weights is not None:
        sd = weights(load_file(str(dst / "adapter_model.safetensors")))
        save_file(sd, str(dst / "adapter_model.safetensors"))
    return dst


@pytest.mark.parametrize(
    ("config", "weights", "error", "match"),
    [
        ({"use_dora": True}, None, UnsupportedAdapterError, r"DoRA \(use_dora=true\)"),
        ({"peft_type": "PROMPT_TUNING"}, None, UnsupportedAdapterError, r"PEFT type 'PROMPT_TUNING'.*'peft_type'"),
        (
            {"target_modules": ["query", "word_embeddings"]},
            None,
            ConfigError,
            r"'target_modules' names \['word_embeddings'\]",
        ),
        ({"r": 8}, None, ConfigError, r"rank 4, adapter_config.json says r = 8 \(fields 'r' / 'rank_pattern'\)"),
        (
            None,
            lambda sd: {
                k: (v[:2] if k.endswith("layer.0.attention.self.query.lora_A.weight") else v) for k, v in sd.items()
            },
            ConfigError,
            "inconsistent ranks",
        ),
        (
            None,
            lambda sd: {**sd, "base_model.model.bert.embeddings.LayerNorm.weight": torch.ones(32)},
            UnsupportedAdapterError,
            "embeddings",
        ),
        (
            None,
            lambda sd: {**sd, "base_model.model.dropout.extra.weight": torch.ones(2)},
            UnsupportedAdapterError,
            "modules_to_save holds weights this runtime cannot run",
        ),
        (
            None,
            lambda sd: {k.replace(".bert.", ".roberta."): v for k, v in sd.items()},
            FingerprintMismatchError,
            "for a 'roberta' model",
        ),
        (
            None,
            lambda sd: {k: (torch.zeros(4, 48) if k.endswith("query.lora_A.weight") else v) for k, v in sd.items()},
            FingerprintMismatchError,
            "do not fit the base's layer",
        ),
    ],
    ids=[
        "dora",
        "prompt-tuning",
        "target-name",
        "rank-vs-r",
        "ranks-AB",
        "embeddings",
        "unknown-head",
        "other-model",
        "other-width",
    ],
)
def test_bad_adapters_are_refused_by_name(bert, lora_dir, tmp_path, config, weights, error, match):
    bad = _copy(lora_dir, tmp_path / "bad", config, weights)
    with pytest.raises(error, match=match):
        import_peft(bert, bad)


def test_pickle_bin_loads_only_weights(bert, lora_dir, tmp_path):
    """adapter_model.bin is read with torch.load(weights_only=True): tensors load, code in a pickle never runs."""
    plain = _copy(lora_dir, tmp_path / "plain")
    torch.save(load_file(str(plain / "adapter_model.safetensors")), plain / "adapter_model.bin")
    (plain / "adapter_model.safetensors").unlink()
    assert import_peft(bert, plain).adapter.peft.lora == ("query", "value")
    evil_dir = _copy(lora_dir, tmp_path / "evil")
    (evil_dir / "adapter_model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"x": Evil()}, evil_dir / "adapter_model.bin")
    with pytest.raises(ArtifactError, match=r"weights_only=True.*safe_serialization=True"):
        import_peft(bert, evil_dir)
    assert not marker.exists()


def test_cli_import_verifies_against_peft(tiny_bases, lora_dir, tmp_path):
    args = [
        "import-peft",
        "--base",
        str(tiny_bases["bert"]),
        "--adapter",
        str(lora_dir),
        "--out",
        str(tmp_path / "ck"),
        "--task",
        "sent",
        "--labels",
        "neg,neu,pos",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "verified against PEFT" in result.output
    ckpt = load_checkpoint(tmp_path / "ck")
    assert ckpt.source == "peft" and ckpt.head.labels == ("neg", "neu", "pos")
    assert ckpt.training["imported_from"]["verified_max_abs_diff"] <= TOL
    bad = CliRunner().invoke(main, [*args[:-2], "--labels", "a,b", "--force"])
    assert bad.exit_code != 0 and "--labels gives 2 names" in bad.output and "Traceback" not in bad.output


# ------------------------------------------------------------------------------ banked round trip (runtime)
@pytest.fixture(scope="module")
def mixed(tiny_bases, bert, lora_dir, tmp_path_factory):
    """LoRA (rank 4, rsLoRA, every module), IA3 and a bottleneck task (bottleneck 4), one export: the bank mixes
    bottleneck sizes, ranks (IA3 / bottleneck rows have rank-1 zero LoRA rows, padded) and methods."""
    from exporter_helpers import make_checkpoint

    from adapterdeploy.exporter.deployment import export_deployment

    work = tmp_path_factory.mktemp("peft-mixed")
    base_dir = tiny_bases["bert"]
    adapters = {
        "lora": make_peft_adapter(
            base_dir, work / "lora", "lora", target_modules=ALL_MODULES, r=4, use_rslora=True, seed=1
        ),
        "ia3": make_peft_adapter(
            base_dir,
            work / "ia3",
            "ia3",
            target_modules=["key", "value", "output.dense"],
            feedforward_modules=["output.dense"],
            seed=3,
        ),
    }
    ckpts = [save_checkpoint(import_peft(bert, a, n), work / "ck" / n) for n, a in adapters.items()]
    ckpts.append(make_checkpoint(bert, work / "ck", "bn", placement="houlsby"))
    manifest = export_deployment(base_dir, ckpts, work / "dep", standalone=True)
    return {"dir": work / "dep", "manifest": manifest, "adapters": adapters, "ckpts": ckpts, "base_dir": base_dir}


def test_mixed_batch_matches_peft(bert, mixed):
    """Rows of three PEFT tasks and a bottleneck task in one forward pass: each equals PEFT's own model."""
    from exporter_helpers import torch_logits

    from adapterdeploy.runtime.deployment import Deployment

    sig = mixed["manifest"].featurizer.signature
    assert sig.placement == "houlsby" and set(sig.lora) == {"query", "key", "value", "attn_out", "ffn_in", "ffn_out"}
    names = ["lora", "ia3", "bn"]
    rows = [(names[i % 3], text) for i, text in enumerate(TEXTS * 3)]
    with Deployment.open(mixed["dir"]) as dep:
        got = dep.predict_mixed(rows)
    want = {task: peft_logits(mixed["base_dir"], a, 3, _enc(bert)) for task, a in mixed["adapters"].items()}
    want["bn"] = torch.from_numpy(torch_logits(bert, mixed["ckpts"][2], TEXTS, 48))
    for (task, text), pred in zip(rows, got, strict=True):
        probs = torch.softmax(want[task][TEXTS.index(text)], -1).numpy()
        assert np.abs(np.array(list(pred.probabilities.values())) - probs).max() <= 1e-4, (task, text)


def test_standalone_folds_peft_into_weights(bert, mixed):
    """--standalone: a PEFT task's graph has exactly the plain model's MatMuls (deltas merged), and equals PEFT."""
    import onnx

    num_layers = bert.num_layers
    for task in ("lora", "ia3"):
        path = mixed["dir"] / mixed["manifest"].standalone[task]["fp32"]
        ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
        assert ops["MatMul"] == 8 * num_layers  # Q, K, V, QK^T, AV, attn out, FFN in, FFN out per layer
        enc = _enc(bert)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out = sess.run(None, {k: v.numpy().astype(np.int64) for k, v in enc.items()})[0]
        want = peft_logits(mixed["base_dir"], mixed["adapters"][task], 3, enc).numpy()
        assert np.abs(out - want).max() <= 1e-4
    bn_path = mixed["dir"] / mixed["manifest"].standalone["bn"]["fp32"]
    assert collections.Counter(n.op_type for n in onnx.load(str(bn_path)).graph.node)["MatMul"] > 8 * num_layers


def test_add_task_lora_of_another_rank_and_refusal(tiny_bases, bert, mixed, lora_dir, tmp_path):
    """add-task: a LoRA task of rank 4 on a subset of the featurizer's modules joins (zero rows elsewhere) and
    matches PEFT; a task needing a module the featurizer has no bank input for is refused with the list."""
    from adapterdeploy.exporter.deployment import add_task
    from adapterdeploy.runtime.deployment import Deployment

    ia3_ffn = make_peft_adapter(
        tiny_bases["bert"], tmp_path / "a", "ia3", target_modules=["intermediate.dense"], feedforward_modules=[], seed=4
    )
    ck = save_checkpoint(import_peft(bert, ia3_ffn, "late"), tmp_path / "ck")
    with pytest.raises(AdapterDeployError, match=r"no PEFT bank input for \['ffn_in.out'\]"):
        add_task(mixed["dir"], ck)
    small = make_peft_adapter(tiny_bases["bert"], tmp_path / "b", "lora", target_modules=["value"], r=2, seed=6)
    add_task(mixed["dir"], save_checkpoint(import_peft(bert, small, "small"), tmp_path / "ck2"))
    with Deployment.open(mixed["dir"]) as dep:
        got = dep.predict_mixed([("small", t) for t in TEXTS] + [("lora", t) for t in TEXTS])
    want = torch.cat([peft_logits(mixed["base_dir"], a, 3, _enc(bert)) for a in (small, mixed["adapters"]["lora"])])
    probs = np.array([list(p.probabilities.values()) for p in got])
    assert np.abs(probs - torch.softmax(want, -1).numpy()).max() <= 1e-4


def test_peft_task_refused_where_zero_bottleneck_is_not_identity(tiny_bases, bert, lora_dir, tmp_path):
    """The exporter says which featurizer a PEFT task needs when it cannot share the bottleneck tasks' one."""
    from exporter_helpers import make_checkpoint

    from adapterdeploy.config import SiteOptions
    from adapterdeploy.exporter.deployment import export_deployment

    site = SiteOptions(ln_after=True, adapter_residual_before_ln=True)
    bn = make_checkpoint(bert, tmp_path, "bn", placement="pfeiffer", site=site)
    lora = save_checkpoint(import_peft(bert, lora_dir, "lora"), tmp_path / "lora")
    with pytest.raises(UnsupportedAdapterError, match=r"task 'lora' has PEFT deltas only.*their own deployment"):
        export_deployment(tiny_bases["bert"], [bn, lora], tmp_path / "dep")
    assert not (tmp_path / "dep").exists()


@pytest.mark.slow
def test_minilm_lora_parity(tmp_path):
    """The real MiniLM: a PEFT LoRA on every attention and FFN layer, imported within 1e-5 of PEFT."""
    from adapterdeploy.models.base import default_base_dir

    base_dir = default_base_dir()
    base = load_base(base_dir)
    adapter = make_peft_adapter(
        base_dir, tmp_path / "a", "lora", target_modules=ALL_MODULES, r=8, lora_alpha=16, num_labels=2, scale=0.05
    )
    ckpt = import_peft(base, adapter, "minilm")
    enc = _enc(base)
    want = peft_logits(base_dir, adapter, 2, enc)
    assert float((_ours(base, ckpt, enc) - want).abs().max()) <= TOL
