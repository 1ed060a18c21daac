"""The Open Inference Protocol's real clients, at their default arguments, against ``adapterdeploy serve``.

``tritonclient.http`` and ``tritonclient.grpc`` (from PyPI) drive a real server process (the CLI, with
``--grpc-port``) over the tiny test deployment; predictions are compared with the runtime's own.

The ``kserve`` SDK is not installed: ``pip install kserve`` (0.21) pulls kubernetes, pandas and
grpcio-tools 1.81 and downgrades psutil 7 -> 5.9, which the project's environment must not take. Its REST
client is reproduced instead: :func:`kserve_rest_body` builds the exact bodies of
``InferenceRESTClient.infer`` + ``InferRequest.to_rest`` (kserve/python/kserve/kserve/inference_client.py,
kserve/protocol/infer_type.py): an ``id`` (a uuid4 when none is set), ``model_name``, ``inputs`` with
``parameters.binary_data_size`` and the raw bytes after the JSON when the data is binary (the default of
``InferInput.set_data_from_numpy``), the ``inference-header-content-length`` header and
``content-type: application/octet-stream``; JSON bodies are sent as orjson bytes with no content type.
"""

from __future__ import annotations

import json
import math
import uuid

import httpx
import numpy as np
import pytest
from serving_fixtures import free_port, metric, scrape, subprocess_server

from adapterdeploy.serving import v2_binary

tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

TEXTS = ["one day in the market", "the best actor", "héllo wörld ✓"]


@pytest.fixture(scope="module")
def server(deploy_dir):
    grpc_port = free_port()
    with subprocess_server(
        deploy_dir,
        "--grpc-port",
        str(grpc_port),
        "--max-rows-per-request",
        "16",
        "--max-wait-ms",
        "1",
        "--log-level",
        "warning",
    ) as (_, url):
        yield url, f"127.0.0.1:{grpc_port}"


@pytest.fixture(scope="module")
def version(server):
    return httpx.get(f"{server[0]}/v2/models/topic").json()["versions"][0]


def close_to(got, want) -> bool:
    return all(math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-6) for a, b in zip(got, want, strict=True))


def text_of(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x  # binary outputs come back as bytes, JSON ones as str


def check_topic(result, deployment, texts=TEXTS) -> None:
    """A tritonclient result (HTTP or gRPC) for task ``topic`` equals the runtime's predictions."""
    want = deployment.predict(texts, task="topic")
    assert [text_of(x) for x in result.as_numpy("label")] == [w.label for w in want]
    probs = result.as_numpy("probabilities")
    assert probs.shape == (len(texts), 4) and probs.dtype == np.float32
    for row, w in zip(probs, want, strict=True):
        assert close_to(row, w.probabilities.values())
    assert close_to(result.as_numpy("score"), [w.score for w in want])
    assert result.as_numpy("truncated").tolist() == [False] * len(texts)


# ---- tritonclient.http ----------------------------------------------------------------------------------
def test_tritonclient_http_defaults_binary_tensors(server, deployment, version):
    client = tritonhttp.InferenceServerClient(server[0].removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("topic") and client.is_model_ready("topic", version)
    assert not client.is_model_ready("topic", "999")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("topic", version)
    assert meta["versions"] == [version] and meta["inputs"][0]["name"] == "text"
    inp = tritonhttp.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(np.array(TEXTS, dtype=object))  # binary_data=True: the default
    result = client.infer("topic", [inp])  # no outputs named: every output comes back binary
    check_topic(result, deployment)
    assert result.get_response()["model_version"] == version
    result = client.infer("topic", [inp], model_version=version, request_id="r-7")
    check_topic(result, deployment)
    assert result.get_response()["id"] == "r-7"


def test_tritonclient_http_json_tensors_pairs_and_output_selection(server, deployment, version):
    client = tritonhttp.InferenceServerClient(server[0].removeprefix("http://"))
    inp = tritonhttp.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=False)
    outs = [
        tritonhttp.InferRequestedOutput(n, binary_data=False) for n in ("label", "score", "probabilities", "truncated")
    ]
    check_topic(client.infer("topic", [inp], outputs=outs, model_version=version), deployment)
    a = tritonhttp.InferInput("text", [2, 1], "BYTES")
    a.set_data_from_numpy(np.array([["a man"], ["the day"]], dtype=object))
    b = tritonhttp.InferInput("text_pair", [2, 1], "BYTES")
    b.set_data_from_numpy(np.array([["a woman"], ["a year"]], dtype=object), binary_data=False)
    result = client.infer("nli", [a, b], outputs=[tritonhttp.InferRequestedOutput("label")])  # binary output
    want = deployment.predict([("a man", "a woman"), ("the day", "a year")], task="nli")
    assert [x.decode() for x in result.as_numpy("label")] == [w.label for w in want]
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]


