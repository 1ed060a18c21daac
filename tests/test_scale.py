"""A deployment of 306 tasks (the 6 exported serving tasks + 300 synthetic ones) under a small budget.

Behaviour, not timings (the scale benchmark times it at 10,000): opening reads no task file, tasks load
on first use and are evicted at the budget, listings page, and the server reads a request's cold task on
its load thread, never inside a forward.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import threading

import httpx
import pytest
from serving_fixtures import ADMIN_TOKEN, ThreadedServer, build_deployment

from adapterdeploy.errors import ChecksumError, TaskFailedError
from adapterdeploy.runtime import Deployment
from adapterdeploy.runtime.options import RuntimeOptions
from adapterdeploy.serving.settings import Settings
from benchmarks.synthetic import add_synthetic_tasks

N_SYNTHETIC = 300
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def many(tiny_base_dir, tmp_path_factory):
    """(deployment dir, synthetic task names): a copy of the serving deployment plus 300 synthetic tasks."""
    src = build_deployment(tiny_base_dir, tmp_path_factory.mktemp("serving"))
    root = tmp_path_factory.mktemp("scale") / "deploy"
    shutil.copytree(src, root)
    names = add_synthetic_tasks(root, N_SYNTHETIC, template="sentiment", seed=7)
    return root, names


def _load_threads(dep: Deployment) -> list[str]:
    """Record the thread name of every task read of ``dep`` (wraps its registry's loader)."""
    seen: list[str] = []
    reader = dep._registry._loader

    def recording(name, source):
        seen.append(threading.current_thread().name)
        return reader(name, source)

    dep._registry._loader = recording
    return seen


def test_synthetic_tasks_are_real_task_pieces(many):
    root, names = many
    with Deployment.open(root) as dep:
        assert dep.known_task_count == 6 + N_SYNTHETIC and dep.loaded_task_count == 0
        assert dep.has_task(names[-1]) and not dep.has_task("s999999")
        spec = dep.task_spec(names[0])
        assert set(spec.files) == {"adapters.safetensors", "head.onnx"} and "synthetic" in spec.parity["note"]
        a, b, template = (dep.predict(["a good movie"], task=t)[0] for t in (names[0], names[1], "sentiment"))
        # Same head as the template, different random adapter rows: different probabilities.
        assert set(a.probabilities) == set(template.probabilities) == {"neg", "pos"}
        assert len({round(p.probabilities["pos"], 6) for p in (a, b, template)}) == 3


def test_open_reads_no_task_and_a_corrupt_task_fails_only_itself(many, tmp_path):
    root, names = many
    copy = tmp_path / "deploy"
    shutil.copytree(root, copy)
    weights = copy / "tasks" / names[5] / "adapters.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with Deployment.open(copy) as dep:
        seen = _load_threads(dep)
        assert all(i.state == "known" for i in dep.tasks()) and seen == []
        with pytest.raises(TaskFailedError, match=names[5]) as failed:  # out of service until reloaded
            dep.predict(["x"], task=names[5])
        assert isinstance(failed.value.__cause__, ChecksumError)
        assert len(dep.predict(["x"], task=names[6])) == 1
        assert dep.loaded_task_count == 1


def test_eviction_keeps_the_budget_and_reloads_give_the_same_answers(many):
    root, names = many
    rng = random.Random(0)
    picks = [rng.choice(names) for _ in range(240)]
    with Deployment.open(root) as ref:
        want = {t: ref.predict(["a fine film"], task=t)[0].probabilities["pos"] for t in sorted(set(picks[:40]))}
    with Deployment.open(root, max_loaded_tasks=25) as dep:
        seen = _load_threads(dep)
        for i in range(0, len(picks), 16):
            batch = picks[i : i + 16]
            dep.predict_mixed([(t, "a fine film") for t in batch])
            assert dep.loaded_task_count <= 25
            loaded = dep._registry.loaded_names()
            assert set(batch) <= set(loaded) and loaded[-1] in batch  # the batch's tasks are the newest
        assert len(seen) > 25  # evicted tasks were read again
        for t, p in want.items():
            assert dep.predict(["a fine film"], task=t)[0].probabilities["pos"] == pytest.approx(p, abs=1e-6)
        assert dep.loaded_task_count <= 25


def test_listing_pages_and_filters(many):
    root, names = many
    with Deployment.open(root) as dep:
        everything = [i.name for i in dep.tasks()]
        assert everything == sorted(everything) and len(everything) == 6 + N_SYNTHETIC
        pages = [i.name for k in range(0, len(everything), 100) for i in dep.tasks(offset=k, limit=100)]
        assert pages == everything
        dep.predict(["x"], task=names[3])
        assert [i.name for i in dep.tasks(loaded_only=True)] == [names[3]]
        assert dep.tasks(offset=10_000) == []


def test_server_reads_cold_tasks_off_the_forward_thread_and_pages_the_index(many):
    root, names = many
    settings = Settings(
        deploy_dir=str(root), admin_token=ADMIN_TOKEN, runtime=RuntimeOptions(max_loaded_tasks=60), max_wait_ms=1.0
    )
    with Deployment.open(root, max_loaded_tasks=60) as dep:
        seen = _load_threads(dep)
        with ThreadedServer(settings, deployment=dep) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
            rng = random.Random(1)
            cold = rng.sample(names, 40)

            async def burst(tasks):
                async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                    return await asyncio.gather(
                        *(c.post("/v1/predict", json={"task": t, "inputs": ["good"]}) for t in tasks)
                    )

            for k in range(0, len(cold), 10):  # 10 concurrent cold tasks at a time: no eviction in a burst
                assert [r.status_code for r in asyncio.run(burst(cold[k : k + 10]))] == [200] * 10
            assert len(seen) == 40 and set(seen) == {"adapterdeploy-load_0"}, set(seen)
            assert srv.state.prefetched == 40
            page = http.post("/v2/repository/index", json={"offset": 100, "limit": 50}, headers=AUTH)
            assert page.status_code == 200 and page.headers["x-adapterdeploy-total-tasks"] == str(6 + N_SYNTHETIC)
            assert [m["name"] for m in page.json()] == sorted(
                ["intent", "nli", "quality", "sentiment", "spam", "topic", *names]
            )[100:150]
            ready = http.post("/v2/repository/index", json={"ready": True, "limit": 5}, headers=AUTH)
            assert len(ready.json()) == 5 and ready.headers["x-adapterdeploy-total-tasks"] == "40"
            assert all(m["state"] == "READY" for m in ready.json())
            bad = http.post("/v2/repository/index", json={"limit": 0}, headers=AUTH)
            assert bad.status_code == 400


def test_server_is_ready_before_its_tasks_are_checked(many, tmp_path, monkeypatch):
    """Start-up does not walk the tasks (issue 16): the file check runs after readiness, on its own thread."""
    from serving_fixtures import wait_task_check

    import adapterdeploy.runtime.deployment as runtime_deployment

    root, names = many
    copy = tmp_path / "deploy"
    shutil.copytree(root, copy)
    (copy / "tasks" / names[7] / "adapters.safetensors").unlink()
    gate = threading.Event()
    check = runtime_deployment._unreadable

    def held(source):  # the check of every task waits for the gate (old code: start-up waited here)
        gate.wait(10)
        return check(source)

    monkeypatch.setattr(runtime_deployment, "_unreadable", held)
    with ThreadedServer(Settings(deploy_dir=str(copy))) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        r = http.get("/v2/health/ready")
        assert r.status_code == 200 and r.json()["tasks_checked"] == 0 and r.json()["tasks_known"] == 6 + N_SYNTHETIC
        assert http.post("/v1/predict", json={"task": names[8], "inputs": ["x"]}).status_code == 200
        bad = http.post("/v1/predict", json={"task": names[7], "inputs": ["x"]})  # verified on first use
        assert bad.status_code == 503 and bad.json()["error_type"] == "task_failed"
        gate.set()
        r = wait_task_check(srv.url)
        assert r.status_code == 200 and r.json()["tasks_checked"] == 6 + N_SYNTHETIC
        assert list(r.json()["tasks_not_ready"]) == [names[7]]
