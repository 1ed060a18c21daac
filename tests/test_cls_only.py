"""The adapted graph's optional ``cls_only`` input: the last layer at the first token only.

``cls`` and ``pooled`` read only the CLS state of the last layer, whose query needs every token's key and value
but nothing else per token; with ``cls_only`` True the graph computes the rest of that layer (attention output,
feed-forward, adapter sites) for token 0 alone. Checked in PyTorch against the full layer for each adapter
form, through the exported ONNX graph (the input defaults to False: callers that do not feed it are unchanged),
and through the runtime, which feeds True only when no row of a batch reads ``mean`` or ``tokens``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from exporter_helpers import random_task_models

from adapterdeploy.config import CLS_ONLY_INPUT, AdapterConfig, HeadConfig
from adapterdeploy.exporter.featurizer import Adapted, stack_bank, task_rows
from adapterdeploy.models.encoder import EncoderWithAdapters

K = 1
FORMS = {
    "after_layer": {},
    "pfeiffer": {"placement": "pfeiffer"},
    "houlsby": {"placement": "houlsby"},
    "pfeiffer_own_ln": {"placement": "pfeiffer", "per_task_layernorm": True},
}


def _models(base, kwargs: dict, n: int = 2, lora: tuple[str, ...] = ()) -> list[EncoderWithAdapters]:
    return random_task_models(base, K, kwargs, n, lora)


def _inputs(hidden_size: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    hidden = torch.randn(2, 6, hidden_size)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 3:] = 0
    return hidden, mask, torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 1])


def _check_torch(base, models) -> Adapted:
    signature = models[0].adapter_config.signature()
    adapted = Adapted(base, K, signature)
    assert adapted.cls_only
    bank = stack_bank([task_rows(m, signature, adapted.adapted_layers) for m in models], adapted.keys)
    args = (*_inputs(base.hidden_size), *bank)
    with torch.no_grad():
        full = dict(zip(adapted.output_names, adapted(*args), strict=True))
        default = dict(zip(adapted.output_names, adapted(*args, torch.tensor(False)), strict=True))
        first = dict(zip(adapted.output_names, adapted(*args, torch.tensor(True)), strict=True))
    assert first["tokens"].shape[1] == 1 and full["tokens"].shape[1] == 6
    for name in adapted.output_names:
        torch.testing.assert_close(default[name], full[name], rtol=0, atol=1e-5)
    for name in ("cls", "pooled"):
        if name in full:
            torch.testing.assert_close(first[name], full[name], rtol=0, atol=1e-5)
    return adapted


@pytest.mark.parametrize("form", list(FORMS))
def test_cls_only_last_layer_gives_the_same_cls_and_pooled(tiny_base, form):
    _check_torch(tiny_base, _models(tiny_base, FORMS[form]))


def test_cls_only_with_lora_on_query_key_value(tiny_base):
    _check_torch(
        tiny_base,
        _models(tiny_base, {"placement": "pfeiffer"}, lora=("query", "key", "value", "attn_out", "ffn_in", "ffn_out")),
    )


def test_relative_positions_keep_the_full_last_layer(tiny_base):
    adapted = Adapted(tiny_base, K, AdapterConfig().signature())
    adapted.hf.encoder.layer[-1].attention.self.position_embedding_type = "relative_key"
    from adapterdeploy.exporter.featurizer import supports_query_subset

    assert not supports_query_subset(adapted.hf.encoder.layer[-1])


def test_exported_graph_defaults_to_the_full_computation(tiny_base, tmp_path):
    from adapterdeploy.exporter.onnx_graphs import export_adapted

    models = _models(tiny_base, {"placement": "houlsby"})
    adapted = _check_torch(tiny_base, models)
    signature = models[0].adapter_config.signature()
    bank = stack_bank([task_rows(m, signature, adapted.adapted_layers) for m in models], adapted.keys)
    path = tmp_path / "adapted.onnx"
    export_adapted(adapted, path, opset=17, hidden_size=tiny_base.hidden_size, bank=bank)
    model = onnx.load(str(path))
    assert CLS_ONLY_INPUT in {i.name for i in model.graph.input}
    assert CLS_ONLY_INPUT in {i.name for i in model.graph.initializer}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert CLS_ONLY_INPUT not in {i.name for i in session.get_inputs()}  # optional: old callers feed the rest
    assert CLS_ONLY_INPUT in {i.name for i in session.get_overridable_initializers()}
    hidden, mask, rows, tasks = _inputs(tiny_base.hidden_size)
    feed = {"hidden": hidden.numpy(), "attention_mask": mask.numpy(), "row_source": rows.numpy()}
    feed |= {"task_index": tasks.numpy(), **{k: b.numpy() for k, b in zip(adapted.keys, bank, strict=True)}}
    names = [o.name for o in session.get_outputs()]
    full = dict(zip(names, session.run(None, feed), strict=True))
    first = dict(zip(names, session.run(None, {**feed, CLS_ONLY_INPUT: np.array(True)}), strict=True))
    with torch.no_grad():
        want = dict(zip(adapted.output_names, adapted(hidden, mask, rows, tasks, *bank), strict=True))
    for name in names:
        np.testing.assert_allclose(full[name], want[name].numpy(), rtol=0, atol=1e-5)
    assert first["tokens"].shape[1] == 1
    for name in ("cls", "pooled"):
        if name in names:
            np.testing.assert_allclose(first[name], want[name].numpy(), rtol=0, atol=1e-5)


class _Spy:
    """The adapted session, recording the ``cls_only`` value of each run (None: not fed)."""

    def __init__(self, session) -> None:
        self.session, self.fed = session, []

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, names, feed):
        self.fed.append(None if CLS_ONLY_INPUT not in feed else bool(feed[CLS_ONLY_INPUT]))
        return self.session.run(names, feed)


@pytest.fixture(scope="module")
def cls_and_mean_dir(tiny_base_dir, tmp_path_factory) -> tuple:
    """Two after_layer tasks, ``c`` reading cls and ``m`` mean, exported fp32 + int8 + fp16 (each variant passes
    the exporter's parity, which checks cls_only against PyTorch too)."""
    from adapterdeploy.exporter.deployment import export_deployment
    from adapterdeploy.models.base import load_base
    from adapterdeploy.models.checkpoint import checkpoint_from_model, save_checkpoint

    tmp = tmp_path_factory.mktemp("cls_only")
    base = load_base(tiny_base_dir)
    dirs = []
    for name, pooling in (("c", "cls"), ("m", "mean")):
        cfg = AdapterConfig(layers=tuple(range(K, base.num_layers)), bottleneck=4)
        model = EncoderWithAdapters(base, cfg, HeadConfig(num_labels=3, pooling=pooling)).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0.0, 0.3)
        ckpt = checkpoint_from_model(model, name, max_length=16, text_pair=False)
        dirs.append(save_checkpoint(ckpt, tmp / name))
    manifest = export_deployment(
        tiny_base_dir, dirs, tmp / "dep", adapter_drop=K, max_length=16, precisions=("fp32", "int8", "fp16")
    )
    return tmp / "dep", manifest


