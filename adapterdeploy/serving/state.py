"""One server process's state: the open Deployment, its two worker threads, the batcher and the metrics.

Threads: ``forward`` (one thread) runs every mixed forward, so onnxruntime sessions see one caller and
use their own intra-op pool; ``aux`` (one thread) tokenizes each request's texts once (the encodings go
through the queue to the forward: ``Deployment.predict_encoded``), reads task metadata and runs admin
loads, so none of that waits behind a forward or blocks the event loop; ``load`` (one thread) reads a
request's cold task (task.json, checksums, weights) before the request is queued, so a task load
overlaps other requests' forwards instead of stalling the batch it lands in. The runtime is thread-safe
(its registry has a lock; its tokenizers are never mutated after open).

A task that fails (unreadable files, or its weights / head failing in a batch) is answered 503
``task_failed`` for its own rows only; readiness lists it (:meth:`ServingState.readiness`).

Start-up does not walk the tasks: the server is ready once the featurizer is open (its files verified) and
the batcher runs, whatever the number of tasks. A ``task-check`` thread then opens every task's files (an
open and a stat each, as ``Deployment.check_task``) and marks the unreadable ones failed as it goes, so
``tasks_not_ready`` fills in within seconds at 10,000 tasks; until it reaches a task, that task is verified
on its first use (checksums, as always) and fails then if it must. Readiness reports the check's progress.

Per-request work never walks the whole task list: known / loaded checks are dict lookups and the task
metadata cache is a bounded LRU, so a deployment of 10,000 tasks serves like one of 10.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from adapterdeploy.errors import AdapterDeployError, InputError, UnavailableError, UnknownTaskError
from adapterdeploy.runtime.embedding import Embed
from adapterdeploy.serving.batcher import Batcher
from adapterdeploy.serving.metrics import REJECT_REASONS, UNKNOWN_TASK, Metrics
from adapterdeploy.serving.protocol import TaskMeta, task_version
from adapterdeploy.serving.settings import Settings

__all__ = ["CLIENT_GONE_STATUS", "REASON_BY_TYPE", "ClientGone", "ServingState", "Tracker"]

log = logging.getLogger("adapterdeploy.serving")

REASON_BY_TYPE = {
    "overloaded": "queue_full",
    "payload_too_large": "too_large",
    "timeout": "timeout",
    "unavailable": "unavailable",
    "unauthorized": "unauthorized",
    "client_timeout": "client_slow",
    "client_gone": "client_gone",
}
CLIENT_GONE_STATUS = 499  # nginx's "client closed request": logged and counted, never sent
META_CACHE_MIN = 1024  # task metadata cached (LRU); at least the loaded-task budget when that is larger


class ClientGone(AdapterDeployError):
    """The client disconnected while its request waited; its rows were dropped from the queue."""

    error_type = "client_gone"
    http_status = CLIENT_GONE_STATUS


class ServingState:
    """Created by the app factory; ``start()`` in the lifespan startup, ``stop()`` at shutdown."""

    def __init__(self, settings: Settings, metrics: Metrics, deployment: Any = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.deployment = deployment
        self._owns_deployment = deployment is None
        self.forward_pool = ThreadPoolExecutor(1, thread_name_prefix="adapterdeploy-forward")
        self.aux_pool = ThreadPoolExecutor(1, thread_name_prefix="adapterdeploy-aux")
        self.load_pool = ThreadPoolExecutor(1, thread_name_prefix="adapterdeploy-load")
        self._prefetching: dict[str, asyncio.Future[Any]] = {}
        self.prefetched = 0  # cold tasks read by the load thread (not by a forward)
        self.batcher: Batcher | None = None
        self.draining = False
        self.started = False
        self.max_length = 0
        self._meta: OrderedDict[str, TaskMeta] = OrderedDict()
        self._meta_cap = max(META_CACHE_MIN, settings.runtime.max_loaded_tasks or 0)
        self.tasks_checked = 0  # tasks the background check has opened so far (see check_all_tasks)
        self.task_check_done = False
        self._stop_check = threading.Event()
        self._check_thread: threading.Thread | None = None
        # Names this process (worker / replica) in the x-adapterdeploy-instance response header.
        self.instance_id = uuid.uuid4().hex[:12]

    # ------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        if self.deployment is None:
            from adapterdeploy.runtime import Deployment

            opener = partial(Deployment.open, self.settings.deploy_dir, self.settings.runtime_options())
            self.deployment = await loop.run_in_executor(self.aux_pool, opener)
        self.max_length = int(self.deployment.max_length)
        for name in self.settings.preload:
            await self.load_task(name)
        s = self.settings
        self.batcher = Batcher(
            self._run_batch,
            executor=self.forward_pool,
            max_rows=s.max_batch_rows,
            max_tokens=s.max_batch_tokens,
            max_wait_s=s.max_wait_s,
            max_queue_rows=s.max_queue,
            metrics=self.metrics,
        )
        await self.batcher.start()
        self.metrics.bind_task_counts(
            lambda: float(self.deployment.loaded_task_count),
            lambda: float(self.deployment.known_task_count),
            lambda: float(self.deployment.failed_task_count()),
        )
        self.started = True
        self.metrics.ready.set(1)
        self._check_thread = threading.Thread(target=self.check_all_tasks, name="adapterdeploy-task-check", daemon=True)
        self._check_thread.start()
        log.info(
            "deployment open",
            extra={
                "deploy_dir": str(s.deploy_dir),
                "tasks": self.deployment.known_task_count,
                "seconds": round(time.perf_counter() - t0, 3),
            },
        )

    def check_all_tasks(self) -> None:
        """Open every known task's files once (background thread), marking unreadable tasks failed.

        O(known tasks) in total but off the start-up path and off the request path: one task at a time, at
        the pace of the disk. Stops early when the server stops.
        """
        try:
            for name in self.deployment.task_names:
                if self._stop_check.is_set():
                    return
                problem = self.deployment.check_task(name)
                if problem is not None:
                    log.error("task %s is not ready: %s", name, problem)
                self.tasks_checked += 1
            self.task_check_done = True
            log.info("task check done", extra={"tasks": self.tasks_checked})
        except Exception:  # e.g. the deployment closed under us at shutdown: the check is advisory
            if not self._stop_check.is_set():
                log.exception("the background task check stopped")

    async def stop(self) -> None:
        self._stop_check.set()
        self.begin_drain()
        if self.batcher is not None:
            await self.batcher.close(self.settings.drain_s)
        self.forward_pool.shutdown(wait=True, cancel_futures=True)
        self.aux_pool.shutdown(wait=True, cancel_futures=True)
        self.load_pool.shutdown(wait=True, cancel_futures=True)
        if self._check_thread is not None:
            self._check_thread.join(timeout=10)
        if self._owns_deployment and self.deployment is not None:
            self.deployment.close()
        self.metrics.close()

    def begin_drain(self) -> None:
        """Readiness turns 503 now; in-flight and queued requests still finish. Safe from a signal handler."""
        if not self.draining:
            self.draining = True
            self.metrics.ready.set(0)
            log.info("draining: readiness is now 503; finishing in-flight requests")

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.batcher is not None and self.batcher.alive

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, not-ready tasks and why). Ready: started, not draining, and at least one task can serve.

        One failed task does not take the replica out of service (its own requests get 503 task_failed and
        every replica would fail the same way); a replica none of whose tasks can serve is not ready. Tasks
        are known failed once the background check (or a first use) reached them: ``tasks_checked`` says
        how far the check is. O(failed tasks), never O(known).
        """
        if self.deployment is None or not self.started:
            return False, {}
        failed = self.deployment.failed_tasks()
        known = self.deployment.known_task_count
        servable = known > len(failed) or known == 0
        return self.ready and servable, failed

    def known_task_count(self) -> int:
        return 0 if self.deployment is None else int(self.deployment.known_task_count)

    def require_ready(self) -> None:
        if not self.started or self.batcher is None:
            raise UnavailableError("the server is still starting; retry in a moment")

    # ------------------------------------------------------------------------------------- tasks
    def task_label(self, task: str) -> str:
        """A bounded metric label: the task name if the deployment knows it."""
        if self.deployment is None or not self.deployment.has_task(task):
            return UNKNOWN_TASK
        return self.metrics.task_label(task, self.deployment.known_task_count)

    def require_task(self, task: str) -> None:
        if not self.deployment.has_task(task):
            n = self.deployment.known_task_count
            shown = ", ".join(i.name for i in self.deployment.tasks(limit=10)) + (", ..." if n > 10 else "")
            raise UnknownTaskError(
                f"unknown task {task[:200]!r}; this deployment serves {n} tasks ({shown}); "
                "POST /v2/repository/index (admin) or `adapterdeploy inspect DEPLOY_DIR` lists them"
            )

    def require_serving(self, task: str) -> None:
        """Refuse a failed task's request at once (503 task_failed) instead of queueing it."""
        reason = self.deployment.task_failure(task)
        if reason is not None:
            from adapterdeploy.runtime.registry import failed_error

            raise failed_error(task, reason)

    async def task_meta(self, task: str) -> TaskMeta:
        self.require_task(task)
        meta = self._meta.get(task)
        if meta is None:
            meta = await asyncio.get_running_loop().run_in_executor(self.aux_pool, self._read_meta, task)
            self._meta[task] = meta
            while len(self._meta) > self._meta_cap:
                self._meta.popitem(last=False)
        else:
            self._meta.move_to_end(task)
        return meta

    def _prefetch_done(self, task: str, _future: object) -> None:
        self._prefetching.pop(task, None)

    async def prefetch(self, task: str) -> bool:
        """Read a cold task on the load thread before its rows are queued; True if it was cold (not loaded).

        Concurrent callers of one cold task share one read.

        Why: loading inside the forward would stall every row of the batch for the read and checksum (a few
        ms per cold task); here it overlaps the forwards of other requests. A task evicted again before its
        batch runs is simply read by the forward, as without this step.
        """
        if self.deployment.is_loaded(task):
            return False
        pending = self._prefetching.get(task)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(self.load_pool, self.deployment.prefetch, task)
            self._prefetching[task] = pending
            pending.add_done_callback(partial(self._prefetch_done, task))
            t0 = time.perf_counter()
            if await asyncio.shield(pending):
                self.prefetched += 1
                self.metrics.task_load_time.observe(time.perf_counter() - t0)
            return True
        await asyncio.shield(pending)
        return True

    def _read_meta(self, task: str) -> TaskMeta:
        from adapterdeploy.artifacts import TaskSpec

        spec = TaskSpec.read(Path(self.deployment.task_info(task).source))
        return TaskMeta(
            name=task,
            problem_type=spec.head.problem_type,
            labels=tuple(spec.head.labels),
            text_pair=spec.text_pair,
            version=task_version(spec.files),
            hidden_size=int(self.deployment.manifest.featurizer.hidden_size),
            thresholds=tuple(spec.head.thresholds),
        )

    async def load_task(self, name_or_path: str, *, pin: bool = False, priority: int = 0) -> tuple[Any, float]:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        loader = partial(self.deployment.load_task, name_or_path, pin=pin, priority=priority)
        info = await loop.run_in_executor(self.aux_pool, loader)
        seconds = time.perf_counter() - t0
        self.metrics.task_load_time.observe(seconds)
        self._meta.pop(info.name, None)
        return info, seconds

    async def unload_task(self, name: str) -> None:
        self.require_task(name)
        await asyncio.get_running_loop().run_in_executor(self.aux_pool, self.deployment.unload_task, name)

    async def task_infos(self, *, offset: int = 0, limit: int | None = None, loaded_only: bool = False) -> list[Any]:
        listing = partial(self.deployment.tasks, offset=offset, limit=limit, loaded_only=loaded_only)
        return await asyncio.get_running_loop().run_in_executor(self.aux_pool, listing)

    # --------------------------------------------------------------------------------- inference
    def _run_batch(self, rows: list[tuple[str, Any]]) -> list[Any]:
        results = self.deployment.predict_encoded(rows, errors="return")
        self.metrics.refresh()
        return results

    async def predict(
        self,
        tasks: Sequence[str | Embed],
        inputs: Sequence[Any],
        *,
        field: str = "inputs",
        note: dict[str, Any] | None = None,
    ) -> list[Any]:
        """Every task over every input (task-major order), through the batcher; limits already checked.

        Order: the queue's capacity first (429 before any tokenization), then each input is tokenized once
        (not per task, and not again in the forward: the encodings are queued). With ``--no-truncate`` an
        over-long text is refused here, before it is queued. A row of a failed task raises its
        TaskFailedError (503); the batch's other requests are unaffected. A task may be an :class:`Embed`
        target (an embedding row instead of a prediction; its task, if any, must exist).
        ``note["cold_tasks"]`` gets how many of the tasks were not loaded when the request arrived (the
        ``x-adapterdeploy-cold-tasks`` response header: how a router's task affinity can be measured).
        """
        self.require_ready()
        assert self.batcher is not None
        self.batcher.check_capacity(len(inputs) * len(tasks))
        deadline = time.monotonic() + self.settings.request_timeout_s
        for task in tasks:  # refuse a wrong text/pair shape here, not inside a batch shared with others
            if isinstance(task, Embed):
                if task.task is not None:
                    self.require_task(task.task)
                    self.require_serving(task.task)
                continue  # an embedding takes texts or pairs
            self.require_serving(task)
            meta = await self.task_meta(task)
            for i, row in enumerate(inputs):
                if isinstance(row, tuple) != meta.text_pair:
                    want = "[text_a, text_b] pairs" if meta.text_pair else "single texts"
                    raise InputError(
                        f"{field}[{i}]: task {task!r} takes {want}, this is "
                        f"{'a pair' if isinstance(row, tuple) else 'a single text'}"
                    )
        cold = 0
        for task in tasks:
            name = task.task if isinstance(task, Embed) else task
            if name is not None:
                cold += await self.prefetch(name)
        if note is not None:
            note["cold_tasks"] = cold
        loop = asyncio.get_running_loop()
        encoded = await loop.run_in_executor(self.aux_pool, self.deployment.encode, list(inputs))
        if not self.settings.truncate:
            for i, enc in enumerate(encoded):
                c = enc.count
                if c > self.max_length:
                    raise InputError(
                        f"{field}[{i}] has {c} tokens, the deployment's max_length is {self.max_length}; shorten the "
                        "text, start the server with --truncate, or re-export with a larger --max-length"
                    )
        tokens = [len(enc.ids) for enc in encoded]
        rows = [(task, enc) for task in tasks for enc in encoded]
        results = await self.batcher.submit(rows, tokens * len(tasks), timeout=max(0.001, deadline - time.monotonic()))
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results


class Tracker:
    """Counts one inference request: ``requests{endpoint,task,status}``, latency and rejection reasons."""

    def __init__(self, metrics: Metrics, endpoint: str, task: str) -> None:
        self.metrics = metrics
        self.endpoint = endpoint
        self.task = task
        self.t0 = time.perf_counter()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            status = 200
        elif isinstance(exc, AdapterDeployError):
            status = exc.http_status
            reason = REASON_BY_TYPE.get(exc.error_type, "invalid" if status < 500 and status != 404 else None)
            if reason in REJECT_REASONS:
                self.metrics.rejected.labels(reason=reason).inc()
        elif isinstance(exc, asyncio.CancelledError):
            # Only the server's own shutdown cancels a request (a client leaving raises ClientGone): the
            # middleware answers it 503 (see app.RequestContext).
            status = 503
            self.metrics.rejected.labels(reason="unavailable").inc()
        else:
            status = 500
        self.metrics.requests.labels(endpoint=self.endpoint, task=self.task, status=str(status)).inc()
        self.metrics.request_latency.labels(endpoint=self.endpoint).observe(time.perf_counter() - self.t0)
