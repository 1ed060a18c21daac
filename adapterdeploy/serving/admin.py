"""Admin API on Triton's model-repository extension paths, behind a bearer token.

``POST /v2/repository/index`` lists every task with its registry state, size and use count (sorted by
name; ``{"offset": 0, "limit": 500}`` pages through a large deployment, the total is in the
``x-adapterdeploy-total-tasks`` header);
``POST /v2/repository/models/{task}/load`` loads (``{"parameters": {"pin": true, "priority": 5}}`` pins it,
``"path"`` loads a task directory exported elsewhere, only from under the operator's ``--task-root``
directories, default the deployment's ``tasks/``); ``POST /v2/repository/models/{task}/unload`` evicts.
Every bad task artifact answers 4xx (422 ``invalid_task_artifact``, 403 ``forbidden_path``), never 500.
The router exists only when a token is configured (otherwise these paths are plain 404s). The token is
compared with ``hmac.compare_digest`` (constant time); a failure is logged with the request id, client
address and the reason (missing / malformed / wrong), never with the token.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from adapterdeploy.errors import (
    ArtifactError,
    AuthenticationError,
    FingerprintMismatchError,
    ForbiddenPathError,
    InputError,
    RegistryFullError,
    TaskArtifactError,
)
from adapterdeploy.serving.http_io import ERRORS, body_doc, read_body, request_id_of
from adapterdeploy.serving.schemas import (
    ErrorResponse,
    LoadRequest,
    RepositoryIndexRequest,
    RepositoryModel,
    parse_body,
    validate,
)
from adapterdeploy.serving.state import ServingState
from adapterdeploy.validation import check_task_name

__all__ = ["admin_router", "check_token", "task_name_at"]

log = logging.getLogger("adapterdeploy.serving.admin")
ADMIN_ERRORS = {401: {"model": ErrorResponse, "description": "Missing or wrong bearer token"}, **ERRORS}


def check_token(request: Request, expected: str) -> None:
    """Raise AuthenticationError unless ``Authorization: Bearer <expected>``; log failures without the token."""
    header = request.headers.get("authorization")
    reason = None
    if header is None:
        reason = "missing"
    else:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            reason = "malformed"
        elif not hmac.compare_digest(token.strip().encode("utf-8"), expected.encode("utf-8")):
            reason = "wrong"
    if reason is not None:
        client = request.client.host if request.client else "-"
        log.warning(
            "admin authentication failed",
            extra={"request_id": request_id_of(request), "client": client, "reason": reason, "path": request.url.path},
        )
        raise AuthenticationError(
            f"admin endpoints need 'Authorization: Bearer <token>' ({reason} token); the token is the one given "
            "to the server by --admin-token-file or ADAPTERDEPLOY_ADMIN_TOKEN"
        )


def task_name_at(path: str, roots: tuple[str, ...]) -> str:
    """The task name in ``path``/task.json, when ``path`` lies under one of the allowed ``roots``.

    Everything wrong with the directory is the client's error (4xx): outside the roots (403), not a task
    directory or a bad task.json (422), never a 500.
    """
    from adapterdeploy.artifacts import TASK_FILE, TaskSpec

    if "\x00" in path:
        raise InputError("parameters.path contains a NUL byte")
    real = os.path.realpath(path)  # symlinks and '..' resolved before the check, so neither can escape
    if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
        raise ForbiddenPathError(
            f"parameters.path {path[:200]!r} is outside the directories this server may load tasks from "
            f"({', '.join(roots)}); the operator allows more with serve --task-root DIR"
        )
    if not (Path(real) / TASK_FILE).is_file():
        raise TaskArtifactError(f"parameters.path {path[:200]!r} is not a task directory (no {TASK_FILE} in it)")
    try:
        return TaskSpec.read(Path(real)).name
    except (ArtifactError, OSError) as exc:
        raise TaskArtifactError(f"parameters.path: {exc}") from None


def admin_router(state: ServingState) -> APIRouter:
    token = state.settings.admin_token
    assert token is not None, "admin_router needs a configured token"
    router = APIRouter(prefix="/v2/repository", tags=["admin"])

    @router.post(
        "/index",
        summary="List tasks with state, size and use counts",
        openapi_extra=body_doc(RepositoryIndexRequest),
        responses={200: {"model": list[RepositoryModel]}, **ADMIN_ERRORS},
    )
    async def index(request: Request) -> Response:
        check_token(request, token)
        req = validate(RepositoryIndexRequest, parse_body(await read_body(request, state.settings), allow_empty=True))
        infos = await state.task_infos(offset=req.offset, limit=req.limit, loaded_only=req.ready)
        # Plain dicts with RepositoryModel's fields (the documented schema): validating 10,000 pydantic
        # models per listing took ~10x longer than building the dicts.
        models = []
        for info in infos:
            ready = info.state in ("loaded", "pinned")
            reason = "" if ready else info.error or "not loaded; loads on first request"
            models.append(
                {
                    "name": info.name,
                    "version": "",
                    "state": "READY" if ready else "UNAVAILABLE",
                    "reason": reason,
                    "load_state": info.state,
                    "size_bytes": info.size_bytes,
                    "use_count": info.use_count,
                    "last_used": info.last_used,
                    "priority": info.priority,
                }
            )
        dep = state.deployment
        total = dep.loaded_task_count if req.ready else dep.known_task_count
        return JSONResponse(models, headers={"x-adapterdeploy-total-tasks": str(total)})

    @router.post(
        "/models/{task}/load",
        summary="Load (and optionally pin) a task",
        openapi_extra=body_doc(LoadRequest),
        responses=ADMIN_ERRORS,
    )
    async def load(task: str, request: Request) -> Response:
        check_token(request, token)
        req = validate(LoadRequest, parse_body(await read_body(request, state.settings), allow_empty=True))
        params = req.parameters
        check_task_name(task, "URL", InputError)
        source = task
        if params.path is not None:
            spec_name = await asyncio.get_running_loop().run_in_executor(
                state.aux_pool, task_name_at, params.path, state.settings.allowed_task_roots
            )
            if spec_name != task:
                raise InputError(f"parameters.path holds task {spec_name!r}, not {task!r}; load it under its own name")
            source = os.path.realpath(params.path)
        else:
            state.require_task(task)
        try:
            info, seconds = await state.load_task(source, pin=params.pin, priority=params.priority)
        except (FingerprintMismatchError, RegistryFullError):
            raise  # already 4xx / 503 with their own types
        except (ArtifactError, OSError, ValueError, MemoryError) as exc:
            # A bad task artifact is what the admin asked to load: a 4xx naming it, never a 500.
            raise TaskArtifactError(f"task {task!r} cannot be loaded: {exc}") from None
        request.app.openapi_schema = None  # a task loaded from a path joins the documented task names
        log.info(
            "task loaded",
            extra={
                "request_id": request_id_of(request),
                "task": info.name,
                "pin": params.pin,
                "seconds": round(seconds, 4),
            },
        )
        return JSONResponse(
            {
                "name": info.name,
                "load_state": info.state,
                "size_bytes": info.size_bytes,
                "priority": info.priority,
                "load_seconds": round(seconds, 6),
            }
        )

    @router.post(
        "/models/{task}/unload",
        summary="Unload (evict, unpin) a task; it reloads on its next request",
        responses=ADMIN_ERRORS,
    )
    async def unload(task: str, request: Request) -> Response:
        check_token(request, token)
        await read_body(request, state.settings)
        await state.unload_task(task)
        log.info("task unloaded", extra={"request_id": request_id_of(request), "task": task})
        return JSONResponse({"name": task, "load_state": "known"})

    return router