def test_every_variant_keeps_the_optional_input(cls_and_mean_dir):
    dep, manifest = cls_and_mean_dir
    files = [dep / v.adapted for v in manifest.featurizer.variants.values()]
    assert len(files) >= 3
    for path in files:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert CLS_ONLY_INPUT in {i.name for i in session.get_overridable_initializers()}, path.name


def test_runtime_feeds_cls_only_only_when_no_row_reads_mean_or_tokens(cls_and_mean_dir):
    from adapterdeploy.runtime import Deployment
    from adapterdeploy.runtime.embedding import Embed

    texts = ["the movie was good", "a very bad film that went on and on"]
    with Deployment.open(cls_and_mean_dir[0]) as d:
        spy = d._engine.adapted = _Spy(d._engine.adapted)
        alone_c = d.predict(texts, task="c")
        alone_m = d.predict(texts, task="m")
        emb_mean = d.embed(texts, task="c", pooling="mean")
        emb_cls = d.embed(texts, task="c", pooling="cls")
        assert spy.fed == [True, False, False, True]
        mixed = d.predict_mixed([("c", texts[0]), ("m", texts[1]), (Embed("c", "mean"), texts[0]), ("c", texts[1])])
        assert spy.fed[-1] is False  # a mean row in the batch: the full last layer for every row
        both = d.predict_mixed([("c", texts[1]), (Embed("c", "cls"), texts[0])])
        assert spy.fed[-1] is True
    for got, want in ((mixed[0], alone_c[0]), (mixed[1], alone_m[1]), (mixed[3], alone_c[1]), (both[0], alone_c[1])):
        np.testing.assert_allclose(list(got.probabilities.values()), list(want.probabilities.values()), atol=1e-5)
    np.testing.assert_allclose(mixed[2].vector, emb_mean[0], atol=1e-5)
    np.testing.assert_allclose(both[1].vector, emb_cls[0], atol=1e-5)


