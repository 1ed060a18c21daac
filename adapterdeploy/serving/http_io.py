"""HTTP plumbing shared by the inference app (``app.py``) and the admin routes (``admin.py``).

Bodies are read here, not by FastAPI, so that the size limit holds while reading and a slow sender is cut
off; errors become the one ``{"error", "error_type", "request_id"}`` body; a client that leaves cancels its
work. Its own module so that ``admin`` needs nothing from ``app`` (``app`` mounts ``admin``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive

from adapterdeploy.errors import (
    AdapterDeployError,
    AuthenticationError,
    ClientTimeoutError,
    InputError,
    OverloadedError,
    PayloadTooLargeError,
    UnavailableError,
)
from adapterdeploy.serving import v2_binary
from adapterdeploy.serving.schemas import ErrorResponse
from adapterdeploy.serving.settings import Settings
from adapterdeploy.serving.state import ClientGone

__all__ = [
    "ERRORS",
    "body_doc",
    "error_response",
    "log_fields",
    "note",
    "read_body",
    "request_id_of",
    "until_disconnect",
    "v2_response",
]

T = TypeVar("T")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "Invalid request (the message names the field)"),
        (404, "Unknown task"),
        (408, "Body sent too slowly"),
        (413, "Body or rows over the limit"),
        (429, "Queue full; see Retry-After"),
        (503, "Draining, starting, or timed out"),
    )
}


def error_response(exc: AdapterDeployError, request_id: str) -> JSONResponse:
    headers = {}
    if isinstance(exc, OverloadedError):
        headers["Retry-After"] = str(exc.retry_after_s)
    elif isinstance(exc, UnavailableError):
        headers["Retry-After"] = "1"
    elif isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = 'Bearer realm="adapterdeploy-admin"'
    body = {"error": str(exc), "error_type": exc.error_type, "request_id": request_id}
    return JSONResponse(body, status_code=exc.http_status, headers=headers)


def v2_response(body: dict[str, Any], binary: bytes) -> Response:
    """JSON, or with binary outputs the JSON header then the raw tensors (binary tensor data extension)."""
    if not binary:
        return JSONResponse(body)
    head = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(head + binary, media_type="application/octet-stream", headers={v2_binary.HEADER: str(len(head))})


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


def note(request: Request, **fields: Any) -> None:
    """Fields for this request's access-log line."""
    log_fields(request).update(fields)


def log_fields(request: Request) -> dict[str, Any]:
    """This request's access-log fields (``cold_tasks`` among them also becomes a response header)."""
    fields: dict[str, Any] = request.scope.setdefault("state", {}).setdefault("log", {})
    return fields


async def read_body(request: Request, settings: Settings) -> bytes:
    """The body, refused early when over ``max_body_bytes`` (413) or slower than ``body_timeout_s`` (408)."""
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InputError(f"the Content-Length header {declared[:40]!r} is not a number")
        if int(declared) > limit:
            raise PayloadTooLargeError(
                f"the request body has {int(declared)} bytes, the limit is {limit} (--max-body-bytes); "
                "send fewer or shorter inputs per request"
            )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.body_timeout_s
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            message = await asyncio.wait_for(request.receive(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise ClientTimeoutError(
                f"the request body did not arrive within {settings.body_timeout_s:g} s (--body-timeout)"
            ) from None
        if message["type"] == "http.disconnect":
            raise ClientGone("the client disconnected while sending its body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"the request body exceeds {limit} bytes (--max-body-bytes)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first; then cancel it (its rows leave the queue)."""
    job = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        job.cancel()
        watch.cancel()
        raise
    watch.cancel()
    if job.done():
        return job.result()
    job.cancel()
    with contextlib.suppress(asyncio.CancelledError, AdapterDeployError):
        await job
    raise ClientGone("the client disconnected before its result was ready; its rows were dropped")


def body_doc(model: type) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body that the handler parses itself."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}
