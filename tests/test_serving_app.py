"""Every endpoint and every error path of the HTTP server, on loopback, over a real tiny deployment."""

from __future__ import annotations

import json
import logging
import math
import socket
import time

import httpx
import pytest
from serving_fixtures import ADMIN_TOKEN, MAX_LENGTH, TASKS, ThreadedServer, metric, scrape

from adapterdeploy.serving.settings import Settings

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def server(deploy_dir, deployment):
    settings = Settings(
        deploy_dir=str(deploy_dir),
        admin_token=ADMIN_TOKEN,
        max_rows_per_request=16,
        max_chars_per_text=2000,
        header_timeout_s=1.0,
        body_timeout_s=1.0,
        max_wait_ms=1.0,
    )
    with ThreadedServer(settings, deployment=deployment) as srv:
        yield srv


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def same(got: dict, want) -> None:
    """A served prediction equals the runtime's own (JSON round trip: floats within 1e-6)."""
    ref = want.to_dict()
    assert got["task"] == ref["task"] and got["label"] == ref["label"] and got["truncated"] == ref["truncated"]
    assert math.isclose(got["score"], ref["score"], rel_tol=1e-6, abs_tol=1e-7)
    if ref["probabilities"] is not None:
        assert got["probabilities"].keys() == ref["probabilities"].keys()
        for k, v in ref["probabilities"].items():
            assert math.isclose(got["probabilities"][k], v, rel_tol=1e-6, abs_tol=1e-7)


