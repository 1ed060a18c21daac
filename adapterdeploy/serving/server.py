"""Running the app under uvicorn: slow-client timeouts, connection limits, graceful drain, workers.

What protects the server from slow or idle clients (each a uvicorn setting unless noted):

* header timeout (``--header-timeout``, ours): a connection must deliver a complete request head within
  N seconds of connecting or of its previous response, else it is closed. uvicorn has no such timer
  (its keep-alive timer restarts on every byte), so :class:`TimedH11Protocol` adds one to the h11 protocol;
* header size: h11 refuses request heads over 16 KiB (``h11_max_incomplete_event_size``);
* body timeout (``--body-timeout``, ours, in the app): the whole body within N seconds, else 408;
* idle keep-alive connections close after ``--keep-alive`` seconds (``timeout_keep_alive``);
* at most ``--max-connections`` concurrent connections or requests; beyond, requests get 503 with
  Retry-After, except the health probes (``/v2/health/live`` and ``/ready``), which are always answered:
  uvicorn's own ``limit_concurrency`` refuses every request alike, and a refused liveness probe makes
  Kubernetes restart a pod that is healthy but busy, so :class:`TimedH11Protocol` applies the limit itself;
* SIGTERM: readiness turns 503 at once (the app chains the signal, see ``app.install_drain_signal``),
  uvicorn stops accepting, in-flight requests finish within ``--drain`` seconds
  (``timeout_graceful_shutdown``), then the batcher drains and the process exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import signal
import stat
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.supervisors import Multiprocess

from adapterdeploy.serving.logs import configure_logging
from adapterdeploy.serving.metrics import METRICS_DIR_ENV
from adapterdeploy.serving.settings import Settings

__all__ = ["SETTINGS_FILE_ENV", "ServeConfig", "TimedH11Protocol", "app_from_env", "run_server", "uvicorn_config"]

SETTINGS_FILE_ENV = "ADAPTERDEPLOY_SERVE_SETTINGS_FILE"
MAX_HEAD_BYTES = 16 * 1024
PROBE_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
log = logging.getLogger("adapterdeploy.serving")
_OVER_LIMIT = json.dumps(
    {
        "error": "the server is at its connection limit (--max-connections); retry after 1 s or add replicas",
        "error_type": "unavailable",
        "request_id": "-",
    }
).encode()


class ServeConfig(uvicorn.Config):
    """uvicorn's Config plus the header timeout that :class:`TimedH11Protocol` reads."""

    def __init__(self, app: Any, *, header_timeout_s: float = 10.0, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head (slowloris protection) and a
    concurrency limit that never refuses the health probes."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.header_timeout_s = float(getattr(config, "header_timeout_s", 10.0))
        self._head_timer: asyncio.TimerHandle | None = None
        # uvicorn checks limit_concurrency before it knows the path; we take the check over (same counts).
        self.max_concurrency, self.limit_concurrency = self.limit_concurrency, None
        self.app = self._admit(self.app)

    def _admit(self, app: Any) -> Any:
        async def admitted(scope: Any, receive: Any, send: Any) -> None:
            limit = self.max_concurrency
            # self.tasks includes this request's own task (uvicorn counts before creating it, hence >=).
            if (
                limit is not None
                and scope["type"] == "http"
                and scope["path"] not in PROBE_PATHS
                and (len(self.connections) >= limit or len(self.tasks) > limit)
            ):
                log.warning(
                    "refused a request: %d connections, %d requests, --max-connections %d",
                    len(self.connections),
                    len(self.tasks),
                    limit,
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 503,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(_OVER_LIMIT)).encode()),
                            (b"retry-after", b"1"),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": _OVER_LIMIT})
                return
            await app(scope, receive, send)

        return admitted

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        if self.header_timeout_s > 0:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._waiting_for_head() and not self.transport.is_closing():
            self.logger.debug(
                "closing a connection that sent no complete request head in %.1f s", self.header_timeout_s
            )
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._waiting_for_head():
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._waiting_for_head() and not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)


def uvicorn_config(settings: Settings, app: Any, **overrides: Any) -> ServeConfig:
    """The uvicorn configuration for ``settings`` (``app``: an ASGI app, or an import string with workers)."""
    kwargs: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": TimedH11Protocol,
        "lifespan": "on",
        "log_config": None,
        "access_log": False,  # our middleware writes one structured line per request instead
        "server_header": False,
        "timeout_keep_alive": settings.keep_alive_s,
        "timeout_graceful_shutdown": max(1, math.ceil(settings.drain_s)),
        "limit_concurrency": settings.max_connections,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "header_timeout_s": settings.header_timeout_s,
    }
    kwargs.update(overrides)
    return ServeConfig(app, **kwargs)


def app_from_env() -> Any:
    """App factory for ``--workers N`` children: settings come from the file named by the environment.

    Read when uvicorn calls the factory in each worker, never at import time.
    """
    from adapterdeploy.serving.app import create_app

    path = os.environ.get(SETTINGS_FILE_ENV)
    if not path:
        raise RuntimeError(f"{SETTINGS_FILE_ENV} is not set; start workers with `adapterdeploy serve --workers N`")
    settings = Settings.from_json(Path(path).read_text(encoding="utf-8"))
    configure_logging(settings.log_level, json_lines=settings.access_log_json)
    return create_app(settings, metrics_dir=os.environ.get(METRICS_DIR_ENV))


def _exit_cleanly(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run_server(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT (blocking). One process, or ``settings.workers`` uvicorn workers."""
    from adapterdeploy.serving.app import create_app

    configure_logging(settings.log_level, json_lines=settings.access_log_json)
    if settings.workers == 1:
        # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, to the handler that was installed
        # before it started. Ours exits 0: a server that drained cleanly is "Completed", not killed (143).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_cleanly)
        uvicorn.Server(uvicorn_config(settings, create_app(settings))).run()
        return
    # Workers get the settings (with the admin token) through a private file, not the environment.
    fd, name = tempfile.mkstemp(prefix="adapterdeploy-serve-", suffix=".json")
    # One /metrics scrape reports every worker: prometheus-client's multiprocess mode, in a fresh directory
    # (stale files would add a previous run's counts) unless the operator chose one.
    own_metrics_dir = METRICS_DIR_ENV not in os.environ
    if own_metrics_dir:
        os.environ[METRICS_DIR_ENV] = tempfile.mkdtemp(prefix="adapterdeploy-metrics-")
    try:
        os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(settings.to_json())
        os.environ[SETTINGS_FILE_ENV] = name
        config = uvicorn_config(
            settings, "adapterdeploy.serving.server:app_from_env", factory=True, workers=settings.workers
        )
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        Path(name).unlink(missing_ok=True)
        if own_metrics_dir:
            shutil.rmtree(os.environ.pop(METRICS_DIR_ENV), ignore_errors=True)
