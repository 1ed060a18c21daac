"""The binary tensor framing (hypothesis fuzz, unit and over HTTP), the gRPC descriptor, and gRPC overload.

The framing functions may only ever return their result or raise ``InputError``; over HTTP any body with
any ``Inference-Header-Content-Length`` must get a 200 or a 4xx with the protocol's error JSON, never a 5xx.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from serving_fixtures import ThreadedServer, free_port

from adapterdeploy.errors import InputError
from adapterdeploy.serving import v2_binary
from adapterdeploy.serving.settings import Settings


# ---- unit fuzz of the framing ---------------------------------------------------------------------------
@given(st.lists(st.binary(max_size=40), max_size=20))
def test_bytes_elements_round_trip(values):
    assert v2_binary.decode_bytes_elements(v2_binary.encode_bytes_elements(values), "t") == values


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_decoding_arbitrary_bytes_returns_elements_or_input_error(raw):
    try:
        out = v2_binary.decode_bytes_elements(raw, "t")
    except InputError as exc:
        assert str(exc).startswith("t")
    else:  # a valid framing: re-encoding gives the same bytes back
        assert v2_binary.encode_bytes_elements(out) == raw


@given(
    st.binary(max_size=64),
    st.lists(st.one_of(st.none(), st.integers(-5, 80), st.booleans(), st.text(max_size=3)), max_size=4),
)
def test_split_raw_covers_every_byte_exactly_once_or_refuses(blob, sizes):
    try:
        chunks = v2_binary.split_raw(blob, sizes)
    except InputError:
        return
    assert b"".join(c for c in chunks if c is not None) == blob
    assert [len(c) if c is not None else None for c in chunks] == sizes


@given(st.text(max_size=30), st.integers(0, 10**6))
@example("²", 10)  # a Unicode digit: str.isdigit() says yes, int() refuses (found by this test)
def test_header_length_is_a_bounded_whole_number(value, body_size):
    try:
        n = v2_binary.header_length(value, body_size)
    except InputError:
        return
    assert n is not None and 0 <= n <= body_size and str(n) == value.strip().lstrip("0").rjust(1, "0")


# ---- the gRPC descriptor matches its .proto -------------------------------------------------------------
def test_committed_grpc_descriptor_matches_the_proto():
    pytest.importorskip("grpc_tools")
    from adapterdeploy.serving.grpc_v2 import DESCRIPTOR_FILE
    from adapterdeploy.serving.grpc_v2.__main__ import compile_descriptor

    assert compile_descriptor() == DESCRIPTOR_FILE.read_bytes(), "run python -m adapterdeploy.serving.grpc_v2"


# ---- over HTTP and gRPC, one in-process server ----------------------------------------------------------
@pytest.fixture(scope="module")
def server(deploy_dir, deployment):
    s = Settings(
        deploy_dir=str(deploy_dir), grpc_port=free_port(), max_queue=2, max_rows_per_request=2, max_wait_ms=0.0
    )
    with ThreadedServer(s, deployment=deployment) as srv:
        yield srv


TENSOR = {"name": "text", "shape": [1], "datatype": "BYTES"}


@given(
    st.lists(st.binary(max_size=12), max_size=3),
    st.lists(st.one_of(st.none(), st.integers(-2, 40), st.just(1 << 62)), min_size=1, max_size=2),
    st.one_of(
        st.none(),
        st.integers(-3, 400).map(str),
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=4),
    ),
    st.binary(max_size=24),
)
@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_binary_body_gets_a_server_error(server, elements, sizes, header, junk):
    inputs = [
        {**TENSOR, **({"parameters": {"binary_data_size": s}} if s is not None else {"data": ["ok"]})} for s in sizes
    ]
    head = json.dumps({"inputs": inputs}).encode()
    blob = v2_binary.encode_bytes_elements(elements) + junk
    headers = {v2_binary.HEADER: str(len(head)) if header is None else header}
    r = httpx.post(f"{server.url}/v2/models/sentiment/infer", content=head + blob, headers=headers, timeout=30)
    assert r.status_code in (200, 400), (r.status_code, r.text[:300])
    if r.status_code == 400:
        assert set(r.json()) == {"error", "error_type", "request_id"}


def test_grpc_queue_full_is_resource_exhausted_with_retry_info(server, deployment, monkeypatch):
    import grpc
    from google.rpc import error_details_pb2, status_pb2

    from adapterdeploy.serving.grpc_v2 import messages, method_path

    real = deployment.predict_encoded
    entered, gate = threading.Event(), threading.Event()

    def slow(rows, errors="raise"):
        entered.set()
        gate.wait(10)
        return real(rows, errors=errors)

    monkeypatch.setattr(deployment, "predict_encoded", slow)
    pb = messages()
    request = pb.ModelInferRequest(
        model_name="sentiment",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="text", datatype="BYTES", shape=[2], contents=pb.InferTensorContents(bytes_contents=[b"a", b"b"])
            )
        ],
    )
    with grpc.insecure_channel(f"127.0.0.1:{server.settings.grpc_port}") as channel:
        infer = channel.unary_unary(
            method_path("ModelInfer"),
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        running = infer.future(request)  # taken into the (blocked) forward
        assert entered.wait(10)
        queued = infer.future(request)  # fills the queue (2 rows)
        deadline = time.monotonic() + 10
        while server.state.batcher.queued_rows < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as info:
            infer(request, timeout=10)
        gate.set()
        assert len(running.result(30).outputs) == 4 and len(queued.result(30).outputs) == 4
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue" in err.details()
    trailers = dict(err.trailing_metadata())
    assert float(trailers["retry-after"]) > 0
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry) and retry.retry_delay.seconds + retry.retry_delay.nanos > 0
    r = httpx.get(f"{server.url}/metrics").text
    assert 'adapterdeploy_rejected_requests_total{reason="queue_full"}' in r
