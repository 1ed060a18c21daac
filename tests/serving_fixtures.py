"""Shared helpers of the serving tests (not a test module): a tiny real deployment, servers on loopback.

The deployment is REAL: tiny random BERT (tests/conftest.py's ``tiny_base_dir``) + task checkpoints built
with EncoderWithAdapters / checkpoint_from_model, exported by ``export_deployment``; it is built once per
test session (cached here, since fixtures imported into several modules would otherwise run per module).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
MAX_LENGTH = 32
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
# (name, head config kwargs, text pair)
TASKS: tuple[tuple[str, dict[str, Any], bool], ...] = (
    ("sentiment", {"num_labels": 2, "labels": ("neg", "pos")}, False),
    ("topic", {"num_labels": 4, "labels": ("world", "sports", "business", "science")}, False),
    ("nli", {"num_labels": 3, "labels": ("entailment", "neutral", "contradiction")}, True),
    ("quality", {"problem_type": "regression", "num_labels": 1}, False),
    ("spam", {"num_labels": 2, "labels": ("ham", "spam"), "pooling": "mean"}, False),
    ("intent", {"num_labels": 5}, False),
)
SINGLE_TASKS = tuple(name for name, _, pair in TASKS if not pair)
_CACHE: dict[str, Path] = {}


def build_deployment(base_dir: Path, root: Path) -> Path:
    """Export every task of TASKS on the tiny base into ``root/deploy`` (once per session)."""
    key = str(base_dir)
    if key in _CACHE:
        return _CACHE[key]
    import torch

    from adapterdeploy.config import AdapterConfig, HeadConfig
    from adapterdeploy.exporter.deployment import export_deployment
    from adapterdeploy.models.base import load_base
    from adapterdeploy.models.checkpoint import checkpoint_from_model, save_checkpoint
    from adapterdeploy.models.encoder import EncoderWithAdapters

    base = load_base(base_dir)
    paths = []
    for i, (name, head, pair) in enumerate(TASKS):
        torch.manual_seed(100 + i)
        model = EncoderWithAdapters(base, AdapterConfig(bottleneck=4 + i, init_std=0.05), HeadConfig(**head))
        with torch.no_grad():  # visibly different outputs per task
            for p in model.head.parameters():
                p.normal_(0.0, 0.5)
        ckpt = checkpoint_from_model(model, name, max_length=MAX_LENGTH, text_pair=pair)
        paths.append(save_checkpoint(ckpt, root / "ckpt" / name))
    out = root / "deploy"
    export_deployment(base_dir, paths, out, precisions=("fp32",))
    _CACHE[key] = out
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    """A real uvicorn server on 127.0.0.1 in a background thread (the app and its batcher in this process)."""

    def __init__(self, settings: Any, deployment: Any = None) -> None:
        import uvicorn

        from adapterdeploy.serving.app import create_app
        from adapterdeploy.serving.server import uvicorn_config

        self.port = free_port()
        self.settings = settings.with_overrides(port=self.port)
        self.app = create_app(self.settings, deployment=deployment)
        self.server = uvicorn.Server(uvicorn_config(self.settings, self.app))
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> Any:
        return self.app.state.serving

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@contextlib.contextmanager
def subprocess_server(
    deploy_dir: Path, *args: str, env: dict[str, str] | None = None, log_path: Path | None = None
) -> Iterator[tuple[subprocess.Popen, str]]:
    """``adapterdeploy serve`` in a child process; yields (process, base url) once ready; kills it at exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "adapterdeploy.cli", "serve", str(deploy_dir), "--port", str(port), *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        if log_path:
            log.close()  # type: ignore[union-attr]


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} was not ready within {timeout} s")


def wait_task_check(url: str, timeout: float = 30) -> httpx.Response:
    """``/v2/health/ready`` once the server's background task check has opened every task (its last answer)."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{url}/v2/health/ready", timeout=5)
        body = r.json()
        if body.get("tasks_checked") == body.get("tasks_known") or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= set(lab))