def test_a_graph_without_the_input_runs_whole(cls_and_mean_dir, tmp_path):
    """An adapted graph exported before cls_only (no such input): the runtime feeds nothing new."""
    from adapterdeploy.runtime import Deployment
    from adapterdeploy.runtime.engine import Engine

    dep, manifest = cls_and_mean_dir
    model = onnx.load(str(dep / manifest.featurizer.variants["fp32"].adapted))
    keep = [i for i in model.graph.initializer if i.name != CLS_ONLY_INPUT]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    model.graph.initializer.append(onnx.helper.make_tensor("old_false", onnx.TensorProto.BOOL, [], [False]))
    for node in model.graph.node:
        node.input[:] = ["old_false" if x == CLS_ONLY_INPUT else x for x in node.input]
    inputs = [i for i in model.graph.input if i.name != CLS_ONLY_INPUT]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    onnx.save(model, str(tmp_path / "old.onnx"))
    old = ort.InferenceSession(str(tmp_path / "old.onnx"), providers=["CPUExecutionProvider"])
    texts = ["the movie was good", "a very bad film"]
    with Deployment.open(dep) as d:
        want = {t: d.predict(texts, task=t) for t in ("c", "m")}
        d._engine = Engine(d._engine.trunk, _Spy(old), d._engine.layout, bank_mode=d._engine.bank_mode)
        assert not d._engine.cls_only
        for task in ("c", "m"):
            for p, q in zip(d.predict(texts, task=task), want[task], strict=True):
                np.testing.assert_allclose(list(p.probabilities.values()), list(q.probabilities.values()), atol=1e-5)
        assert d._engine.adapted.fed == [None, None]


def test_parity_refuses_an_export_whose_cls_only_path_is_wrong(tiny_base_dir, tmp_path, monkeypatch):
    """The exporter's parity runs the graph a second time with cls_only True; a wrong cls there refuses."""
    from adapterdeploy.errors import ParityError
    from adapterdeploy.exporter import parity
    from adapterdeploy.exporter.deployment import export_deployment
    from adapterdeploy.models.base import load_base
    from adapterdeploy.models.checkpoint import checkpoint_from_model, save_checkpoint

    base = load_base(tiny_base_dir)
    (model,) = _models(base, {}, n=1)
    ckpt = save_checkpoint(checkpoint_from_model(model, "c", max_length=16, text_pair=False), tmp_path / "c")
    features = parity.GraphRunner.adapted_features

    def broken(self, batch, hidden, feeds, cls_only=False):
        out = features(self, batch, hidden, feeds, cls_only)
        if cls_only:
            out["cls"] = out["cls"] + 1.0
        return out

    monkeypatch.setattr(parity.GraphRunner, "adapted_features", broken)
    with pytest.raises(ParityError, match=r"features\.cls \(cls_only\)") as err:
        export_deployment(tiny_base_dir, [ckpt], tmp_path / "dep", adapter_drop=K, max_length=16)
    assert "logits (cls_only)" in str(err.value)
    assert not (tmp_path / "dep").exists()


# ---- the folded CLS attention (design note 31) ---------------------------------------------------------------


