"""The adapted graph runs layer K once per unique text up to its first per-task read (``shared_until``).

Checked in PyTorch on the banked featurizer itself (no export: fast) against the plain semantics "gather the
rows first, then every adapted layer per row", for each placement, and once end to end through the exporter
(whose parity check compares the ONNX graphs with each task's own PyTorch model) and the runtime's fan-out
(Pfeiffer: the gather sits inside a sub-layer; ``after_layer`` runs through tests/test_runtime.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from exporter_helpers import random_task_models

from adapterdeploy.config import AdapterConfig, SiteOptions
from adapterdeploy.exporter.featurizer import Adapted, bank_keys, shared_until, stack_bank, task_rows
from adapterdeploy.models.encoder import EncoderWithAdapters

K = 1
PLACEMENTS = {
    # name: (AdapterConfig kwargs, where layer K stops being shared; None: rows gathered before layer K)
    "after_layer": ({}, "layer"),
    "pfeiffer": ({"placement": "pfeiffer"}, "ffn"),
    # the generic site order (adapter LayerNorms, LN before the adapter), as AdapterHub options give
    "pfeiffer_generic_site": (
        {
            "placement": "pfeiffer",
            "site": SiteOptions(original_ln_before=True, residual_before_ln="post_add", ln_before=True, ln_after=True),
        },
        "ffn",
    ),
    "houlsby": ({"placement": "houlsby"}, None),
    "pfeiffer_own_ln": ({"placement": "pfeiffer", "per_task_layernorm": True}, None),
}


def _tasks(base, kwargs: dict, n: int = 3) -> list[EncoderWithAdapters]:
    return random_task_models(base, K, kwargs, n)


@pytest.mark.parametrize("name", list(PLACEMENTS))
def test_shared_layer_k_equals_gathering_first(tiny_base, name):
    kwargs, site = PLACEMENTS[name]
    models = _tasks(tiny_base, kwargs)
    signature = models[0].adapter_config.signature()
    adapted = Adapted(tiny_base, K, signature)
    assert adapted.shared_until == site
    bank = stack_bank([task_rows(m, signature, adapted.adapted_layers) for m in models], adapted.keys)
    torch.manual_seed(1)
    hidden = torch.randn(2, 6, tiny_base.hidden_size)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 3:] = 0
    row_source = torch.tensor([0, 1, 1, 0, 1])  # two texts, five rows, tasks mixed
    task_index = torch.tensor([0, 1, 2, 2, 0])
    with torch.no_grad():
        got = adapted(hidden, mask, row_source, task_index, *bank)
        params, lns = adapted.gather(bank, task_index)
        rows_mask = mask[row_source]
        want = adapted.features(adapted.encode(hidden[row_source], rows_mask, params, lns), rows_mask)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


def test_shared_until_stops_before_peft_and_per_task_layernorms(tiny_base):
    sig = AdapterConfig(placement="pfeiffer").signature()
    layers = tuple(range(K, tiny_base.num_layers))
    assert shared_until(bank_keys(sig, layers), K) == "ffn"
    lora = dataclasses.replace(sig, lora=("query",))
    assert shared_until(bank_keys(lora, layers), K) is None  # LoRA on the query: nothing of layer K is shared
    own_ln = dataclasses.replace(AdapterConfig().signature(), per_task_layernorm=True)
    assert shared_until(bank_keys(own_ln, layers), K) is None  # the attention output's LayerNorm is per task


def test_pfeiffer_fan_out_through_the_exporter(tiny_base_dir, tmp_path):
    from adapterdeploy.exporter.deployment import export_deployment
    from adapterdeploy.models.base import load_base
    from adapterdeploy.models.checkpoint import checkpoint_from_model, save_checkpoint
    from adapterdeploy.runtime import Deployment

    base = load_base(tiny_base_dir)
    models = _tasks(base, {"placement": "pfeiffer"}, n=2)
    dirs = [
        save_checkpoint(checkpoint_from_model(m, f"t{i}", max_length=16, text_pair=False), tmp_path / f"t{i}")
        for i, m in enumerate(models)
    ]
    # The export itself fails unless the ONNX graphs match each task's PyTorch model on mixed batches.
    export_deployment(tiny_base_dir, dirs, tmp_path / "dep", adapter_drop=K, max_length=16)
    texts = ["the movie was good", "a very bad film"]
    with Deployment.open(tmp_path / "dep") as d:
        fan = d.fan_out(texts, tasks=["t0", "t1"])
        for t in ("t0", "t1"):
            single = [d.predict([x], task=t)[0] for x in texts]
            for p, q in zip(fan[t], single, strict=True):
                assert p.probabilities is not None and q.probabilities is not None
                np.testing.assert_allclose(
                    list(p.probabilities.values()), list(q.probabilities.values()), rtol=0, atol=1e-5
                )
