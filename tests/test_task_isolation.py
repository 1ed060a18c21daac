"""One bad task never fails another task's rows (issue 12 item 3) and readiness tells the truth (item 1).

A task is poisoned in four real ways: its weights file raises PermissionError or MemoryError when read,
its head is an onnxruntime session of a broken graph (wrong input width), or its bank rows have the wrong
shape (the shared forward then fails). In a mixed batch the healthy tasks' rows must equal their answers
from a clean deployment, the poisoned task's rows carry TaskFailedError, and the task stays failed
(``tasks()``, ``failed_tasks()``) without touching its files again until ``load_task`` reloads it.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

import adapterdeploy.runtime.deployment as deployment_module
from adapterdeploy.errors import TaskFailedError
from adapterdeploy.runtime import Deployment

TEXTS = ["the movie was good", "a boring plot", "yes it is", "the movie was good"]
HEALTHY = ("sentiment", "spam", "quality")
POISONED = "topic"


@pytest.fixture(scope="module")
def expected(deploy_dir):
    with Deployment.open(deploy_dir) as d:
        return {t: d.predict(TEXTS, task=t) for t in (*HEALTHY, POISONED)}


def broken_head_session(width: int):
    """A real onnxruntime session of a head graph that expects ``width`` features (the run then fails)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((width, 4), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "bad_head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def poison(monkeypatch, how: str) -> dict[str, int]:
    """Make POISONED fail ``how`` while ``state["on"]``; ``state["n"]`` counts its weight-file reads."""
    reads = {"n": 0, "on": True}
    real_load, real_read = deployment_module.load_file, Deployment._read_task

    def load_file(path, *args, **kwargs):
        if f"/{POISONED}/" in str(path) and reads["on"]:
            reads["n"] += 1
            if how == "permission":
                raise PermissionError(13, "Permission denied", str(path))
            if how == "memory":
                raise MemoryError
        return real_load(path, *args, **kwargs)

    def read_task(self, name, source):
        task, size = real_read(self, name, source)
        if name != POISONED or not reads["on"]:
            return task, size
        if how == "head":
            task = dataclasses.replace(task, head=dataclasses.replace(task.head, session=broken_head_session(7)))
        if how == "bank":
            arrays = {k: np.concatenate([v, v], axis=-1) for k, v in task.rows.arrays.items()}
            task = dataclasses.replace(task, rows=dataclasses.replace(task.rows, arrays=arrays))
        return task, size

    monkeypatch.setattr(deployment_module, "load_file", load_file)
    monkeypatch.setattr(Deployment, "_read_task", read_task)
    return reads


def same(got, want) -> None:
    assert got.task == want.task and got.label == want.label
    assert got.score == pytest.approx(want.score, abs=1e-5)


@pytest.mark.parametrize("how", ["permission", "memory", "head", "bank"])
@pytest.mark.parametrize("bank_mode", ["rows", "resident"])
def test_a_poisoned_task_fails_only_its_own_rows(deploy_dir, expected, monkeypatch, how, bank_mode):
    reads = poison(monkeypatch, how)
    rows = [(t, text) for text in TEXTS for t in (*HEALTHY, POISONED)]
    with Deployment.open(deploy_dir, bank_mode=bank_mode) as d:
        for t in HEALTHY:
            d.load_task(t)  # in resident mode the bank then holds them all
        out = d.predict_mixed(rows, errors="return")
        for (task, text), got in zip(rows, out, strict=True):
            if task == POISONED:
                assert isinstance(got, TaskFailedError) and POISONED in str(got)
            else:
                same(got, expected[task][TEXTS.index(text)])
        info = d.task_info(POISONED)
        assert info.state == "failed" and info.error
        assert set(d.failed_tasks()) == {POISONED}
        # it stays failed: no new read of its files, a clear error, the others still fine
        before = reads["n"]
        with pytest.raises(TaskFailedError, match="reload"):
            d.predict(["yes"], task=POISONED)
        with pytest.raises(TaskFailedError):
            d.predict_mixed([("sentiment", "yes"), (POISONED, "yes")])
        assert reads["n"] == before
        same(d.predict_mixed([("sentiment", "yes it is")])[0], expected["sentiment"][2])
        # fixed and reloaded: back in service
        reads["on"] = False
        d.load_task(POISONED)
        assert d.task_info(POISONED).state == "loaded" and not d.failed_tasks()
        for got, want in zip(d.predict(TEXTS, task=POISONED), expected[POISONED], strict=True):
            same(got, want)


def test_predict_encoded_matches_predict_mixed(deploy_dir, expected):
    with Deployment.open(deploy_dir) as d:
        tokens = d.encode(TEXTS)
        rows = [(t, tok) for t in ("sentiment", "topic") for tok in tokens]
        for got, want in zip(d.predict_encoded(rows), expected["sentiment"] + expected["topic"], strict=True):
            same(got, want)


def test_check_tasks_marks_unreadable_and_truncated_tasks_failed(deploy_dir, tmp_path):
    copy = shutil.copytree(deploy_dir, tmp_path / "deploy")
    (copy / "tasks" / "topic" / "adapters.safetensors").unlink()
    weights = copy / "tasks" / "spam" / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with Deployment.open(copy) as d:
        failed = d.check_tasks()
        assert set(failed) == {"topic", "spam"}
        assert "adapters.safetensors" in failed["topic"] and "truncated" in failed["spam"]
        assert d.predict(["yes"], task="sentiment")[0].label is not None


def test_prefetch_of_an_unreadable_task_fails_it_like_a_use(deploy_dir, tmp_path):
    """The server's load thread prefetches cold tasks: an unreadable one is task_failed (503), not the loader's
    ChecksumError (500), and is not read again until an explicit reload."""
    copy = shutil.copytree(deploy_dir, tmp_path / "deploy")
    (copy / "tasks" / "topic" / "adapters.safetensors").unlink()
    with Deployment.open(copy) as d:
        with pytest.raises(TaskFailedError, match="topic"):
            d.prefetch("topic")
        assert "adapters.safetensors" in d.failed_tasks()["topic"] and d.failed_task_count() == 1
        with pytest.raises(TaskFailedError):
            d.prefetch("topic")
        assert d.prefetch("sentiment") is True and d.failed_task_count() == 1


# ---- through the HTTP server's batcher -------------------------------------------------------------
def test_server_answers_healthy_tasks_in_a_batch_with_a_poisoned_one(deploy_dir, expected, monkeypatch):
    import asyncio

    import httpx
    from serving_fixtures import ADMIN_TOKEN, ThreadedServer, metric, scrape

    from adapterdeploy.serving.settings import Settings

    reads = poison(monkeypatch, "head")
    # a long max_wait so that the concurrent requests below share forwards
    settings = Settings(deploy_dir=str(deploy_dir), max_wait_ms=200.0, admin_token=ADMIN_TOKEN)
    with Deployment.open(deploy_dir) as dep, ThreadedServer(settings, deployment=dep) as srv:

        async def burst():
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as http:
                return await asyncio.gather(
                    *(http.post("/v1/predict", json={"task": t, "inputs": TEXTS}) for t in (*HEALTHY, POISONED))
                )

        responses = dict(zip((*HEALTHY, POISONED), asyncio.run(burst()), strict=True))
        assert srv.state.batcher.stats.mixed_task_batches >= 1  # the poisoned task shared a forward
        for t in HEALTHY:
            assert responses[t].status_code == 200, responses[t].text
            for got, want in zip(responses[t].json()["predictions"], expected[t], strict=True):
                assert got["label"] == want.label and got["score"] == pytest.approx(want.score, abs=1e-5)
        bad = responses[POISONED]
        assert bad.status_code == 503 and bad.json()["error_type"] == "task_failed", bad.text
        assert "InvalidArgument" in bad.json()["error"] and "Traceback" not in bad.text

        ready = httpx.get(f"{srv.url}/v2/health/ready")
        assert ready.status_code == 200 and set(ready.json()["tasks_not_ready"]) == {POISONED}
        model = httpx.get(f"{srv.url}/v2/models/{POISONED}/ready")
        assert model.status_code == 503 and model.json()["error_type"] == "task_failed"
        assert httpx.get(f"{srv.url}/v2/models/sentiment/ready").status_code == 200
        assert metric(scrape(srv.url), "adapterdeploy_failed_tasks") == 1
        again = httpx.post(f"{srv.url}/v1/predict", json={"task": POISONED, "inputs": ["x"]})
        assert again.status_code == 503 and again.json()["error_type"] == "task_failed"

        reads["on"] = False  # fixed; the admin reload brings it back
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert httpx.post(f"{srv.url}/v2/repository/models/{POISONED}/load", headers=auth).status_code == 200
        assert httpx.get(f"{srv.url}/v2/health/ready").json()["tasks_not_ready"] == {}
        fixed = httpx.post(f"{srv.url}/v1/predict", json={"task": POISONED, "inputs": TEXTS})
        assert [p["label"] for p in fixed.json()["predictions"]] == [p.label for p in expected[POISONED]]


def test_readiness_names_tasks_whose_files_cannot_be_read(deploy_dir, tmp_path):
    import httpx
    from serving_fixtures import ThreadedServer, wait_task_check

    from adapterdeploy.serving.settings import Settings

    copy = shutil.copytree(deploy_dir, tmp_path / "deploy")
    (copy / "tasks" / "topic" / "adapters.safetensors").unlink()
    with ThreadedServer(Settings(deploy_dir=str(copy))) as srv:
        r = wait_task_check(srv.url)  # the check runs after the server is ready, on its own thread
        assert r.status_code == 200 and list(r.json()["tasks_not_ready"]) == ["topic"]
        assert httpx.get(f"{srv.url}/v2/models/topic/ready").status_code == 503
        assert httpx.post(f"{srv.url}/v1/predict", json={"task": "topic", "inputs": ["x"]}).status_code == 503
        assert httpx.post(f"{srv.url}/v1/predict", json={"task": "sentiment", "inputs": ["x"]}).status_code == 200
    for task_dir in (copy / "tasks").iterdir():  # no task can serve: the replica is not ready
        (task_dir / "adapters.safetensors").unlink(missing_ok=True)
    with ThreadedServer(Settings(deploy_dir=str(copy))) as srv:
        r = wait_task_check(srv.url)
        assert r.status_code == 503 and len(r.json()["tasks_not_ready"]) == len(list((copy / "tasks").iterdir()))
        assert httpx.get(f"{srv.url}/v2/health/live").status_code == 200
