"""``adapterdeploy serve --ray --replicas 2``: the same app as a Ray Serve deployment, on a local Ray.

Slow (starting Ray takes 15-40 s on 2 cores), so marked ``slow``. Each replica opens the deployment
directory itself; the ``x-adapterdeploy-instance`` response header shows that both replicas answer, and
that requests carrying Ray's routing header ``serve_multiplexed_model_id: <task>`` stick to one replica.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import aiohttp
import pytest
from serving_fixtures import REPO, build_deployment, subprocess_server

pytest.importorskip("ray.serve")


@pytest.mark.slow
def test_ray_serve_two_replicas_answer_and_stop_on_sigterm(tiny_base_dir, tmp_path_factory, tmp_path):
    deploy_dir = build_deployment(tiny_base_dir, tmp_path_factory.mktemp("serving"))
    log = tmp_path / "ray-serve.log"
    with subprocess_server(
        deploy_dir,
        "--ray",
        "--replicas",
        "2",
        "--drain",
        "5",
        "--log-level",
        "warning",
        env={"RAY_DEDUP_LOGS": "0"},
        log_path=log,
    ) as (proc, url):

        async def bursts():
            """Up to 15 bursts of 20 requests, until both replicas have answered (one may still be starting)."""
            results = []
            async with aiohttp.ClientSession(url) as http:

                async def one(i: int):
                    body = {"task": ["sentiment", "topic", "quality"][i % 3], "inputs": [f"a good movie {i}"]}
                    async with http.post("/v1/predict", json=body) as r:
                        return r.status, r.headers.get("x-adapterdeploy-instance"), await r.json()

                for _ in range(15):
                    results += await asyncio.gather(*(one(i) for i in range(20)))
                    if len({instance for _, instance, _ in results}) == 2:
                        break
                    await asyncio.sleep(1.0)
            return results

        async def routed():
            """Per task: one routed request, a pause (replicas report their tasks asynchronously), six more."""
            out = {}
            async with aiohttp.ClientSession(url) as http:
                for task in ("sentiment", "topic", "quality"):

                    async def one(task: str = task):
                        async with http.post(
                            "/v1/predict",
                            json={"task": task, "inputs": ["fine"]},
                            headers={"serve_multiplexed_model_id": task},
                        ) as r:
                            return r.status, r.headers.get("x-adapterdeploy-instance")

                    first = await one()
                    await asyncio.sleep(2.0)
                    out[task] = [first] + [await one() for _ in range(6)]
            return out

        results = asyncio.run(bursts())
        affinity = asyncio.run(routed())
        for task, answers in affinity.items():
            assert {status for status, _ in answers} == {200}, (task, answers)
            assert len({instance for _, instance in answers[1:]}) == 1, (task, answers)
        statuses = Counter(status for status, _, _ in results)
        instances = Counter(instance for _, instance, _ in results)
        assert statuses == Counter({200: len(results)}), statuses
        assert all(len(p["predictions"]) == 1 for _, _, p in results)
        assert len(instances) == 2, f"expected 2 replicas to answer, got {instances}"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(90)
    assert code == 0, log.read_text()[-2000:]


def test_kuberay_manifest_builds_the_app():
    """deploy/kuberay/rayservice.yaml's serveConfigV2 names a builder that accepts its args (no Ray started)."""
    import importlib

    import yaml
    from ray.serve.deployment import Application

    manifest = yaml.safe_load((REPO / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    (app,) = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"]
    module, _, name = app["import_path"].partition(":")
    built = getattr(importlib.import_module(module), name)(app["args"])
    assert isinstance(built, Application)
