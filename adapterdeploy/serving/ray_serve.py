"""Scale-out on Ray Serve: the same FastAPI app as a Ray Serve deployment with N replicas.

Each replica builds its own app (``create_app``) when it starts, opening the deployment directory itself:
replicas share nothing but that directory (which must be readable at the same path on every node, e.g. a
shared volume, or baked into the image). Ray's HTTP proxy spreads requests over replicas; inside a
replica the batcher works as in plain ``serve``. ``max_ongoing_requests`` is raised from Ray's default (5)
to ``--max-connections`` so that enough requests reach one replica to form batches; the replica's own
bounded queue still answers 429 when full.

Task affinity (Ray Serve model multiplexing, keyed by task): a request carrying the header
``serve_multiplexed_model_id: <task>`` is routed by Ray's proxy preferably to a replica that has that task
loaded, else to the replica with the fewest tasks, else to any replica (Ray's fallback). Each replica
records its tasks through a ``@serve.multiplexed`` loader (``max_num_models_per_replica`` = the
replica's ``--max-loaded-tasks``, so Ray's per-replica LRU and the registry's budget track the same
tasks; a disagreement costs a reload, never a wrong answer). Requests without the header are served
by any replica, as before. The ``x-adapterdeploy-cold-tasks`` response header says whether the task
had to be read on the replica that answered (the hit rate is measured from it).

Run: ``adapterdeploy serve DEPLOY_DIR --ray --replicas 2`` (starts a local Ray, or joins the cluster in
``RAY_ADDRESS``). Stop with Ctrl+C / SIGTERM: Serve shuts down, each replica drains (``--drain``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from adapterdeploy.serving.settings import Settings

__all__ = ["APP_NAME", "TASK_HEADER", "TaskAffinity", "app_builder", "build_ray_app", "run_ray"]

log = logging.getLogger("adapterdeploy.serving.ray")
APP_NAME = "adapterdeploy"
TASK_HEADER = "serve_multiplexed_model_id"  # Ray Serve's routing header; the value is the task name
COLD_HEADER = b"x-adapterdeploy-cold-tasks"


class TaskAffinity:
    """Pure ASGI middleware of a replica: a request's routing-header task is recorded as resident here.

    ``replica.resident_task`` is the ``@serve.multiplexed`` loader: Ray calls it once per task until its
    per-replica LRU drops the task, and tells its router which replica holds which tasks.
    """

    def __init__(self, app: Any, replica: Any) -> None:
        self.app = app
        self.replica = replica

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            from ray import serve

            task = serve.get_multiplexed_model_id()
            state = self.replica.app.state.serving
            if task and state.started and state.deployment.has_task(task):
                cold = not state.deployment.is_loaded(task)
                try:
                    await self.replica.resident_task(task)
                except Exception as exc:  # a task that cannot load: the app answers its typed error itself
                    log.debug("task %s not recorded as resident: %r", task, exc)
                if cold:  # read here, before the app saw it: the app's own header would say 0
                    send = _cold_header(send)
        await self.app(scope, receive, send)


def _cold_header(send: Any) -> Any:
    """``send`` with ``x-adapterdeploy-cold-tasks: 1`` on the response start (replacing the app's value)."""

    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k != COLD_HEADER]
            message["headers"] = [*headers, (COLD_HEADER, b"1")]
        await send(message)

    return wrapped


def build_ray_app(settings: Settings) -> Any:
    """A bound Ray Serve application (``serve.run`` it) with ``settings.replicas`` replicas."""
    from ray import serve

    threads = settings.runtime.threads or max(1, (os.cpu_count() or 1) // settings.replicas)
    replica_settings = settings.with_overrides(
        runtime=settings.runtime.with_changes(threads=threads), workers=1, ray=False
    )
    per_replica = settings.runtime.max_loaded_tasks or -1  # -1: Ray keeps every task it saw (no budget)

    @serve.deployment(
        name="adapterdeploy",
        num_replicas=settings.replicas,
        max_ongoing_requests=settings.max_connections,
        graceful_shutdown_timeout_s=settings.drain_s,
        ray_actor_options={"num_cpus": min(1.0, (os.cpu_count() or 1) / settings.replicas)},
    )
    @serve.ingress()
    class AdapterDeployReplica:
        """One replica: builds the app in the replica process (late-bound ingress)."""

        def __init__(self, settings_json: str) -> None:
            self._settings = Settings.from_json(settings_json)

        def __serve_build_asgi_app__(self) -> Any:
            from adapterdeploy.serving.app import create_app
            from adapterdeploy.serving.logs import configure_logging

            configure_logging(self._settings.log_level, json_lines=self._settings.access_log_json)
            app = create_app(self._settings)
            app.add_middleware(TaskAffinity, replica=self)
            return app

        @serve.multiplexed(max_num_models_per_replica=per_replica)
        async def resident_task(self, task: str) -> str:
            """Ray's per-replica loader for ``task``: read it (off the forward thread) and report it resident."""
            await self.app.state.serving.prefetch(task)  # type: ignore[attr-defined]
            return task

        def check_health(self) -> None:
            """Ray restarts a replica whose batching loop died."""
            state = self.app.state.serving  # type: ignore[attr-defined]
            if state.started and not state.draining and not (state.batcher and state.batcher.alive):
                raise RuntimeError("the batching loop has stopped")

    return AdapterDeployReplica.bind(replica_settings.to_json())  # type: ignore[attr-defined]  # added by serve.deployment


def app_builder(args: dict[str, Any]) -> Any:
    """Ray Serve application builder for a config file / KubeRay ``serveConfigV2``.

    ``import_path: adapterdeploy.serving.ray_serve:app_builder`` with ``args`` holding serve settings
    (``deploy_dir`` required; e.g. ``replicas``, ``max_loaded_tasks``, ``max_wait_ms``); the admin token
    comes from ``ADAPTERDEPLOY_ADMIN_TOKEN`` in the replicas' environment, never from the config.
    """
    import json

    from adapterdeploy.serving.settings import read_admin_token

    data = {k: v for k, v in dict(args).items() if k != "admin_token"}
    settings = Settings.from_json(json.dumps(data))
    return build_ray_app(settings.with_overrides(admin_token=read_admin_token(None)))


def run_ray(settings: Settings) -> None:
    """Start (or join) Ray, run the app on ``settings.host:port`` and block until SIGTERM/SIGINT."""
    import ray
    from ray import serve

    from adapterdeploy.serving.logs import configure_logging

    configure_logging(settings.log_level, json_lines=settings.access_log_json)
    ray.init(ignore_reinit_error=True, include_dashboard=False, logging_level=logging.WARNING)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_ray_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
        log.info(
            "ray serve running", extra={"replicas": settings.replicas, "host": settings.host, "port": settings.port}
        )
        print(
            f"serving {settings.deploy_dir} with {settings.replicas} Ray Serve replicas on "
            f"http://{settings.host}:{settings.port}",
            flush=True,
        )
        stop.wait()
    finally:
        log.info("shutting down ray serve")
        serve.shutdown()
        ray.shutdown()
