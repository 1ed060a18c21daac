"""Embeddings from the hot featurizer: the base model (task=None) and a task's adapted featurizer, alone and
mixed with predictions in one forward; equal to PyTorch (tiny base) and to sentence-transformers (MiniLM, slow)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from test_runtime import MAX_LENGTH, TASKS, _export

from adapterdeploy.config import AdapterSignature, SiteOptions
from adapterdeploy.errors import ConfigError, InputError
from adapterdeploy.runtime import Deployment, Embed, Embedding, Prediction
from adapterdeploy.runtime.embedding import zero_adapter_is_base

TEXTS = ["the movie was good", "a very bad film and a boring plot", "yes", "the movie was good"]
EMBED_TASKS = {k: TASKS[k] for k in ("sent", "topic")}


@pytest.fixture(scope="module")
def exported(tiny_base_dir, tmp_path_factory):
    return _export(tiny_base_dir, tmp_path_factory.mktemp("emb-bert"), EMBED_TASKS)


@pytest.fixture(scope="module")
def dep(exported):
    with Deployment.open(exported[0]) as d:
        yield d


def _torch_embeddings(base, model, texts, pooling):
    """Reference: the base encoder (model None) or the task's adapted encoder, pooled, F.normalize'd."""
    import torch
    import torch.nn.functional as F

    from adapterdeploy.models.encoder import mean_pool

    tok = base.load_tokenizer()
    enc = tok(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        if model is None:
            out = base.model(**enc)
            hidden, pooled = out.last_hidden_state, out.pooler_output
        else:
            hidden = model.encode(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
            pooled = model.base.pooler(hidden)
        z = {"mean": mean_pool(hidden, enc["attention_mask"]), "cls": hidden[:, 0], "pooler": pooled}[pooling]
        return F.normalize(z, dim=-1).numpy()


@pytest.mark.parametrize(
    ("task", "pooling"), [(None, "mean"), (None, "cls"), (None, "pooler"), ("sent", "mean"), ("topic", "cls")]
)
def test_embed_matches_pytorch(exported, dep, task, pooling):
    _, base, models = exported
    got = dep.embed(TEXTS, task=task, pooling=pooling)
    assert got.shape == (len(TEXTS), base.hidden_size) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    want = _torch_embeddings(base, models[task] if task else None, TEXTS, pooling)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_task_embedding_differs_from_base(dep):
    """The adapters really change the featurizer, so task=NAME cannot silently be the base model."""
    base, task = dep.embed(TEXTS), dep.embed(TEXTS, task="sent")
    assert np.abs(base - task).max() > 1e-2


def test_embeddings_mixed_with_predictions_in_one_forward(dep):
    single_pred = dep.predict(TEXTS, task="sent")
    single_base, single_topic = dep.embed(TEXTS), dep.embed(TEXTS, task="topic", pooling="cls")
    rows = [("sent", t) for t in TEXTS] + [(Embed(), t) for t in TEXTS] + [(Embed("topic", "cls"), t) for t in TEXTS]
    order = [2, 9, 0, 5, 11, 1, 3, 8, 4, 6, 10, 7]
    mixed = dep.predict_mixed([rows[i] for i in order])
    by_row = dict(zip(order, mixed, strict=True))
    n = len(TEXTS)
    for i in range(n):
        p, e, f = by_row[i], by_row[n + i], by_row[2 * n + i]
        assert isinstance(p, Prediction) and isinstance(e, Embedding) and isinstance(f, Embedding)
        assert p.probabilities == pytest.approx(single_pred[i].probabilities, abs=1e-5)
        np.testing.assert_allclose(e.vector, single_base[i], atol=1e-5)
        np.testing.assert_allclose(f.vector, single_topic[i], atol=1e-5)
        assert (e.task, e.pooling, f.task, f.pooling) == (None, "mean", "topic", "cls")
    d = by_row[n].to_dict()
    assert set(d) == {"task", "pooling", "embedding", "truncated"} and len(d["embedding"]) == single_base.shape[1]


def test_embed_bad_input(dep):
    with pytest.raises(InputError, match="unknown pooling 'max'"):
        dep.embed(TEXTS, pooling="max")
    with pytest.raises(InputError, match="inputs\\[1\\]"):
        dep.embed(["fine", ""])
    with pytest.raises(Exception, match="unknown task 'nope'"):
        dep.embed(TEXTS, task="nope")
    assert dep.embed([]).shape == (0, dep.manifest.featurizer.hidden_size)


def test_base_embedding_refused_where_a_zero_adapter_is_not_the_base(exported):
    with Deployment.open(exported[0]) as d:
        fz = d.manifest.featurizer
        sig = dataclasses.replace(fz.signature, per_task_layernorm=True)
        d._manifest = dataclasses.replace(d.manifest, featurizer=dataclasses.replace(fz, signature=sig))
        with pytest.raises(ConfigError, match="pass task=NAME"):
            d.embed(TEXTS)
        assert d.embed(TEXTS, task="sent").shape[0] == len(TEXTS)  # a task's own featurizer still embeds


SITE_GRID = [
    SiteOptions(
        original_ln_before=olb,
        original_ln_after=ola,
        residual_before_ln=rbl,
        adapter_residual_before_ln=arb,
        ln_before=lb,
        ln_after=la,
    )
    for olb, ola, rbl, arb, lb, la in itertools.product(
        (False, True), (False, True), (True, False, "post_add"), (False, True), (False, True), (False, True)
    )
]


@pytest.mark.parametrize("placement", ["after_layer", "pfeiffer", "houlsby"])
def test_zero_adapter_is_base_agrees_with_the_exporters_numeric_check(placement):
    from adapterdeploy.exporter.featurizer import zero_adapter_is_identity

    for site in SITE_GRID:
        sig = AdapterSignature(placement=placement, activation="relu", site=site, per_task_layernorm=False)
        assert zero_adapter_is_base(sig) == zero_adapter_is_identity(sig), site
    per_task = AdapterSignature(placement=placement, activation="relu", site=SiteOptions(), per_task_layernorm=True)
    assert not zero_adapter_is_base(per_task)


@pytest.mark.slow
def test_base_embeddings_equal_sentence_transformers(tmp_path_factory):
    """task=None on the embedded all-MiniLM-L6-v2 is sentence-transformers' own embedding (cosine >= 1 - 1e-5)."""
    from sentence_transformers import SentenceTransformer

    from adapterdeploy.models.base import default_base_dir

    minilm = {"sent": ({"reduction_factor": 16}, {"num_labels": 2}, False)}
    deploy, _, _ = _export(
        default_base_dir(), tmp_path_factory.mktemp("emb-minilm"), minilm, adapter_drop=0, init_std=0.02
    )
    texts = [
        "A man is eating food.",
        "The new movie is awesome",
        "Stocks rallied after the central bank's vote.",
        "yes",
        "A cheetah is running behind its prey across a field.",
    ]
    want = SentenceTransformer(str(default_base_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    with Deployment.open(deploy) as d:
        got = d.embed(texts)
    cosine = np.sum(got * want, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 1 - 1e-5, cosine
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
