"""``adapterdeploy serve``: the HTTP server (uvicorn) or, with ``--ray``, Ray Serve replicas of the same app.

Every option can also come from ``ADAPTERDEPLOY_SERVE_<OPTION>`` (click's ``auto_envvar_prefix``); the admin
token from ``--admin-token-file`` or ``ADAPTERDEPLOY_ADMIN_TOKEN``. Heavy imports happen inside the command.
"""

from __future__ import annotations

import os
from typing import Any

import click

from adapterdeploy.cli_errors import cli_error
from adapterdeploy.runtime.inputs import MAX_CHARS_PER_TEXT
from adapterdeploy.runtime.options import RuntimeOptions, parse_bytes, runtime_options

__all__ = ["serve"]


@click.command("serve")
@click.argument("deploy_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on. The default accepts only local clients; 0.0.0.0 exposes the server "
    "(in a container, behind a proxy).",
)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--grpc-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Also serve the Open Inference Protocol v2 over gRPC on this port (off by default; e.g. 8081). "
    "Same batcher, limits and metrics as HTTP.",
)
@click.option(
    "--max-batch-rows",
    default=64,
    show_default=True,
    type=int,
    help="Rows per mixed forward. Larger batches raise throughput and each request's latency.",
)
@click.option(
    "--max-batch-tokens",
    default=16384,
    show_default=True,
    type=int,
    help="Unpadded tokens per forward: bounds memory and the time one forward takes.",
)
@click.option(
    "--max-wait-ms",
    default=2.0,
    show_default=True,
    type=float,
    help="How long an idle server waits for more requests before running a forward. 0 = lowest "
    "latency; a few ms = fuller batches at low load. Under load batches fill without waiting.",
)
@click.option(
    "--max-queue",
    default=2048,
    show_default=True,
    type=int,
    help="Rows allowed to wait; beyond it requests get 429 + Retry-After (bounded memory and latency).",
)
@click.option(
    "--request-timeout",
    default=30.0,
    show_default=True,
    type=float,
    help="Seconds a request may wait for its result (queue + forward) before a 503.",
)
@click.option(
    "--max-body-bytes",
    default="1MiB",
    show_default=True,
    help="Largest request body (413 beyond), refused before reading it when Content-Length says so.",
)
@click.option(
    "--max-rows-per-request",
    default=256,
    show_default=True,
    type=int,
    help="Rows per request (inputs x tasks for fan-out); 413 beyond.",
)
@click.option(
    "--max-chars-per-text",
    default=MAX_CHARS_PER_TEXT,
    show_default=True,
    type=int,
    help="Characters per text, checked before tokenization (400 beyond).",
)
@click.option("--max-tasks-per-request", default=32, show_default=True, type=int, help="Tasks per fan-out request.")
@click.option(
    "--truncate/--no-truncate",
    default=True,
    show_default=True,
    help="Cut texts longer than the deployment's max_length (flagged truncated) or refuse them (400).",
)
@click.option(
    "--header-timeout",
    default=10.0,
    show_default=True,
    type=float,
    help="Seconds a connection gets to send a complete request head (slow-client protection).",
)
@click.option(
    "--body-timeout",
    default=10.0,
    show_default=True,
    type=float,
    help="Seconds a client gets to send its whole body (408 beyond).",
)
@click.option("--keep-alive", default=5, show_default=True, type=int, help="Idle keep-alive seconds.")
@click.option(
    "--max-connections",
    default=1024,
    show_default=True,
    type=int,
    help="Concurrent connections per process; beyond, 503 (protects memory and file descriptors).",
)
@click.option(
    "--drain",
    "drain_s",
    default=20.0,
    show_default=True,
    type=float,
    help="On SIGTERM: seconds in-flight requests get to finish (readiness is 503 meanwhile).",
)
@runtime_options
@click.option("--preload", multiple=True, help="Task(s) to load at startup (others load on first request).")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=int,
    help="uvicorn worker processes, each with its own deployment and batcher: more CPU parallelism, "
    "smaller batches per process. Each /metrics scrape sees one worker.",
)
@click.option(
    "--admin-token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the bearer token of the admin API (/v2/repository/...). Without it (or "
    "ADAPTERDEPLOY_ADMIN_TOKEN) the admin API is off (404).",
)
@click.option(
    "--task-root",
    "task_roots",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Directory the admin API may load task directories from (parameters.path must lie under one; "
    "repeatable). Default: the deployment's own tasks/. Keeps a leaked admin token from reading "
    "arbitrary files of the server.",
)
@click.option("--ray", is_flag=True, help="Run as a Ray Serve application instead of plain uvicorn.")
@click.option(
    "--replicas",
    default=1,
    show_default=True,
    type=int,
    help="With --ray: replicas of the app (each opens the deployment dir; nothing else is shared).",
)
@click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
@click.option("--log-format", default="json", show_default=True, type=click.Choice(["json", "text"]))
def serve(deploy_dir: str, **opts: Any) -> None:
    """Serve a deployment over HTTP: KServe v2 + JSON API, batched across tasks.

    \b
    Endpoints: GET /v2/health/live|ready, /v2, /v2/models/TASK[/versions/V][/ready],
               POST /v2/models/TASK[/versions/V]/infer (JSON or binary tensors); gRPC with --grpc-port;
               POST /v1/predict, POST /v1/fan-out, GET /metrics, /docs; admin under /v2/repository.
    Example:   adapterdeploy serve ./deploy --port 8080
    """
    from adapterdeploy.artifacts import Manifest
    from adapterdeploy.errors import AdapterDeployError
    from adapterdeploy.serving.settings import Settings, read_admin_token

    try:
        Manifest.read(deploy_dir)  # fail fast on a wrong directory, before starting a server
        workers = int(opts["workers"])
        runtime = RuntimeOptions.from_cli(opts)
        if runtime.threads is None and workers > 1:
            runtime = runtime.with_changes(threads=max(1, (os.cpu_count() or 1) // workers))
        settings = Settings(
            deploy_dir=os.path.abspath(deploy_dir),
            host=opts["host"],
            port=opts["port"],
            grpc_port=opts["grpc_port"],
            max_batch_rows=opts["max_batch_rows"],
            max_batch_tokens=opts["max_batch_tokens"],
            max_wait_ms=opts["max_wait_ms"],
            max_queue=opts["max_queue"],
            request_timeout_s=opts["request_timeout"],
            max_body_bytes=int(parse_bytes(opts["max_body_bytes"]) or 0),  # 0 is refused by Settings
            max_rows_per_request=opts["max_rows_per_request"],
            max_chars_per_text=opts["max_chars_per_text"],
            max_tasks_per_request=opts["max_tasks_per_request"],
            truncate=opts["truncate"],
            header_timeout_s=opts["header_timeout"],
            body_timeout_s=opts["body_timeout"],
            keep_alive_s=opts["keep_alive"],
            max_connections=opts["max_connections"],
            drain_s=opts["drain_s"],
            runtime=runtime,
            preload=tuple(opts["preload"]),
            task_roots=tuple(os.path.abspath(r) for r in opts["task_roots"]),
            workers=workers,
            ray=bool(opts["ray"]),
            replicas=opts["replicas"],
            admin_token=read_admin_token(opts["admin_token_file"]),
            log_level=opts["log_level"],
            access_log_json=opts["log_format"] == "json",
        )
    except AdapterDeployError as exc:
        raise cli_error(exc) from exc
    if settings.ray:
        if settings.grpc_port is not None:
            raise click.UsageError("--grpc-port is not available with --ray; Ray Serve proxies HTTP only here")
        from adapterdeploy.serving.ray_serve import run_ray

        run_ray(settings)
        return
    from adapterdeploy.serving.server import run_server

    grpc_note = f" and gRPC on {settings.host}:{settings.grpc_port}" if settings.grpc_port else ""
    click.echo(
        f"serving {deploy_dir} on http://{settings.host}:{settings.port}{grpc_note} "
        f"(docs at /docs; admin API {'on' if settings.admin_enabled else 'off'}); Ctrl+C or SIGTERM stops",
        err=True,
    )
    run_server(settings)