def test_tritonclient_http_errors_carry_the_servers_message(server):
    client = tritonhttp.InferenceServerClient(server[0].removeprefix("http://"))
    inp = tritonhttp.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array(["x"], dtype=object))
    with pytest.raises(InferenceServerException, match="unknown task 'ghost'"):
        client.infer("ghost", [inp])
    with pytest.raises(InferenceServerException, match="no version '999'"):
        client.infer("topic", [inp], model_version="999")
    with pytest.raises(InferenceServerException, match="no version '999'"):
        client.get_model_metadata("topic", "999")
    bad = tritonhttp.InferInput("words", [1], "BYTES")
    bad.set_data_from_numpy(np.array(["x"], dtype=object))
    with pytest.raises(InferenceServerException, match="'words'"):
        client.infer("topic", [bad])


# ---- the kserve SDK's REST client (reproduced bodies, see the module docstring) -------------------------
def kserve_rest_body(model_name: str, texts: list[str], binary: bool) -> tuple[bytes, dict[str, str]]:
    """What ``InferenceRESTClient.infer(base_url, InferRequest(...), model_name)`` puts on the wire."""
    inp: dict = {"name": "text", "shape": [len(texts)], "datatype": "BYTES"}
    raw = [v2_binary.encode_bytes_elements([t.encode() for t in texts])] if binary else []
    if binary:
        inp["parameters"] = {"binary_data_size": len(raw[0])}
    else:
        inp["data"] = texts
    head = json.dumps(
        {"id": str(uuid.uuid4()), "model_name": model_name, "inputs": [inp]}, separators=(",", ":")
    ).encode()
    headers = {"inference-header-content-length": str(len(head)), "content-type": "application/octet-stream"}
    return head + b"".join(raw), headers if binary else {}


