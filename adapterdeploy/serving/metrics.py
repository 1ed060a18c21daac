"""Prometheus metrics of one server process: one prefix, bounded labels, explicit buckets.

Every series is named ``adapterdeploy_*``. Label values come from small fixed sets: ``endpoint`` and
``status`` from the routes and HTTP codes, ``reason`` from :data:`REJECT_REASONS`, ``task`` from the
deployment's task names with unknown names folded into ``_unknown``, fan-out requests into ``_fan_out``
and base-model embeddings into ``_base``; a deployment of more than :data:`TASK_LABEL_LIMIT` tasks labels
every task ``_other`` (10,000 tasks x statuses would be tens of thousands of series; per-task counts are
then in the access log). Durations use geometric buckets (x2 from 0.5 ms to ~33 s), batch sizes powers of
two. Each app owns its own ``CollectorRegistry`` so several apps (tests, replicas) never share or clash
over series.

No ``*_created`` series (prometheus-client's creation timestamps double the series count for nothing a
dashboard uses; turned off process-wide). One process: the standard ``process_*`` collector (CPU, memory,
open files) is registered too. ``--workers N``: prometheus-client's multiprocess mode (the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start), so whichever worker answers a scrape reports the
sum over all workers; per-worker gauges carry a ``pid`` label; ``process_*`` is not reported in this mode
(prometheus-client cannot merge it across processes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "CONTENT_TYPE_LATEST",
    "DURATION_BUCKETS",
    "METRICS_DIR_ENV",
    "OTHER_TASK",
    "REJECT_REASONS",
    "ROW_BUCKETS",
    "TASK_LABEL_LIMIT",
    "TOKEN_BUCKETS",
    "Metrics",
]

PREFIX = "adapterdeploy"
DURATION_BUCKETS = tuple(0.0005 * 2**i for i in range(17))  # 0.5 ms .. 32.8 s
ROW_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024 rows
TOKEN_BUCKETS = tuple(float(2**i) for i in range(4, 18))  # 16 .. 131072 tokens
TASK_BUCKETS = tuple(float(2**i) for i in range(7))  # 1 .. 64 distinct tasks in one forward
REJECT_REASONS = (
    "queue_full",
    "too_large",
    "invalid",
    "timeout",
    "unavailable",
    "unauthorized",
    "client_gone",
    "client_slow",
)
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable for multiprocess mode
REFRESH_S = 1.0  # multiprocess mode: how often a worker rewrites its task-count gauges
UNKNOWN_TASK = "_unknown"
FAN_OUT_TASK = "_fan_out"
OTHER_TASK = "_other"
TASK_LABEL_LIMIT = 1000
BASE_MODEL_TASK = "_base"  # /v1/embed without a task (the base model)


class Metrics:
    """The server's metric families, registered in a private registry."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        disable_created_metrics()
        self.multiprocess_dir = multiprocess_dir
        self._counts: tuple[Callable[[], float], ...] = ()
        self._refreshed = 0.0
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if multiprocess_dir is None:
            ProcessCollector(registry=r)
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Inference requests by endpoint, task and HTTP status.",
            ("endpoint", "task", "status"),
            registry=r,
        )
        self.request_latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Inference request latency, body read to response.",
            ("endpoint",),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            f"{PREFIX}_queue_duration_seconds",
            "Time a request's rows waited in the batch queue.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.batch_duration = Histogram(
            f"{PREFIX}_batch_duration_seconds",
            "Time of one mixed forward (tokenize + featurizer + heads).",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            f"{PREFIX}_batch_rows",
            "Rows per mixed forward.",
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            f"{PREFIX}_batch_tokens",
            "Unpadded tokens per mixed forward.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_tasks = Histogram(
            f"{PREFIX}_batch_tasks",
            "Distinct tasks per mixed forward (>1 = batched across tasks).",
            buckets=TASK_BUCKETS,
            registry=r,
        )
        # multiprocess_mode only matters under --workers: how the workers' values combine.
        self.queue_rows = Gauge(
            f"{PREFIX}_queue_rows", "Rows waiting in the batch queue.", registry=r, multiprocess_mode="livesum"
        )
        self.loaded_tasks = Gauge(
            f"{PREFIX}_loaded_tasks", "Tasks loaded in the adapter bank.", registry=r, multiprocess_mode="liveall"
        )
        self.known_tasks = Gauge(
            f"{PREFIX}_known_tasks", "Tasks the deployment knows.", registry=r, multiprocess_mode="livemax"
        )
        self.failed_tasks = Gauge(
            f"{PREFIX}_failed_tasks",
            "Tasks out of service (unreadable files, or weights / head failed) "
            "until reloaded; /v2/health/ready names them.",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.task_load_time = Histogram(
            f"{PREFIX}_task_load_duration_seconds",
            "Time to load a task (admin load, preload or a cold task of a request).",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            f"{PREFIX}_rejected_requests",
            "Requests refused before inference, by reason.",
            ("reason",),
            registry=r,
        )
        self.ready = Gauge(
            f"{PREFIX}_ready",
            "1 while the server reports ready, 0 while starting or draining.",
            registry=r,
            multiprocess_mode="liveall",
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)

    @staticmethod
    def task_label(task: str, known_tasks: int) -> str:
        """The ``task`` label of a known task: its name, or ``_other`` in a deployment of very many tasks."""
        return task if known_tasks <= TASK_LABEL_LIMIT else OTHER_TASK

    def bind_task_counts(
        self, loaded: Callable[[], float], known: Callable[[], float], failed: Callable[[], float]
    ) -> None:
        """Read task counts at scrape time (no bookkeeping on the hot path).

        Multiprocess mode cannot call another worker's functions, so each worker writes its counts at most
        every REFRESH_S seconds (:meth:`refresh`, called after each batch) and when it answers a scrape.
        """
        if self.multiprocess_dir is None:
            self.loaded_tasks.set_function(loaded)
            self.known_tasks.set_function(known)
            self.failed_tasks.set_function(failed)
        else:
            self._counts = (loaded, known, failed)
            self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        """Multiprocess mode: write this worker's task counts (cheap no-op otherwise or when fresh)."""
        if not self._counts or (not force and time.monotonic() - self._refreshed < REFRESH_S):
            return
        self._refreshed = time.monotonic()
        for gauge, read in zip((self.loaded_tasks, self.known_tasks, self.failed_tasks), self._counts, strict=True):
            gauge.set(read())

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        self.refresh(force=True)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.multiprocess_dir)
        return generate_latest(merged)

    def close(self) -> None:
        """Multiprocess mode: drop this worker's live gauges (its counters stay in the totals)."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)
