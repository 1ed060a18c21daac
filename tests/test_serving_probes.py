"""Overload never blinds the probes, and never costs tokenization (issue 12 item 5, issue 15 item 4).

Real servers on loopback (tests/serving_fixtures.py) over the tiny real deployment; the forward is held
by a gate where a test needs a full queue, so the queue state is exact rather than timing-dependent.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
from serving_fixtures import ThreadedServer

from adapterdeploy.runtime import Deployment
from adapterdeploy.serving.settings import Settings


def wait_until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_probes_are_answered_at_the_connection_limit(deploy_dir):
    settings = Settings(deploy_dir=str(deploy_dir), max_connections=4, body_timeout_s=30.0)
    with ThreadedServer(settings) as srv:
        held = []
        try:
            for _ in range(3):  # three requests whose bodies never finish: one more connection is the limit
                s = socket.create_connection(("127.0.0.1", srv.port))
                s.sendall(
                    b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{"
                )
                held.append(s)
            wait_until(lambda: len(srv.server.server_state.tasks) >= 3)
            for path in ("/v2/health/live", "/v2/health/ready"):
                r = httpx.get(f"{srv.url}{path}", timeout=10)
                assert r.status_code == 200, (path, r.status_code, r.text)
            refused = httpx.post(f"{srv.url}/v1/predict", json={"task": "topic", "inputs": ["x"]}, timeout=10)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["error_type"] == "unavailable" and "--max-connections" in refused.json()["error"]
        finally:
            for s in held:
                s.close()
        wait_until(lambda: len(srv.server.server_state.tasks) == 0)
        ok = httpx.post(f"{srv.url}/v1/predict", json={"task": "topic", "inputs": ["x"]}, timeout=10)
        assert ok.status_code == 200


def test_a_full_queue_answers_429_before_tokenizing(deploy_dir, monkeypatch):
    settings = Settings(
        deploy_dir=str(deploy_dir), max_queue=8, max_rows_per_request=4, max_batch_rows=4, max_wait_ms=0.0
    )
    gate, entered = threading.Event(), threading.Event()
    encoded = []
    with Deployment.open(deploy_dir) as dep:
        real_encode, real_forward = dep.encode, dep.predict_encoded

        def encode(inputs):
            encoded.append(len(inputs))
            return real_encode(inputs)

        def held_forward(rows, errors="raise"):
            entered.set()
            gate.wait(30)
            return real_forward(rows, errors=errors)

        monkeypatch.setattr(dep, "encode", encode)
        monkeypatch.setattr(dep, "predict_encoded", held_forward)
        with ThreadedServer(settings, deployment=dep) as srv:
            body = {"task": "topic", "inputs": ["a b", "c d", "e f", "g h"]}
            results = []
            threads = [
                threading.Thread(
                    target=lambda: results.append(httpx.post(f"{srv.url}/v1/predict", json=body, timeout=30))
                )
                for _ in range(3)
            ]
            threads[0].start()
            assert entered.wait(10)  # the first request is in the (held) forward
            for t in threads[1:]:
                t.start()
            wait_until(lambda: srv.state.batcher.queued_rows == 8)  # one batch held in the forward, 8 rows queued
            assert len(encoded) == 3
            refused = httpx.post(f"{srv.url}/v1/predict", json=body, timeout=10)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert len(encoded) == 3, "the refused request was tokenized"
            gate.set()
            for t in threads:
                t.join(30)
            assert [r.status_code for r in results] == [200, 200, 200]


def test_metrics_have_process_series_and_no_created_series():
    from prometheus_client.parser import text_string_to_metric_families

    from adapterdeploy.serving.metrics import Metrics

    m = Metrics()
    m.requests.labels(endpoint="predict", task="t", status="200").inc()
    names = {s.name for f in text_string_to_metric_families(m.render().decode()) for s in f.samples}
    assert "adapterdeploy_requests_total" in names
    assert not [n for n in names if n.endswith("_created")], sorted(names)
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"} <= names