def test_folded_attention_equals_the_projected_one(tiny_base):
    """Keys and values folded into the query give HF's context, masked keys and the value bias included."""
    import copy

    from adapterdeploy.exporter.featurizer import _folded_attention, _projected_attention

    sa = copy.deepcopy(tiny_base.model.encoder.layer[-1].attention.self)  # tiny_base is shared: never mutate it
    torch.manual_seed(3)
    with torch.no_grad():
        sa.key.bias.normal_(0.0, 1.0)  # a key bias changes every score of a query by the same amount
        sa.value.bias.normal_(0.0, 1.0)
        h = torch.randn(3, 5, tiny_base.hidden_size)
        q = torch.randn(3, sa.num_attention_heads, 2, sa.attention_head_size)
        mask = torch.ones(3, 5, dtype=torch.long)
        mask[1, 2:] = 0
        ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        want = _projected_attention(sa, q, h, ext)
        got = _folded_attention(sa, q, h, ext)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_folding_is_left_out_where_the_last_layer_has_per_task_key_or_value_deltas(tiny_base):
    plain = Adapted(tiny_base, K, AdapterConfig(placement="pfeiffer").signature())
    assert plain.cls_only and plain.fold_last
    for modules, folds in ((("query", "ffn_in"), True), (("key",), False), (("value",), False)):
        (model,) = _models(tiny_base, {"placement": "pfeiffer"}, n=1, lora=modules)
        adapted = Adapted(tiny_base, K, model.adapter_config.signature())
        assert adapted.cls_only and adapted.fold_last is folds, modules


def test_the_exported_graph_reads_zero_sizes_literally_only_where_cls_only_switches_them(tiny_base, tmp_path):
    """Both forms are in the graph, the unchosen one on empty slices: the Reshapes that cls_only sizes have
    allowzero=1 (an ONNX 0 would otherwise copy an input dimension); the folded MatMuls stay fp32 in int8."""
    from adapterdeploy.exporter.onnx_graphs import export_adapted
    from adapterdeploy.exporter.quantize import batched_weight_matmuls, quantize_int8

    models = _models(tiny_base, {})
    adapted = _check_torch(tiny_base, models)
    signature = models[0].adapter_config.signature()
    bank = stack_bank([task_rows(m, signature, adapted.adapted_layers) for m in models], adapted.keys)
    path = tmp_path / "adapted.onnx"
    model = export_adapted(adapted, path, opset=17, hidden_size=tiny_base.hidden_size, bank=bank)
    reshapes = [n for n in model.graph.node if n.op_type == "Reshape"]
    literal = [n.name for n in reshapes if any(a.name == "allowzero" and a.i == 1 for a in n.attribute)]
    last = f"/layers.{tiny_base.num_layers - 1}/"
    assert literal and all(name.startswith(last) for name in literal)
    assert len(literal) < len(reshapes)
    folded = batched_weight_matmuls(model)
    assert len(folded) == 2 and all(name.startswith(last) for name in folded)  # W_k and W_v, per head
    quantize_int8(path, tmp_path / "adapted.int8.onnx")
    int8 = onnx.load(str(tmp_path / "adapted.int8.onnx"))
    assert {n.name for n in int8.graph.node if n.op_type == "MatMul"} >= set(folded)
    hidden, mask, rows, tasks = _inputs(tiny_base.hidden_size)
    feed = {"hidden": hidden.numpy(), "attention_mask": mask.numpy(), "row_source": rows.numpy()}
    feed |= {"task_index": tasks.numpy(), **{k: b.numpy() for k, b in zip(adapted.keys, bank, strict=True)}}
    with torch.no_grad():
        want = dict(zip(adapted.output_names, adapted(hidden, mask, rows, tasks, *bank), strict=True))
    for graph, atol in ((path, 1e-5), (tmp_path / "adapted.int8.onnx", 0.1)):
        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        for flag in (False, True):
            got = dict(zip(names, session.run(None, {**feed, CLS_ONLY_INPUT: np.array(flag)}), strict=True))
            np.testing.assert_allclose(got["cls"], want["cls"].numpy(), rtol=0, atol=atol)
