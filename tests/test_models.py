"""Adapters in PyTorch: placements, near-identity init, frozen base, checkpoints round-trip."""

from __future__ import annotations

import json

import pytest
import torch

from adapterdeploy.config import AdapterConfig, HeadConfig, SiteOptions
from adapterdeploy.errors import (
    ArtifactError,
    ChecksumError,
    ConfigError,
    FingerprintMismatchError,
    UnsupportedArchitectureError,
)
from adapterdeploy.models.base import load_base
from adapterdeploy.models.checkpoint import checkpoint_from_model, load_checkpoint, save_checkpoint
from adapterdeploy.models.encoder import EncoderWithAdapters

TEXTS = ["the movie was good", "a very bad film and a boring plot"]
PAIRS = ["it is great", "the story was terrible"]


def _batch(base, pairs: bool = False):
    tok = base.load_tokenizer()
    return dict(tok(TEXTS, PAIRS if pairs else None, padding=True, return_tensors="pt"))


@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta", "electra"])
@pytest.mark.parametrize("placement", ["after_layer", "pfeiffer", "houlsby"])
def test_zero_adapters_are_exact_identity(tiny_bases, model_type, placement):
    base = load_base(tiny_bases[model_type])
    model = EncoderWithAdapters(base, AdapterConfig(placement=placement, bottleneck=4), HeadConfig())
    for sites in model.adapters.values():
        for ad in sites.values():
            torch.nn.init.zeros_(ad.up.weight)
    batch = _batch(base, pairs=True)
    with torch.no_grad():
        ref = base.model(**batch).last_hidden_state
        out = model.encode(**batch)
    assert torch.equal(out, ref) or (out - ref).abs().max() < 1e-6


@pytest.mark.parametrize("placement", ["after_layer", "pfeiffer", "houlsby"])
def test_adapters_change_output_and_only_they_train(tiny_base, placement):
    cfg = AdapterConfig(placement=placement, bottleneck=4, init_std=0.5, per_task_layernorm=True)
    model = EncoderWithAdapters(tiny_base, cfg, HeadConfig(pooling="mean", hidden_layers=2))
    batch = _batch(tiny_base)
    with torch.no_grad():
        ref = tiny_base.model(**batch).last_hidden_state
        out = model.encode(**batch)
    assert (out - ref).abs().max() > 1e-3
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.split(".")[0] in ("adapters", "layernorms", "head") for n in trainable)
    before = {k: v.clone() for k, v in tiny_base.model.state_dict().items()}
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(**batch).logsumexp(-1).mean()
    loss.backward()
    opt.step()
    after = tiny_base.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the base must stay frozen"


def test_layers_subset_and_bottleneck(tiny_base):
    cfg = AdapterConfig(placement="houlsby", reduction_factor=8, layers=(2, 3))
    model = EncoderWithAdapters(tiny_base, cfg, HeadConfig())
    assert sorted(model.adapters) == ["2", "3"]
    assert model.adapters["2"]["attn"].bottleneck == 32 // 8
    with pytest.raises(ConfigError, match="out of range"):
        EncoderWithAdapters(tiny_base, AdapterConfig(layers=(7,)), HeadConfig())


def test_site_options_post_add_and_adapter_layernorms(tiny_base):
    opts = SiteOptions(original_ln_before=True, residual_before_ln="post_add", ln_before=True, ln_after=True)
    model = EncoderWithAdapters(tiny_base, AdapterConfig(placement="pfeiffer", bottleneck=4, site=opts), HeadConfig())
    assert model.adapters["0"]["ffn"].ln_before is not None
    with torch.no_grad():
        assert torch.isfinite(model(**_batch(tiny_base))).all()


def test_checkpoint_round_trip_is_exact(tiny_base, tmp_path):
    cfg = AdapterConfig(placement="houlsby", bottleneck=6, init_std=0.1, per_task_layernorm=True, activation="gelu")
    head = HeadConfig(num_labels=3, labels=("neg", "neu", "pos"), pooling="pooler", hidden_layers=1)
    model = EncoderWithAdapters(tiny_base, cfg, head).eval()
    ckpt = checkpoint_from_model(model, "sent", max_length=64, text_pair=False, metrics={"accuracy": 0.5})
    save_checkpoint(ckpt, tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.adapter == cfg and loaded.head == head and loaded.metrics == {"accuracy": 0.5}
    assert set(loaded.weights) == set(ckpt.weights)
    assert all(torch.equal(loaded.weights[k], ckpt.weights[k]) for k in ckpt.weights)
    batch = _batch(tiny_base)
    with torch.no_grad():
        assert torch.equal(loaded.build_model(tiny_base)(**batch), model(**batch))
    meta = json.loads((tmp_path / "ck" / "task.json").read_text())
    assert meta["base"]["fingerprint"] == tiny_base.fingerprint
    with pytest.raises(ArtifactError, match="already exists"):
        save_checkpoint(ckpt, tmp_path / "ck")


def test_checkpoint_refuses_other_base_and_corruption(tiny_base, tiny_bases, tmp_path):
    model = EncoderWithAdapters(tiny_base, AdapterConfig(bottleneck=4), HeadConfig())
    save_checkpoint(checkpoint_from_model(model, "t", max_length=32, text_pair=False), tmp_path / "ck")
    other = load_base(tiny_bases["roberta"])
    with pytest.raises(FingerprintMismatchError, match="different base"):
        load_checkpoint(tmp_path / "ck").build_model(other)
    weights = tmp_path / "ck" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ChecksumError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_unsupported_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedArchitectureError, match="supported architectures: bert"):
        load_base(tmp_path)


def test_pooler_pooling_needs_pooler(tiny_bases):
    electra = load_base(tiny_bases["electra"])
    with pytest.raises(ConfigError, match="pooler"):
        EncoderWithAdapters(electra, AdapterConfig(), HeadConfig(pooling="pooler"))
