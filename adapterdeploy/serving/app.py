"""The HTTP app (FastAPI on Starlette): KServe v2 endpoints, the plain JSON API, metrics, admin, errors.

Why FastAPI + uvicorn: an ASGI stack keeps thousands of waiting requests on one event loop (each is a
coroutine awaiting a future, not a thread), which is what a cross-task batcher needs; FastAPI adds the
OpenAPI document (``/openapi.json``, ``/docs``) that clients and schemathesis read, and uvicorn is the
standard, well-kept ASGI server with graceful shutdown and connection limits. Bodies are read and
parsed here, not by FastAPI, so the size limit is enforced while reading, JSON is strict (no NaN) and
every failure gets the same ``{"error", "error_type", "request_id"}`` body (the v2 protocol's
``{"error": ...}`` plus two fields) — never a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapterdeploy import __version__
from adapterdeploy.errors import (
    AdapterDeployError,
    InputError,
    PayloadTooLargeError,
    TaskFailedError,
    UnavailableError,
)
from adapterdeploy.runtime.embedding import Embed
from adapterdeploy.runtime.tagging import with_entities
from adapterdeploy.serving import protocol, v2_binary
from adapterdeploy.serving.http_io import (
    ERRORS,
    body_doc,
    error_response,
    log_fields,
    note,
    read_body,
    request_id_of,
    until_disconnect,
    v2_response,
)
from adapterdeploy.serving.logs import ACCESS_LOGGER
from adapterdeploy.serving.metrics import BASE_MODEL_TASK, CONTENT_TYPE_LATEST, FAN_OUT_TASK, Metrics
from adapterdeploy.serving.schemas import (
    EmbedRequest,
    EmbedResponse,
    FanOutRequest,
    FanOutResponse,
    LoadRequest,
    PredictRequest,
    PredictResponse,
    RepositoryIndexRequest,
    check_rows,
    parse_body,
    validate,
)
from adapterdeploy.serving.settings import Settings
from adapterdeploy.serving.state import ServingState, Tracker

__all__ = ["create_app", "install_drain_signal"]

log = logging.getLogger("adapterdeploy.serving")
access_log = logging.getLogger(ACCESS_LOGGER)
T = TypeVar("T")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
QUIET_PATHS = ("/v2/health/live", "/v2/health/ready", "/metrics")
BODY_MODELS = (
    PredictRequest,
    FanOutRequest,
    EmbedRequest,
    protocol.InferenceRequest,
    LoadRequest,
    RepositoryIndexRequest,
)


def install_drain_signal(state: ServingState) -> Callable[[], None]:
    """Chain SIGTERM/SIGINT: first turn readiness to 503, then call the server's own handler (uvicorn's).

    uvicorn installs its handlers before the lifespan starts, so wrapping them here works the same for one
    process and for every ``--workers`` child. Signal handlers can only be set from the main thread; in a
    thread (tests) or a Ray replica this does nothing and the host's own shutdown applies.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(sig: int, frame: FrameType | None) -> None:
        state.begin_drain()
        prev = previous[signal.Signals(sig)]
        if callable(prev):
            prev(sig, frame)
        elif sig == signal.SIGINT:
            raise KeyboardInterrupt

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, prev in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, prev)

    return restore


