"""Prometheus metrics of one server process: one prefix, bounded labels, explicit buckets.

Every series is named ``adapterdeploy_*``. Label values come from small fixed sets: ``endpoint`` and
``status`` from the routes and HTTP codes, ``reason`` from :data:`REJECT_REASONS`, ``task`` from the
deployment's task names (bounded by the registry) with unknown names folded into ``_unknown`` and
fan-out requests into ``_fan_out``. Durations use geometric buckets (x2 from 0.5 ms to ~33 s), batch
sizes powers of two. Each app owns its own ``CollectorRegistry`` so several apps (tests, replicas) never
share or clash over series.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "CONTENT_TYPE_LATEST",
    "DURATION_BUCKETS",
    "REJECT_REASONS",
    "ROW_BUCKETS",
    "TOKEN_BUCKETS",
    "Metrics",
]

PREFIX = "adapterdeploy"
DURATION_BUCKETS = tuple(0.0005 * 2**i for i in range(17))  # 0.5 ms .. 32.8 s
ROW_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024 rows
TOKEN_BUCKETS = tuple(float(2**i) for i in range(4, 18))  # 16 .. 131072 tokens
TASK_BUCKETS = tuple(float(2**i) for i in range(7))  # 1 .. 64 distinct tasks in one forward
REJECT_REASONS = (
    "queue_full", "too_large", "invalid", "timeout", "unavailable", "unauthorized", "client_gone", "client_slow",
)
UNKNOWN_TASK = "_unknown"
FAN_OUT_TASK = "_fan_out"


class Metrics:
    """The server's metric families, registered in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests", "Inference requests by endpoint, task and HTTP status.",
            ("endpoint", "task", "status"), registry=r,
        )
        self.request_latency = Histogram(
            f"{PREFIX}_request_duration_seconds", "Inference request latency, body read to response.",
            ("endpoint",), buckets=DURATION_BUCKETS, registry=r,
        )
        self.queue_time = Histogram(
            f"{PREFIX}_queue_duration_seconds", "Time a request's rows waited in the batch queue.",
            buckets=DURATION_BUCKETS, registry=r,
        )
        self.batch_duration = Histogram(
            f"{PREFIX}_batch_duration_seconds", "Time of one mixed forward (tokenize + featurizer + heads).",
            buckets=DURATION_BUCKETS, registry=r,
        )
        self.batch_rows = Histogram(
            f"{PREFIX}_batch_rows", "Rows per mixed forward.", buckets=ROW_BUCKETS, registry=r,
        )
        self.batch_tokens = Histogram(
            f"{PREFIX}_batch_tokens", "Unpadded tokens per mixed forward.", buckets=TOKEN_BUCKETS, registry=r,
        )
        self.batch_tasks = Histogram(
            f"{PREFIX}_batch_tasks", "Distinct tasks per mixed forward (>1 = batched across tasks).",
            buckets=TASK_BUCKETS, registry=r,
        )
        self.queue_rows = Gauge(f"{PREFIX}_queue_rows", "Rows waiting in the batch queue.", registry=r)
        self.loaded_tasks = Gauge(f"{PREFIX}_loaded_tasks", "Tasks loaded in the adapter bank.", registry=r)
        self.known_tasks = Gauge(f"{PREFIX}_known_tasks", "Tasks the deployment knows.", registry=r)
        self.failed_tasks = Gauge(
            f"{PREFIX}_failed_tasks", "Tasks out of service (unreadable files, or weights / head failed) "
            "until reloaded; /v2/health/ready names them.", registry=r,
        )
        self.task_load_time = Histogram(
            f"{PREFIX}_task_load_duration_seconds", "Time to load a task (admin load or preload).",
            buckets=DURATION_BUCKETS, registry=r,
        )
        self.rejected = Counter(
            f"{PREFIX}_rejected_requests", "Requests refused before inference, by reason.", ("reason",), registry=r,
        )
        self.ready = Gauge(f"{PREFIX}_ready", "1 while the server reports ready, 0 while starting or draining.",
                           registry=r)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)

    def bind_task_counts(self, loaded: Callable[[], float], known: Callable[[], float],
                         failed: Callable[[], float]) -> None:
        """Read task counts at scrape time (no bookkeeping on the hot path)."""
        self.loaded_tasks.set_function(loaded)
        self.known_tasks.set_function(known)
        self.failed_tasks.set_function(failed)

    def render(self) -> bytes:
        return generate_latest(self.registry)
