"""The Open Inference Protocol v2 over gRPC (``adapterdeploy serve --grpc-port N``), next to the HTTP app.

The gRPC server (grpcio's asyncio server) runs on the same event loop as uvicorn and calls the same
:class:`ServingState`: one cross-task batcher, the same limits (``--max-body-bytes`` is the largest
message, then rows, characters and queue as on REST), the same metrics (``endpoint="grpc_infer"``, with
the HTTP-equivalent status) and the same policy for a token: inference and metadata need none on either
protocol, and the admin API (load/unload/index) exists only on REST, behind the bearer token.

Errors are gRPC status codes: INVALID_ARGUMENT (bad input, over a row/character limit), NOT_FOUND
(unknown task or version), RESOURCE_EXHAUSTED (queue full; ``google.rpc.RetryInfo`` in the
``grpc-status-details-bin`` trailer and a ``retry-after`` trailer in seconds; also grpcio's own answer to
a message over the size limit), UNAVAILABLE (starting or draining), DEADLINE_EXCEEDED (request timeout).
Responses carry outputs in ``raw_output_contents``, as Triton does (tritonclient reads only those).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from adapterdeploy import __version__
from adapterdeploy.errors import (
    AdapterDeployError,
    AuthenticationError,
    ConfigError,
    InputError,
    OverloadedError,
    RequestTimeoutError,
    UnknownTaskError,
)
from adapterdeploy.runtime.embedding import Embed
from adapterdeploy.serving import protocol, v2_binary
from adapterdeploy.serving.grpc_v2 import SERVICE, messages
from adapterdeploy.serving.schemas import check_rows
from adapterdeploy.serving.state import ServingState, Tracker

__all__ = ["GRPC_STATUS", "InferenceServicer", "start_grpc_server", "status_of"]

log = logging.getLogger("adapterdeploy.serving.grpc")
GRPC_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,  # over a row/character limit: retrying the same request cannot help
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def status_of(exc: AdapterDeployError) -> grpc.StatusCode:
    """The gRPC status code for one of our errors (by its HTTP status; INTERNAL for anything else)."""
    if isinstance(exc, RequestTimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, AuthenticationError):
        return grpc.StatusCode.UNAUTHENTICATED
    return GRPC_STATUS.get(exc.http_status, grpc.StatusCode.INTERNAL)


def _retry_trailers(exc: OverloadedError) -> tuple[tuple[str, str | bytes], ...]:
    """``google.rpc.Status`` with ``RetryInfo`` (the standard retry hint) plus a plain ``retry-after``."""
    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2

    seconds = float(exc.retry_after_s)
    info = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds - int(seconds)) * 1e9))
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=str(exc), details=[detail])
    return (("grpc-status-details-bin", status.SerializeToString()), ("retry-after", str(exc.retry_after_s)))


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _guarded(handler: Handler) -> Handler:
    """Turn our typed errors into gRPC statuses; anything else is logged and answered INTERNAL, no traceback."""

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(request, context)
        except AdapterDeployError as exc:
            trailers = _retry_trailers(exc) if isinstance(exc, OverloadedError) else ()
            await context.abort(status_of(exc), str(exc), trailing_metadata=trailers)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("gRPC request failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error; the server log has the details")

    return call


class InferenceServicer:
    """``inference.GRPCInferenceService``: the six RPCs of the protocol, on one :class:`ServingState`."""

    def __init__(self, state: ServingState) -> None:
        self.state = state
        self.pb = messages()

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        batcher = self.state.batcher
        return self.pb.ServerLiveResponse(live=self.state.draining or batcher is None or batcher.alive)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.pb.ServerReadyResponse(ready=self.state.readiness()[0])

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Unknown tasks and versions are "not ready" (tritonclient's ``is_model_ready`` is a yes/no)."""
        try:
            protocol.check_version(await self.state.task_meta(request.name), request.version or None)
        except UnknownTaskError:
            return self.pb.ModelReadyResponse(ready=False)
        failed = self.state.deployment.task_failure(request.name) is not None
        return self.pb.ModelReadyResponse(ready=self.state.ready and not failed)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = protocol.server_metadata(__version__, self.state.settings.admin_enabled)
        return self.pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = await self.state.task_meta(request.name)
        protocol.check_version(meta, request.version or None)
        d = protocol.model_metadata(meta)
        tensor = self.pb.ModelMetadataResponse.TensorMetadata
        return self.pb.ModelMetadataResponse(
            name=d["name"],
            versions=d["versions"],
            platform=d["platform"],
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in d["inputs"]],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in d["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        state = self.state
        task = request.model_name
        with Tracker(state.metrics, "grpc_infer", state.task_label(task)):
            meta = await state.task_meta(task)
            protocol.check_version(meta, request.model_version or None)
            rows = self._rows(request, meta)
            check_rows(rows, state.settings, field="inputs[0]")
            wanted = list(request.outputs)
            names = protocol.requested_outputs([o.name for o in wanted], meta)
            heads, pooling = protocol.embedding_pooling(
                [o.name for o in wanted],
                [{k: v.string_param for k, v in o.parameters.items() if v.string_param} for o in wanted],
            )
            targets: list[str | Embed] = ([task] if heads else []) + ([Embed(task, pooling)] if pooling else [])
            results = await state.predict(targets, rows, field="inputs[0]")
            n = len(rows)
            predictions, embeddings = (results[:n], results[n:]) if heads else ([], results)
            predictions = protocol.with_spans(names, predictions, rows)
            return self._response(request, meta, protocol.output_tensors(names, meta, predictions, embeddings))

    def _rows(self, request: Any, meta: protocol.TaskMeta) -> list[str | tuple[str, str]]:
        inputs = request.inputs
        raw = request.raw_input_contents
        if not 1 <= len(inputs) <= 2:
            raise InputError(f"inputs: {len(inputs)} tensors; send 'text' (and 'text_pair' for pair tasks)")
        if raw and len(raw) != len(inputs):
            raise InputError(
                f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; send one per "
                "input, in order, or use contents.bytes_contents"
            )
        by_name: dict[str, list[str]] = {}
        for i, tensor in enumerate(inputs):
            protocol.check_input_name(tensor.name, i, by_name, meta)
            where = f"inputs[{i}]"
            if raw:
                if len(tensor.contents.bytes_contents):
                    raise InputError(f"{where} has contents and raw_input_contents is set; use one of them")
                values = v2_binary.decode_bytes_elements(raw[i], f"raw_input_contents[{i}]")
                elements = [(v, f"raw_input_contents[{i}][{j}]") for j, v in enumerate(values)]
            else:
                elements = [
                    (v, f"{where}.contents.bytes_contents[{j}]") for j, v in enumerate(tensor.contents.bytes_contents)
                ]
            by_name[tensor.name] = protocol.texts_of_tensor(
                tensor.name, tensor.datatype, list(tensor.shape), elements, where
            )
        return protocol.rows_from_texts(by_name, meta)

    def _response(self, request: Any, meta: protocol.TaskMeta, tensors: list[protocol.OutputTensor]) -> Any:
        pb = self.pb
        outputs = []
        for t in tensors:
            params = {k: pb.InferParameter(string_param=str(v)) for k, v in t.parameters.items()}
            outputs.append(
                pb.ModelInferResponse.InferOutputTensor(
                    name=t.name, datatype=t.datatype, shape=t.shape, parameters=params
                )
            )
        return pb.ModelInferResponse(
            model_name=meta.name,
            model_version=meta.version,
            id=request.id,
            outputs=outputs,
            raw_output_contents=[v2_binary.encode_tensor(t.datatype, t.data) for t in tensors],
        )


def _handlers(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    pb = servicer.pb
    methods = {}
    for rpc in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"):
        req, resp = getattr(pb, f"{rpc}Request"), getattr(pb, f"{rpc}Response")
        methods[rpc] = grpc.unary_unary_rpc_method_handler(
            _guarded(getattr(servicer, rpc)),
            request_deserializer=req.FromString,
            response_serializer=resp.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE, methods)


async def start_grpc_server(state: ServingState, host: str, port: int) -> grpc.aio.Server:
    """Start the gRPC server on ``host:port`` (on the running loop); the caller stops it at shutdown.

    ``--workers N`` children each start one on the same port: grpcio sets SO_REUSEPORT, so the kernel
    spreads connections over them as it does for the HTTP socket.
    """
    limit = state.settings.max_body_bytes
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", max(limit, 4 << 20))]
    )
    server.add_generic_rpc_handlers((_handlers(InferenceServicer(state)),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio >= 1.59 raises; older versions return 0
        bound = 0
    if bound == 0:
        raise ConfigError(f"cannot listen for gRPC on {address}; is --grpc-port {port} already in use?")
    await server.start()
    log.info("gRPC listening", extra={"address": address})
    return server
