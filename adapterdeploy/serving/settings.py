"""One explicit, frozen ``Settings`` object for the server, built once (CLI or caller) and passed down.

Nothing in ``adapterdeploy.serving`` reads the environment at import time: the CLI turns flags (and, via
click's ``auto_envvar_prefix``, ``ADAPTERDEPLOY_SERVE_*`` variables) into a ``Settings``; the admin token
is read from its file or ``ADAPTERDEPLOY_ADMIN_TOKEN`` by :func:`read_admin_token`, called by the CLI.
Multi-process modes (``--workers``, Ray replicas) ship the settings to each process as JSON
(:meth:`Settings.to_json` / :meth:`Settings.from_json`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from adapterdeploy.errors import ConfigError
from adapterdeploy.runtime.inputs import MAX_CHARS_PER_TEXT
from adapterdeploy.runtime.options import RuntimeOptions

__all__ = ["ADMIN_TOKEN_ENV", "Settings", "read_admin_token"]

ADMIN_TOKEN_ENV = "ADAPTERDEPLOY_ADMIN_TOKEN"
MIB = 1 << 20


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to know; the defaults are the CLI's defaults.

    Batching: one forward runs at most ``max_batch_rows`` rows and ``max_batch_tokens`` (unpadded) tokens,
    and waits at most ``max_wait_ms`` after the oldest queued request arrived. The queue holds at most
    ``max_queue`` rows; more gets 429 with Retry-After. Limits are checked before tokenization except
    ``truncate=False``'s token limit, which needs the token count.
    """

    deploy_dir: str
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int | None = None  # None: no gRPC server
    # batching
    max_batch_rows: int = 64
    max_batch_tokens: int = 16384
    max_wait_ms: float = 2.0
    max_queue: int = 2048
    request_timeout_s: float = 30.0
    # request limits
    max_body_bytes: int = MIB
    max_rows_per_request: int = 256
    max_chars_per_text: int = MAX_CHARS_PER_TEXT
    max_tasks_per_request: int = 32
    truncate: bool = True
    # slow clients and shutdown
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    keep_alive_s: int = 5
    max_connections: int = 1024
    drain_s: float = 20.0
    # how the deployment runs (Deployment.open gets it whole, its batch size set to max_batch_rows)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    preload: tuple[str, ...] = ()
    # directories the admin API may load task directories from (empty: the deployment's own tasks/)
    task_roots: tuple[str, ...] = ()
    # process model
    workers: int = 1
    ray: bool = False
    replicas: int = 1
    # admin token: None = admin endpoints off (404). Never printed (repr=False).
    admin_token: str | None = field(default=None, repr=False)
    log_level: str = "info"
    access_log_json: bool = True

    def __post_init__(self) -> None:
        positive = (
            "port",
            "max_batch_rows",
            "max_batch_tokens",
            "max_queue",
            "max_body_bytes",
            "max_rows_per_request",
            "max_chars_per_text",
            "max_tasks_per_request",
            "keep_alive_s",
            "max_connections",
            "workers",
            "replicas",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"serve setting {name} must be a positive integer, got {value!r}")
        for name in ("max_wait_ms", "request_timeout_s", "header_timeout_s", "body_timeout_s", "drain_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"serve setting {name} must be a number >= 0, got {value!r}")
        if self.port > 65535:
            raise ConfigError(f"--port {self.port} is not a TCP port (1-65535)")
        if self.grpc_port is not None and (
            not isinstance(self.grpc_port, int) or not 1 <= self.grpc_port <= 65535 or self.grpc_port == self.port
        ):
            raise ConfigError(f"--grpc-port {self.grpc_port!r} must be a TCP port (1-65535) other than --port")
        if self.max_rows_per_request > self.max_queue:
            raise ConfigError(
                f"--max-rows-per-request {self.max_rows_per_request} exceeds --max-queue {self.max_queue}: such a "
                "request could never be queued; raise --max-queue or lower --max-rows-per-request"
            )
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ConfigError(
                f"the admin token has {len(self.admin_token)} characters; use at least 16 random characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        if not isinstance(self.runtime, RuntimeOptions):
            raise ConfigError(f"serve setting runtime must be a RuntimeOptions, got {type(self.runtime).__name__}")
        object.__setattr__(self, "preload", tuple(self.preload))
        object.__setattr__(self, "task_roots", tuple(self.task_roots))

    @property
    def allowed_task_roots(self) -> tuple[str, ...]:
        """Resolved directories the admin API may load from (default: ``<deployment>/tasks``)."""
        roots = self.task_roots or (os.path.join(self.deploy_dir, "tasks"),)
        return tuple(os.path.realpath(r) for r in roots)

    @property
    def admin_enabled(self) -> bool:
        return self.admin_token is not None

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0

    def runtime_options(self) -> RuntimeOptions:
        """What ``Deployment.open`` gets: the runtime options, batch size = ``max_batch_rows`` (the batcher's
        batches are never split again by the runtime)."""
        return self.runtime.with_changes(batch_size=self.max_batch_rows)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def to_json(self) -> str:
        """JSON for a child process (``--workers``, Ray replicas). Holds the admin token: pass it privately."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ConfigError(f"serve settings must be a JSON object, got {type(data).__name__}")
        # Runtime options may also be given flat (``precision: int8`` beside ``port``, as a RayService's
        # ``args`` are written by hand); they go into ``runtime``.
        flat = {k: data.pop(k) for k in list(data) if k in {f.name for f in fields(RuntimeOptions)}}
        if flat:
            data["runtime"] = {**data.get("runtime", {}), **flat}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown serve settings {sorted(unknown)}")
        for key in ("preload", "task_roots"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        if "runtime" in data:
            data["runtime"] = RuntimeOptions.from_dict(data["runtime"])
        return cls(**data)


def read_admin_token(token_file: str | Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The admin bearer token from ``token_file`` (first line, stripped) or ``ADAPTERDEPLOY_ADMIN_TOKEN``.

    A file wins over the environment. Returns None when neither is set: the admin endpoints are then off.
    Called by the CLI at startup, never at import time.
    """
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read --admin-token-file {path}: {exc.strerror}") from exc
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not token:
            raise ConfigError(f"--admin-token-file {path} is empty; write a token of 16+ random characters into it")
        return token
    env = os.environ if environ is None else environ
    token = env.get(ADMIN_TOKEN_ENV, "").strip()
    return token or None