# ---------------------------------------------------------------------------------------- middleware
class RequestContext:
    """Pure ASGI middleware: request id, one access-log line per request, and the last-resort 500.

    It also answers the requests that uvicorn cancels at the end of ``--drain`` (SIGTERM with a backlog
    longer than the drain): 503 with Retry-After from here, where uvicorn would send a bare 500.
    """

    def __init__(self, app: ASGIApp, instance_id: str = "") -> None:
        self.app = app
        self.instance = instance_id.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        rid = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["log"] = {}
        status = 0
        t0 = time.perf_counter()
        quiet = scope["path"] in QUIET_PATHS
        access_log.debug("request started", extra={"request_id": rid, "path": scope["path"]})

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", rid.encode()),
                    (b"x-adapterdeploy-instance", self.instance),
                ]
                if "cold_tasks" in state["log"]:
                    message["headers"].append((b"x-adapterdeploy-cold-tasks", str(state["log"]["cold_tasks"]).encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # Only uvicorn's graceful-shutdown timeout cancels a request task (a client leaving is seen as
            # http.disconnect, not a cancellation). Answer it ourselves and end the task normally.
            if status != 0:
                raise
            log.warning("request not served before the drain deadline; answered 503", extra={"request_id": rid})
            await JSONResponse(
                {
                    "error": "the server shut down (--drain elapsed) before this request ran; retry on another replica",
                    "error_type": "unavailable",
                    "request_id": rid,
                },
                status_code=503,
                headers={"Retry-After": "1"},
            )(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"request_id": rid})
            if status == 0:
                await JSONResponse(
                    {
                        "error": "internal server error; the server log has the details under this request id",
                        "error_type": "internal",
                        "request_id": rid,
                    },
                    status_code=500,
                )(scope, receive, send_with_id)
        finally:
            fields = {
                "request_id": rid,
                "method": scope["method"],
                "path": scope["path"],
                "status": status or 499,
                "ms": round((time.perf_counter() - t0) * 1000, 2),
                **state["log"],
            }
            access_log.log(logging.DEBUG if quiet and status == 200 else logging.INFO, "request", extra=fields)


# ------------------------------------------------------------------------------------------ the app
def create_app(settings: Settings, *, deployment: Any = None, metrics_dir: str | None = None) -> FastAPI:
    """The app for one process. Without ``deployment`` it opens ``settings.deploy_dir`` at startup.

    ``metrics_dir``: prometheus-client's multiprocess directory (``--workers``: every worker's metrics).
    """
    metrics = Metrics(multiprocess_dir=metrics_dir)
    state = ServingState(settings, metrics, deployment)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        grpc_server = None
        if settings.grpc_port is not None:
            from adapterdeploy.serving.grpc_server import start_grpc_server

            grpc_server = await start_grpc_server(state, settings.host, settings.grpc_port)
        restore = install_drain_signal(state)
        try:
            yield
        finally:
            restore()
            if grpc_server is not None:
                state.begin_drain()
                await grpc_server.stop(settings.drain_s)
            await state.stop()

    app = FastAPI(
        title="adapterdeploy",
        version=__version__,
        lifespan=lifespan,
        redoc_url=None,
        description="Many adapter tasks on one shared ONNX featurizer, batched across tasks. KServe Open "
        "Inference Protocol v2 under /v2, a plain JSON API under /v1, Prometheus metrics at /metrics.",
    )
    app.state.serving = state
    app.add_middleware(RequestContext, instance_id=state.instance_id)

    @app.exception_handler(AdapterDeployError)
    async def _adapterdeploy_error(request: Request, exc: AdapterDeployError) -> Response:
        if exc.http_status >= 500 and not isinstance(exc, (UnavailableError, TaskFailedError)):
            log.error("request failed: %s", exc, extra={"request_id": request_id_of(request)})
        return error_response(exc, request_id_of(request))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        return JSONResponse(
            {"error": message, "error_type": kind, "request_id": request_id_of(request)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return error_response(InputError(f"{where}: {first.get('msg')}"), request_id_of(request))

    _add_health_routes(app, state)
    _add_inference_routes(app, state, metrics)

    if settings.admin_enabled:
        from adapterdeploy.serving.admin import admin_router

        app.include_router(admin_router(state))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _, defs = models_json_schema(
                [(m, "validation") for m in BODY_MODELS], ref_template="#/components/schemas/{model}"
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
            if state.deployment is not None and state.deployment.known_task_count <= DOCUMENTED_TASKS_LIMIT:
                _document_task_names(schema, sorted(state.deployment.task_names))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


DOCUMENTED_TASKS_LIMIT = 1000  # more tasks than this: no enum in the schema (the index lists them, paged)


def _document_task_names(schema: dict[str, Any], names: list[str]) -> None:
    """List the deployment's tasks as the ``task`` enums, so /docs offers them and clients see them."""
    if not names:
        return
    for item in schema.get("paths", {}).values():
        for op in item.values():
            for param in op.get("parameters", []):
                if param.get("name") == "task" and param.get("in") == "path":
                    param["schema"] = {"type": "string", "enum": names, "title": "Task"}
    comps = schema.get("components", {}).get("schemas", {})
    if "PredictRequest" in comps:
        comps["PredictRequest"]["properties"]["task"]["enum"] = names
    if "FanOutRequest" in comps:
        comps["FanOutRequest"]["properties"]["tasks"]["items"]["enum"] = names


def _add_health_routes(app: FastAPI, state: ServingState) -> None:
    @app.get("/v2/health/live", tags=["health"], summary="Liveness: 200 while the batching loop runs")
    async def live() -> Response:
        if state.started and (state.batcher is None or not state.batcher.alive) and not state.draining:
            raise UnavailableError("the batching loop has stopped; restart the server")
        return JSONResponse({"live": True})

    @app.get(
        "/v2/health/ready",
        tags=["health"],
        summary="Readiness: 503 while starting, draining, or when no task can serve; names failed tasks",
        responses={503: ERRORS[503]},
    )
    async def ready(request: Request) -> Response:
        ok, not_ready = state.readiness()
        check = {"tasks_checked": state.tasks_checked, "tasks_known": state.known_task_count()}
        if ok:
            return JSONResponse({"ready": True, "tasks_not_ready": not_ready, **check})
        why = (
            "the server is draining"
            if state.draining
            else "the server is not ready"
            if not state.ready
            else f"none of the {len(not_ready)} tasks can serve (see tasks_not_ready)"
        )
        body = {
            "error": why,
            "error_type": "unavailable",
            "request_id": request_id_of(request),
            "ready": False,
            "tasks_not_ready": not_ready,
            **check,
        }
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})

    @app.get("/v2", tags=["v2"], summary="Server metadata")
    async def server_metadata() -> Response:
        return JSONResponse(protocol.server_metadata(__version__, state.settings.admin_enabled))

    @app.get("/v2/models/{task}", tags=["v2"], summary="Model (task) metadata", responses={404: ERRORS[404]})
    async def model_metadata(task: str) -> Response:
        return JSONResponse(protocol.model_metadata(await state.task_meta(task)))

    @app.get(
        "/v2/models/{task}/versions/{version}",
        tags=["v2"],
        summary="Model (task) metadata, one version",
        responses={404: ERRORS[404]},
    )
    async def model_version_metadata(task: str, version: str) -> Response:
        meta = await state.task_meta(task)
        protocol.check_version(meta, version)
        return JSONResponse(protocol.model_metadata(meta))

    async def _model_ready(task: str, version: str | None) -> Response:
        state.require_task(task)
        if version is not None:
            protocol.check_version(await state.task_meta(task), version)
        if not state.ready:
            raise UnavailableError("the server is draining" if state.draining else "the server is not ready")
        state.require_serving(task)
        return JSONResponse({"name": task, "ready": True})

    @app.get(
        "/v2/models/{task}/ready",
        tags=["v2"],
        summary="Model (task) readiness",
        responses={404: ERRORS[404], 503: ERRORS[503]},
    )
    async def model_ready(task: str) -> Response:
        return await _model_ready(task, None)

    @app.get(
        "/v2/models/{task}/versions/{version}/ready",
        tags=["v2"],
        summary="Model (task) readiness, one version",
        responses={404: ERRORS[404], 503: ERRORS[503]},
    )
    async def model_version_ready(task: str, version: str) -> Response:
        return await _model_ready(task, version)

    @app.get("/metrics", tags=["metrics"], summary="Prometheus metrics", response_class=Response)
    async def metrics_endpoint() -> Response:
        body = await asyncio.get_running_loop().run_in_executor(state.aux_pool, state.metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def _add_inference_routes(app: FastAPI, state: ServingState, metrics: Metrics) -> None:
    settings = state.settings

    async def _v2_infer(request: Request, task: str, version: str | None) -> Response:
        with Tracker(metrics, "v2_infer", state.task_label(task)):
            meta = await state.task_meta(task)
            protocol.check_version(meta, version)
            body = await read_body(request, settings)
            json_length = v2_binary.header_length(request.headers.get(v2_binary.HEADER), len(body))
            head, blob = v2_binary.split_body(body, json_length)
            req = validate(protocol.InferenceRequest, parse_body(head))
            protocol.check_target(meta, req.model_name, req.model_version, version)
            sizes = protocol.binary_sizes(req)
            if json_length is None and any(size is not None for size in sizes):
                raise InputError(
                    f"an input declares parameters.binary_data_size but the request has no "
                    f"{v2_binary.HEADER} header; send it with the JSON part's length"
                )
            raw = v2_binary.split_raw(blob, sizes) if json_length is not None else None
            rows = protocol.rows_from_request(req, meta, raw)
            check_rows(rows, settings, field="inputs[0].data")
            protocol.check_outputs(req, meta)
            wanted = req.outputs or ()
            heads, pooling = protocol.embedding_pooling([o.name for o in wanted], [o.parameters for o in wanted])
            targets: list[str | Embed] = ([task] if heads else []) + ([Embed(task, pooling)] if pooling else [])
            note(request, task=task, rows=len(rows) * len(targets))
            results = await until_disconnect(
                request, state.predict(targets, rows, field="inputs[0].data", note=log_fields(request))
            )
            n = len(rows)
            predictions, embeddings = (results[:n], results[n:]) if heads else ([], results)
            predictions = protocol.with_spans([o.name for o in wanted], predictions, rows)
            return v2_response(*protocol.infer_response(req, meta, predictions, embeddings))

    @app.post(
        "/v2/models/{task}/infer",
        tags=["v2"],
        summary="Open Inference Protocol v2 inference",
        openapi_extra=body_doc(protocol.InferenceRequest),
        responses=ERRORS,
    )
    async def v2_infer(task: str, request: Request) -> Response:
        return await _v2_infer(request, task, None)

    @app.post(
        "/v2/models/{task}/versions/{version}/infer",
        tags=["v2"],
        summary="Open Inference Protocol v2 inference, one version",
        openapi_extra=body_doc(protocol.InferenceRequest),
        responses=ERRORS,
    )
    async def v2_version_infer(task: str, version: str, request: Request) -> Response:
        return await _v2_infer(request, task, version)

    @app.post(
        "/v1/predict",
        tags=["v1"],
        summary="Predict one task over texts or text pairs",
        openapi_extra=body_doc(PredictRequest),
        responses={200: {"model": PredictResponse}, **ERRORS},
    )
    async def predict(request: Request) -> Response:
        with Tracker(metrics, "predict", "_unknown") as tracker:
            req = validate(PredictRequest, parse_body(await read_body(request, settings)))
            tracker.task = state.task_label(req.task)
            state.require_task(req.task)
            check_rows(list(req.inputs), settings)
            note(request, task=req.task, rows=len(req.inputs))
            predictions = await until_disconnect(
                request, state.predict([req.task], list(req.inputs), note=log_fields(request))
            )
            if req.spans:
                predictions = [with_entities(p, r) for p, r in zip(predictions, req.inputs, strict=True)]
            return JSONResponse({"predictions": [p.to_dict() for p in predictions]})

    @app.post(
        "/v1/fan-out",
        tags=["v1"],
        summary="Run several tasks over the same texts",
        openapi_extra=body_doc(FanOutRequest),
        responses={200: {"model": FanOutResponse}, **ERRORS},
    )
    async def fan_out(request: Request) -> Response:
        with Tracker(metrics, "fan_out", FAN_OUT_TASK):
            req = validate(FanOutRequest, parse_body(await read_body(request, settings)))
            tasks = list(dict.fromkeys(req.tasks))
            if len(tasks) > settings.max_tasks_per_request:
                raise PayloadTooLargeError(
                    f"tasks: {len(tasks)} tasks, the limit is {settings.max_tasks_per_request} per request "
                    "(--max-tasks-per-request); split the request"
                )
            for task in tasks:
                state.require_task(task)
            inputs = list(req.inputs)
            check_rows(inputs, settings, n_tasks=len(tasks))
            note(request, task=",".join(tasks)[:200], rows=len(inputs) * len(tasks))
            predictions = await until_disconnect(request, state.predict(tasks, inputs, note=log_fields(request)))
            n = len(inputs)
            if req.spans:
                predictions = [with_entities(p, inputs[i % n]) for i, p in enumerate(predictions)]
            out = {task: [p.to_dict() for p in predictions[i * n : (i + 1) * n]] for i, task in enumerate(tasks)}
            return JSONResponse({"predictions": out})

    @app.post(
        "/v1/embed",
        tags=["v1"],
        summary="L2-normalised embeddings (base model or a task's featurizer)",
        openapi_extra=body_doc(EmbedRequest),
        responses={200: {"model": EmbedResponse}, **ERRORS},
    )
    async def embed(request: Request) -> Response:
        with Tracker(metrics, "embed", "_unknown") as tracker:
            req = validate(EmbedRequest, parse_body(await read_body(request, settings)))
            tracker.task = BASE_MODEL_TASK if req.task is None else state.task_label(req.task)
            if req.task is not None:
                state.require_task(req.task)
            inputs = list(req.inputs)
            check_rows(inputs, settings)
            note(request, task=req.task or BASE_MODEL_TASK, rows=len(inputs))
            rows = await until_disconnect(request, state.predict([Embed(req.task, req.pooling)], inputs))
            return JSONResponse(
                {
                    "task": req.task,
                    "pooling": req.pooling,
                    "dimensions": len(rows[0].vector) if rows else 0,
                    "embeddings": [[float(x) for x in e.vector] for e in rows],
                    "truncated": [e.truncated for e in rows],
                }
            )
