"""Embeddings over HTTP: ``/v1/embed`` and the v2 ``embedding`` output, in the same batches as predictions."""

from __future__ import annotations

import concurrent.futures

import httpx
import numpy as np
import pytest
from serving_fixtures import ThreadedServer, metric, scrape

from adapterdeploy.serving.settings import Settings

TEXTS = ["the movie was great", "a terrible plot", "stock price up"]


@pytest.fixture(scope="module")
def server(deploy_dir, deployment):
    # A long batching window, so concurrent requests of different kinds share one forward.
    settings = Settings(deploy_dir=str(deploy_dir), max_wait_ms=300.0, max_batch_rows=64)
    with ThreadedServer(settings, deployment=deployment) as srv:
        yield srv


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.mark.parametrize(("task", "pooling"), [(None, "mean"), ("topic", "cls"), ("spam", "pooler")])
def test_v1_embed_matches_the_runtime(client, deployment, task, pooling):
    r = client.post("/v1/embed", json={"inputs": TEXTS, "task": task, "pooling": pooling})
    assert r.status_code == 200, r.text
    body = r.json()
    want = deployment.embed(TEXTS, task=task, pooling=pooling)
    assert (body["task"], body["pooling"], body["dimensions"]) == (task, pooling, want.shape[1])
    np.testing.assert_allclose(np.array(body["embeddings"]), want, rtol=0, atol=1e-6)
    assert body["truncated"] == [False] * len(TEXTS)


def test_embed_and_predict_requests_share_one_forward(server, deployment):
    before = server.state.batcher.stats.mixed_task_batches
    with httpx.Client(base_url=server.url, timeout=30) as c, concurrent.futures.ThreadPoolExecutor(2) as pool:
        emb = pool.submit(c.post, "/v1/embed", json={"inputs": TEXTS})
        pred = pool.submit(c.post, "/v1/predict", json={"task": "sentiment", "inputs": TEXTS})
        emb, pred = emb.result(), pred.result()
    assert emb.status_code == pred.status_code == 200, (emb.text, pred.text)
    assert server.state.batcher.stats.mixed_task_batches > before
    np.testing.assert_allclose(np.array(emb.json()["embeddings"]), deployment.embed(TEXTS), atol=1e-6)
    want = deployment.predict(TEXTS, task="sentiment")
    assert [p["label"] for p in pred.json()["predictions"]] == [w.label for w in want]
    assert metric(scrape(server.url), "adapterdeploy_requests_total", endpoint="embed", task="_base") >= 1


def test_v2_embedding_output_beside_the_labels(client, deployment):
    body = {
        "inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": TEXTS}],
        "outputs": [{"name": "label"}, {"name": "embedding", "parameters": {"pooling": "cls"}}],
    }
    r = client.post("/v2/models/topic/infer", json=body)
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert list(outs) == ["label", "embedding"]
    assert outs["label"]["data"] == [p.label for p in deployment.predict(TEXTS, task="topic")]
    want = deployment.embed(TEXTS, task="topic", pooling="cls")
    assert outs["embedding"]["shape"] == list(want.shape) and outs["embedding"]["parameters"]["pooling"] == "cls"
    np.testing.assert_allclose(np.array(outs["embedding"]["data"]).reshape(want.shape), want, atol=1e-6)
    only = client.post("/v2/models/topic/infer", json={**body, "outputs": [{"name": "embedding"}]}).json()
    assert [o["name"] for o in only["outputs"]] == ["embedding"]
    np.testing.assert_allclose(
        np.array(only["outputs"][0]["data"]).reshape(want.shape), deployment.embed(TEXTS, task="topic"), atol=1e-6
    )
    meta = {o["name"]: o for o in client.get("/v2/models/topic").json()["outputs"]}
    assert meta["embedding"]["shape"] == [-1, want.shape[1]] and meta["embedding"]["datatype"] == "FP32"
    default = client.post("/v2/models/topic/infer", json={"inputs": body["inputs"]}).json()
    assert "embedding" not in [o["name"] for o in default["outputs"]]  # sent only when asked for


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"inputs": ["a"], "task": "nope"}, 404, "unknown task 'nope'"),
        ({"inputs": ["a"], "pooling": "max"}, 400, "pooling"),
        ({"inputs": []}, 400, "inputs"),
        ({"inputs": ["a", ""]}, 400, "inputs[1]"),
    ],
)
def test_v1_embed_bad_requests(client, body, status, fragment):
    r = client.post("/v1/embed", json=body)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_v2_embedding_bad_pooling(client):
    body = {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
        "outputs": [{"name": "embedding", "parameters": {"pooling": "max"}}],
    }
    r = client.post("/v2/models/topic/infer", json=body)
    assert r.status_code == 400 and "outputs[0].parameters.pooling" in r.json()["error"]