def kserve_parse(response: httpx.Response) -> dict:
    """``InferResponse.from_bytes``: the JSON part, binary outputs decoded into ``data``."""
    length = int(response.headers.get("inference-header-content-length", len(response.content)))
    body = json.loads(response.content[:length])
    offset = length
    for out in body["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = response.content[offset : offset + size]
            offset += size
            out["data"] = (
                [b.decode() for b in v2_binary.decode_bytes_elements(raw, "out")]
                if out["datatype"] == "BYTES"
                else np.frombuffer(raw, "<f4").tolist()
            )
    return body


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_kserve_rest_client_bodies(server, deployment, binary):
    content, headers = kserve_rest_body("topic", TEXTS, binary)
    r = httpx.post(f"{server[0]}/v2/models/topic/infer", content=content, headers=headers)
    assert r.status_code == 200, r.text
    out = kserve_parse(r)
    assert out["model_name"] == "topic" and "id" in out
    labels = next(o for o in out["outputs"] if o["name"] == "label")["data"]
    assert labels == [w.label for w in deployment.predict(TEXTS, task="topic")]


def test_optional_fields_unknown_extensions_and_target_checks(server, version):
    base = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    url = f"{server[0]}/v2/models/topic"
    extra = {
        **base,
        "id": "a",
        "parameters": {"priority": 3},
        "sequence_id": 4,
        "x-vendor": {"any": [1]},
        "model_name": "topic",
        "model_version": version,
    }
    r = httpx.post(f"{url}/versions/{version}/infer", json=extra)
    assert r.status_code == 200 and r.json()["id"] == "a" and r.json()["model_version"] == version, r.text
    r = httpx.post(f"{url}/infer", json={**base, "model_name": "sentiment"})
    assert r.status_code == 400 and "model_name is 'sentiment'" in r.json()["error"]
    r = httpx.post(f"{url}/infer", json={**base, "model_version": "0"})
    assert r.status_code == 404 and "no version '0'" in r.json()["error"]
    r = httpx.post(f"{url}/versions/{version}/infer", json={**base, "model_version": "0"})
    assert r.status_code == 400 and "model_version is '0'" in r.json()["error"]
    r = httpx.post(f"{url}/versions/0/infer", json=base)
    assert r.status_code == 404 and set(r.json()) == {"error", "error_type", "request_id"}
    assert httpx.get(f"{url}/versions/0/ready").status_code == 404
    assert httpx.get(f"{url}/versions/{version}/ready").json() == {"name": "topic", "ready": True}
    r = httpx.post(f"{url}/infer", json={**base, "id": 5})  # a field we use is still validated
    assert r.status_code == 400 and r.json()["error"].startswith("id:")


# ---- bad binary input: a clear 400, never a 500 -----------------------------------------------------------
def _binary_request(url: str, inputs: list[dict], blob: bytes, header: str | None = None) -> httpx.Response:
    head = json.dumps({"inputs": inputs}).encode()
    headers = {v2_binary.HEADER: header if header is not None else str(len(head))}
    return httpx.post(f"{url}/v2/models/topic/infer", content=head + blob, headers=headers)


def _text(size: int | None = None, shape=(1,)) -> dict:
    inp: dict = {"name": "text", "shape": list(shape), "datatype": "BYTES"}
    if size is not None:
        inp["parameters"] = {"binary_data_size": size}
    return inp


GOOD = v2_binary.encode_bytes_elements([b"fine"])


@pytest.mark.parametrize(
    ("inputs", "blob", "header", "fragment"),
    [
        ([_text(len(GOOD) + 5)], GOOD, None, "only 8 bytes"),  # size overruns the body
        ([_text(-1)], GOOD, None, "binary_data_size is -1"),
        ([_text(1 << 60)], GOOD, None, "binary_data_size is 1152921504606846976"),  # huge
        ([_text(len(GOOD))], GOOD, "999999", "the whole body has"),  # header past the body
        ([_text(len(GOOD))], GOOD, "-3", "not a non-negative whole number"),
        ([_text(len(GOOD))], GOOD + b"xx", None, "2 bytes after"),  # bytes nobody declared
        ([_text(8)], b"\xff\xff\xff\x7f" + b"abcd", None, "declares 2147483647 bytes"),  # element overruns
        ([_text(6)], b"\x01\x00\x00\x00a\x00", None, "stray bytes"),
        ([_text(5)], b"\x01\x00\x00\x00\xff", None, "not valid UTF-8"),
        ([_text(len(GOOD), shape=(2,))], GOOD, None, "holds 1 elements but shape [2]"),
        ([{**_text(len(GOOD)), "data": ["x"]}], GOOD, None, "both 'data'"),
        ([_text(True)], GOOD, None, "binary_data_size is True"),
    ],
)
def test_malformed_binary_requests_get_400(server, inputs, blob, header, fragment):
    r = _binary_request(server[0], inputs, blob, header)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"], r.json()["error"]


def test_binary_size_without_the_header_is_refused(server):
    body = {"inputs": [_text(len(GOOD))]}
    r = httpx.post(f"{server[0]}/v2/models/topic/infer", json=body)
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


# ---- tritonclient.grpc ----------------------------------------------------------------------------------
def test_tritonclient_grpc_defaults(server, deployment, version):
    client = tritongrpc.InferenceServerClient(server[1])
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("topic") and client.is_model_ready("topic", version)
    assert not client.is_model_ready("topic", "999")
    assert "binary_tensor_data" in client.get_server_metadata().extensions
    meta = client.get_model_metadata("topic", version)
    assert list(meta.versions) == [version] and [i.name for i in meta.inputs] == ["text"]
    inp = tritongrpc.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(np.array(TEXTS, dtype=object))  # raw_input_contents
    result = client.infer("topic", [inp], request_id="g-1")
    check_topic(result, deployment)
    assert result.get_response().id == "g-1" and result.get_response().model_version == version
    a = tritongrpc.InferInput("text", [2, 1], "BYTES")
    a.set_data_from_numpy(np.array([["a man"], ["the day"]], dtype=object))
    b = tritongrpc.InferInput("text_pair", [2, 1], "BYTES")
    b.set_data_from_numpy(np.array([["a woman"], ["a year"]], dtype=object))
    result = client.infer("nli", [a, b], model_version="", outputs=[tritongrpc.InferRequestedOutput("label")])
    want = deployment.predict([("a man", "a woman"), ("the day", "a year")], task="nli")
    assert [x.decode() for x in result.as_numpy("label")] == [w.label for w in want]


def test_grpc_bytes_contents_and_status_codes(server, deployment, version):
    import grpc

    from adapterdeploy.serving.grpc_v2 import messages, method_path

    pb = messages()
    with grpc.insecure_channel(server[1]) as channel:
        infer = channel.unary_unary(
            method_path("ModelInfer"),
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="text",
            datatype="BYTES",
            shape=[len(TEXTS)],
            contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in TEXTS]),
        )
        reply = infer(pb.ModelInferRequest(model_name="topic", model_version=version, inputs=[tensor]))
        names = [o.name for o in reply.outputs]
        labels = v2_binary.decode_bytes_elements(reply.raw_output_contents[names.index("label")], "label")
        assert [x.decode() for x in labels] == [w.label for w in deployment.predict(TEXTS, task="topic")]

        def code_of(request) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.RpcError) as info:
                infer(request)
            return info.value.code(), info.value.details()

        assert code_of(pb.ModelInferRequest(model_name="ghost", inputs=[tensor]))[0] == grpc.StatusCode.NOT_FOUND
        code, details = code_of(pb.ModelInferRequest(model_name="topic", model_version="999", inputs=[tensor]))
        assert code == grpc.StatusCode.NOT_FOUND and "no version '999'" in details
        bad = pb.ModelInferRequest.InferInputTensor(
            name="text", datatype="BYTES", shape=[2], contents=pb.InferTensorContents(bytes_contents=[b"\xff"])
        )
        code, details = code_of(pb.ModelInferRequest(model_name="topic", inputs=[bad]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "shape [2]" in details
        utf = pb.ModelInferRequest.InferInputTensor(
            name="text", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[b"\xff"])
        )
        code, details = code_of(pb.ModelInferRequest(model_name="topic", inputs=[utf]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in details
        many = pb.ModelInferRequest.InferInputTensor(
            name="text", datatype="BYTES", shape=[17], contents=pb.InferTensorContents(bytes_contents=[b"a"] * 17)
        )
        code, details = code_of(pb.ModelInferRequest(model_name="topic", inputs=[many]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "--max-rows-per-request" in details
        raw = pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
        code, details = code_of(
            pb.ModelInferRequest(model_name="topic", inputs=[raw], raw_input_contents=[b"\x09\x00\x00\x00ab"])
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "declares 9 bytes" in details
        huge = pb.ModelInferRequest(model_name="topic", inputs=[tensor], raw_input_contents=[b"x" * (2 << 20)])
        assert code_of(huge)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED  # over --max-body-bytes (1 MiB)
    samples = scrape(server[0])
    assert metric(samples, "adapterdeploy_requests_total", endpoint="grpc_infer", task="topic", status="200") >= 1
    assert metric(samples, "adapterdeploy_requests_total", endpoint="grpc_infer", status="400") >= 3


def test_grpc_embedding_output(server, deployment):
    """The on-request ``embedding`` output over gRPC, its pooling as a string parameter, beside ``label``."""
    import grpc

    from adapterdeploy.serving.grpc_v2 import messages, method_path

    pb = messages()
    with grpc.insecure_channel(server[1]) as channel:
        infer = channel.unary_unary(
            method_path("ModelInfer"),
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="text",
            datatype="BYTES",
            shape=[len(TEXTS)],
            contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in TEXTS]),
        )
        wanted = [
            pb.ModelInferRequest.InferRequestedOutputTensor(name="label"),
            pb.ModelInferRequest.InferRequestedOutputTensor(
                name="embedding", parameters={"pooling": pb.InferParameter(string_param="cls")}
            ),
        ]
        reply = infer(pb.ModelInferRequest(model_name="topic", inputs=[tensor], outputs=wanted))
    names = [o.name for o in reply.outputs]
    assert names == ["label", "embedding"]
    want = deployment.embed(TEXTS, task="topic", pooling="cls")
    assert list(reply.outputs[1].shape) == list(want.shape)
    got = np.frombuffer(reply.raw_output_contents[1], dtype="<f4").reshape(want.shape)
    np.testing.assert_allclose(got, want, atol=1e-6)
    labels = v2_binary.decode_bytes_elements(reply.raw_output_contents[0], "label")
    assert [x.decode() for x in labels] == [w.label for w in deployment.predict(TEXTS, task="topic")]