def check_error(r: httpx.Response, status: int, error_type: str, *fragments: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "error_type", "request_id"}, body
    assert body["error_type"] == error_type, body
    assert body["request_id"] == r.headers["x-request-id"]
    for f in fragments:
        assert f in body["error"], body["error"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    return body


# ---- health and metadata ------------------------------------------------------------------------------
def test_health_and_server_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready").json()
    assert ready["ready"] is True and ready["tasks_not_ready"] == {} and ready["tasks_known"] == len(TASKS)
    meta = client.get("/v2").json()
    assert meta["name"] == "adapterdeploy" and meta["extensions"] == ["binary_tensor_data", "model_repository"]
    assert client.get("/v2/models/sentiment/ready").json() == {"name": "sentiment", "ready": True}


def test_model_metadata_describes_inputs_and_outputs(client):
    single = client.get("/v2/models/topic").json()
    assert [i["name"] for i in single["inputs"]] == ["text"]
    outs = {o["name"]: o for o in single["outputs"]}
    assert outs["probabilities"]["shape"] == [-1, 4] and outs["label"]["datatype"] == "BYTES"
    assert single["parameters"]["labels"] == "world,sports,business,science"
    pair = client.get("/v2/models/nli").json()
    assert [i["name"] for i in pair["inputs"]] == ["text", "text_pair"]
    reg = client.get("/v2/models/quality").json()
    assert [o["name"] for o in reg["outputs"]] == ["value", "score", "truncated", "embedding"]


def test_openapi_and_docs(client):
    spec = client.get("/openapi.json").json()
    for path in ("/v1/predict", "/v1/fan-out", "/v2/models/{task}/infer", "/v2/repository/index"):
        assert path in spec["paths"]
    ref = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.rsplit("/", 1)[1] in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


# ---- inference ----------------------------------------------------------------------------------------
def test_v1_predict_matches_the_runtime(client, deployment):
    texts = ["the movie was great", "a terrible plot", "stock price up"]
    r = client.post("/v1/predict", json={"task": "sentiment", "inputs": texts})
    assert r.status_code == 200, r.text
    for got, want in zip(r.json()["predictions"], deployment.predict(texts, task="sentiment"), strict=True):
        same(got, want)
    pairs = [["a man said yes", "he said no"], ["the world", "a new world"]]
    r = client.post("/v1/predict", json={"task": "nli", "inputs": pairs})
    for got, want in zip(
        r.json()["predictions"], deployment.predict([tuple(p) for p in pairs], task="nli"), strict=True
    ):
        same(got, want)
    reg = client.post("/v1/predict", json={"task": "quality", "inputs": ["good film"]}).json()["predictions"][0]
    assert reg["label"] is None and reg["value"] == reg["score"]


def test_v1_fan_out_matches_the_runtime(client, deployment):
    texts = ["good story", "bad actor", "good story"]
    tasks = ["sentiment", "topic", "quality"]
    r = client.post("/v1/fan-out", json={"tasks": tasks, "inputs": texts})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    want = deployment.fan_out(texts, tasks=tasks)
    assert list(got) == tasks
    for task in tasks:
        for g, w in zip(got[task], want[task], strict=True):
            same(g, w)


def test_v2_infer_matches_the_runtime(client, deployment):
    texts = ["one day in the market", "the best actor"]
    body = {"id": "req-1", "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}]}
    r = client.post("/v2/models/topic/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "topic" and out["id"] == "req-1"
    outputs = {o["name"]: o for o in out["outputs"]}
    want = deployment.predict(texts, task="topic")
    assert outputs["label"]["data"] == [w.label for w in want]
    probs = outputs["probabilities"]
    assert probs["shape"] == [2, 4] and probs["parameters"]["labels"] == "world,sports,business,science"
    for i, w in enumerate(want):
        row = probs["data"][i * 4 : (i + 1) * 4]
        assert all(math.isclose(a, w.probabilities[k], abs_tol=1e-6) for a, k in zip(row, w.probabilities, strict=True))
    assert outputs["truncated"]["data"] == [False, False]


def test_v2_infer_pairs_nested_shape_and_output_selection(client, deployment):
    body = {
        "inputs": [
            {"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["a man"], ["the day"]]},
            {"name": "text_pair", "shape": [2], "datatype": "BYTES", "data": ["a woman", "a year"]},
        ],
        "outputs": [{"name": "label"}],
    }
    r = client.post("/v2/models/nli/infer", json=body)
    assert r.status_code == 200, r.text
    outs = r.json()["outputs"]
    assert [o["name"] for o in outs] == ["label"]
    want = deployment.predict([("a man", "a woman"), ("the day", "a year")], task="nli")
    assert outs[0]["data"] == [w.label for w in want]


def test_long_text_is_truncated_and_flagged(client):
    long = " ".join(["good"] * (MAX_LENGTH * 3))
    r = client.post("/v1/predict", json={"task": "sentiment", "inputs": [long, "short"]})
    assert [p["truncated"] for p in r.json()["predictions"]] == [True, False]


def test_no_truncate_refuses_long_texts_before_queueing(deploy_dir, deployment):
    settings = Settings(deploy_dir=str(deploy_dir), truncate=False)
    with ThreadedServer(settings, deployment=deployment) as srv:
        long = " ".join(["movie"] * (MAX_LENGTH * 2))
        r = httpx.post(f"{srv.url}/v1/predict", json={"task": "topic", "inputs": ["fine", long]})
        check_error(r, 400, "invalid_input", "inputs[1]", f"max_length is {MAX_LENGTH}", "--truncate")
        assert srv.state.batcher.stats.batches == 0


def test_request_id_is_echoed(client):
    r = client.post("/v1/predict", json={"task": "nope", "inputs": ["x"]}, headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123" and r.json()["request_id"] == "abc-123"
    r = client.get("/v2/health/live", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces" and len(r.headers["x-request-id"]) == 32


# ---- error paths --------------------------------------------------------------------------------------
V2 = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}


@pytest.mark.parametrize(
    ("path", "content", "status", "error_type", "fragments"),
    [
        ("/v1/predict", b'{"task": "sentiment", "inputs": ["a"', 400, "invalid_input", ("malformed JSON",)),
        ("/v1/predict", b"", 400, "invalid_input", ("empty",)),
        ("/v1/predict", b'{"task": "sentiment", "inputs": [NaN]}', 400, "invalid_input", ("NaN",)),
        ("/v1/predict", b"\xff\xfe", 400, "invalid_input", ("UTF-8",)),
        ("/v1/predict", b"[1, 2]", 400, "invalid_input", ("JSON object",)),
        ("/v1/predict", {"task": 1, "inputs": ["a"]}, 400, "invalid_input", ("task",)),
        ("/v1/predict", {"task": "sentiment", "inputs": "just text"}, 400, "invalid_input", ("inputs",)),
        ("/v1/predict", {"task": "sentiment", "inputs": ["ok", 7]}, 400, "invalid_input", ("inputs[1]", "got int")),
        ("/v1/predict", {"task": "sentiment", "inputs": [["a", "b", "c"]]}, 400, "invalid_input", ("inputs[0]",)),
        (
            "/v1/predict",
            {"task": "sentiment", "inputs": ["ok", "nul\u0000byte"]},
            400,
            "invalid_input",
            ("inputs[1]", "NUL"),
        ),
        ("/v1/predict", {"task": "sentiment", "inputs": ["   "]}, 400, "invalid_input", ("inputs[0]", "empty")),
        ("/v1/predict", {"task": "sentiment", "inputs": []}, 400, "invalid_input", ("inputs",)),
        ("/v1/predict", {"task": "sentiment", "inputs": ["a"], "extra": 1}, 400, "invalid_input", ("extra",)),
        (
            "/v1/predict",
            {"task": "sentiment", "inputs": ["x" * 2001]},
            400,
            "invalid_input",
            ("inputs[0]", "2001 characters", "--max-chars-per-text"),
        ),
        (
            "/v1/predict",
            {"task": "sentiment", "inputs": ["a"] * 17},
            413,
            "payload_too_large",
            ("17 inputs", "16", "--max-rows-per-request"),
        ),
        ("/v1/predict", {"task": "no-such-task", "inputs": ["a"]}, 404, "unknown_task", ("no-such-task", "sentiment")),
        (
            "/v1/predict",
            {"task": "sentiment", "inputs": [["a", "b"]]},
            400,
            "invalid_input",
            ("inputs[0]", "single texts"),
        ),
        ("/v1/predict", {"task": "nli", "inputs": ["just one"]}, 400, "invalid_input", ("inputs[0]", "pairs")),
        (
            "/v1/fan-out",
            {"tasks": ["sentiment", "topic"], "inputs": ["a"] * 9},
            413,
            "payload_too_large",
            ("9 inputs x 2 tasks = 18 rows",),
        ),
        ("/v1/fan-out", {"tasks": ["sentiment", "ghost"], "inputs": ["a"]}, 404, "unknown_task", ("ghost",)),
        ("/v1/fan-out", {"tasks": [], "inputs": ["a"]}, 400, "invalid_input", ("tasks",)),
        ("/v2/models/ghost/infer", V2, 404, "unknown_task", ("ghost",)),
        (
            "/v2/models/topic/infer",
            {"inputs": [{**V2["inputs"][0], "datatype": "FP32"}]},
            400,
            "invalid_input",
            ("inputs[0].datatype", "BYTES"),
        ),
        (
            "/v2/models/topic/infer",
            {"inputs": [{**V2["inputs"][0], "shape": [2]}]},
            400,
            "invalid_input",
            ("shape [2]",),
        ),
        (
            "/v2/models/topic/infer",
            {"inputs": [{**V2["inputs"][0], "name": "words"}]},
            400,
            "invalid_input",
            ("'words'",),
        ),
        (
            "/v2/models/topic/infer",
            {"inputs": [{**V2["inputs"][0], "data": [3]}]},
            400,
            "invalid_input",
            ("inputs[0].data[0]",),
        ),
        ("/v2/models/topic/infer", {**V2, "outputs": [{"name": "logits"}]}, 400, "invalid_input", ("outputs[0]",)),
        ("/v2/models/topic/infer", {"inputs": []}, 400, "invalid_input", ("inputs",)),
    ],
)
def test_bad_requests_get_400_family_errors_that_name_the_field(client, path, content, status, error_type, fragments):
    if isinstance(content, bytes):
        r = client.post(path, content=content, headers={"Content-Type": "application/json"})
    else:
        r = client.post(path, json=content)
    check_error(r, status, error_type, *fragments)


def test_body_over_the_limit_is_refused_with_413(client):
    big = json.dumps({"task": "sentiment", "inputs": ["x" * 1000] * 1100}).encode()
    assert len(big) > 1 << 20
    check_error(client.post("/v1/predict", content=big), 413, "payload_too_large", "--max-body-bytes")

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(40):
            yield b" " * 32768

    check_error(client.post("/v1/predict", content=chunks()), 413, "payload_too_large")


def test_bad_binary_header_unknown_route_and_method(client):
    body = json.dumps(V2).encode()
    r = client.post("/v2/models/topic/infer", content=body, headers={"Inference-Header-Content-Length": "10"})
    check_error(r, 400, "invalid_input", "malformed JSON")
    check_error(client.get("/v3/nothing"), 404, "not_found", "/v3/nothing")
    check_error(client.get("/v1/predict"), 405, "method_not_allowed")
    check_error(client.get("/v2/models/ghost"), 404, "unknown_task")
    check_error(client.get("/v2/models/ghost/ready"), 404, "unknown_task")


def test_a_server_error_leaks_no_stack_trace(client, deployment, monkeypatch, caplog):
    def broken(rows, errors="raise"):
        raise RuntimeError("secret internal detail /srv/path")

    monkeypatch.setattr(deployment, "predict_encoded", broken)
    with caplog.at_level(logging.ERROR, logger="adapterdeploy"):
        r = client.post("/v1/predict", json={"task": "sentiment", "inputs": ["a"]})
    body = check_error(r, 500, "internal")
    assert "secret" not in r.text and "RuntimeError" not in r.text
    assert any(body["request_id"] == getattr(rec, "request_id", None) for rec in caplog.records)


def test_slow_clients_time_out_without_blocking_others(server, client):
    with socket.create_connection(("127.0.0.1", server.port)) as slow_head:
        slow_head.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
        with socket.create_connection(("127.0.0.1", server.port)) as slow_body:
            slow_body.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"task":'
            )
            t0 = time.monotonic()
            r = client.post("/v1/predict", json={"task": "sentiment", "inputs": ["meanwhile"]})
            assert r.status_code == 200 and time.monotonic() - t0 < 1.0
            slow_body.settimeout(5)
            reply = slow_body.recv(4096)
            assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
            assert b'"client_timeout"' in reply
        slow_head.settimeout(5)
        t0 = time.monotonic()
        assert slow_head.recv(4096) == b""  # closed by the server's header timeout
        assert time.monotonic() - t0 < 3


# ---- metrics ------------------------------------------------------------------------------------------
def test_metrics_cover_requests_batches_and_rejections(client, server):
    client.post("/v1/predict", json={"task": "topic", "inputs": ["a", "b"]})
    client.post("/v1/predict", json={"task": "topic", "inputs": ["a"] * 17})
    samples = scrape(server.url)
    assert metric(samples, "adapterdeploy_requests_total", endpoint="predict", task="topic", status="200") >= 1
    assert metric(samples, "adapterdeploy_requests_total", endpoint="predict", task="topic", status="413") >= 1
    assert metric(samples, "adapterdeploy_rejected_requests_total", reason="too_large") >= 1
    assert metric(samples, "adapterdeploy_request_duration_seconds_count", endpoint="predict") >= 2
    assert metric(samples, "adapterdeploy_batch_rows_count") >= 1
    assert metric(samples, "adapterdeploy_batch_tokens_sum") > 0
    assert metric(samples, "adapterdeploy_queue_duration_seconds_count") >= 1
    assert metric(samples, "adapterdeploy_known_tasks") == 6
    assert metric(samples, "adapterdeploy_loaded_tasks") >= 1
    assert metric(samples, "adapterdeploy_ready") == 1
    names = {name for name, _ in samples}
    assert all(n.startswith(("adapterdeploy_", "process_")) for n in names), sorted(names)
    assert any(n.startswith("process_") for n in names), "the process_* collector is registered"
    assert not any(n.endswith("_created") for n in names), sorted(names)


# ---- admin --------------------------------------------------------------------------------------------
def test_admin_needs_the_token_and_never_logs_it(client, caplog):
    with caplog.at_level(logging.WARNING, logger="adapterdeploy.serving.admin"):
        r = client.post("/v2/repository/index")
        check_error(r, 401, "unauthorized", "missing")
        assert r.headers["www-authenticate"].startswith("Bearer")
        wrong = "wrong-token-" + "x" * 20
        check_error(
            client.post("/v2/repository/index", headers={"Authorization": f"Bearer {wrong}"}),
            401,
            "unauthorized",
            "wrong",
        )
        check_error(
            client.post("/v2/repository/index", headers={"Authorization": "Basic abc"}),
            401,
            "unauthorized",
            "malformed",
        )
    text = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "admin authentication failed" in text
    assert wrong not in text and ADMIN_TOKEN not in text


def test_admin_index_load_pin_unload(client, deployment):
    r = client.post("/v2/repository/models/topic/load", json={"parameters": {"pin": True, "priority": 3}}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["load_state"] == "pinned" and r.json()["load_seconds"] >= 0
    index = {m["name"]: m for m in client.post("/v2/repository/index", headers=AUTH).json()}
    assert set(index) == {"sentiment", "topic", "nli", "quality", "spam", "intent"}
    assert index["topic"]["state"] == "READY" and index["topic"]["load_state"] == "pinned"
    assert index["topic"]["priority"] == 3 and index["topic"]["size_bytes"] > 0
    assert client.post("/v2/repository/models/topic/unload", headers=AUTH).json()["load_state"] == "known"
    ready_only = client.post("/v2/repository/index", json={"ready": True}, headers=AUTH).json()
    assert "topic" not in {m["name"] for m in ready_only}
    # an unloaded task still serves: it reloads on demand
    assert client.post("/v1/predict", json={"task": "topic", "inputs": ["x"]}).status_code == 200
    check_error(client.post("/v2/repository/models/ghost/load", headers=AUTH), 404, "unknown_task")
    check_error(client.post("/v2/repository/models/ghost/unload", headers=AUTH), 404, "unknown_task")
    check_error(
        client.post("/v2/repository/models/topic/load", json={"parameters": {"pin": "yes"}}, headers=AUTH),
        400,
        "invalid_input",
        "parameters.pin",
    )


def test_admin_load_from_a_path_checks_the_name(client, deploy_dir, deployment):
    path = str(deploy_dir / deployment.manifest.tasks["spam"])
    r = client.post("/v2/repository/models/topic/load", json={"parameters": {"path": path}}, headers=AUTH)
    check_error(r, 400, "invalid_input", "'spam'")
    r = client.post("/v2/repository/models/spam/load", json={"parameters": {"path": path}}, headers=AUTH)
    assert r.status_code == 200 and r.json()["name"] == "spam"


def test_without_a_token_the_admin_api_does_not_exist(deploy_dir, deployment):
    with ThreadedServer(Settings(deploy_dir=str(deploy_dir)), deployment=deployment) as srv:
        r = httpx.post(f"{srv.url}/v2/repository/index", headers=AUTH)
        check_error(r, 404, "not_found")
        assert httpx.get(f"{srv.url}/v2").json()["extensions"] == ["binary_tensor_data"]
        assert "/v2/repository/index" not in httpx.get(f"{srv.url}/openapi.json").json()["paths"]
