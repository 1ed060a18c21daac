"""Dynamic batching across tasks: ONE asyncio task owns the queue and runs mixed forwards off the loop.

Why one owner: every decision (what goes into the next forward, what is dropped, how full the queue is)
is made by a single coroutine on the event loop, so there are no locks and no races between request
handlers. Handlers only append an entry and await its future.

Semantics::

    entry      = (rows [(task, text | (a, b))], tokens per row, future, enqueue time)
    next batch = the oldest live rows, in arrival order, while rows < max_rows and
                 tokens + next_row_tokens <= max_tokens (a batch always takes at least one row);
                 a request larger than the caps is split across consecutive batches
    start      = as soon as the queued rows or tokens reach a cap, or max_wait after the oldest
                 queued entry arrived, whichever comes first; while a forward runs, arrivals queue
                 up, so under load batches fill without waiting
    queue      = at most max_queue rows; more -> OverloadedError (HTTP 429, Retry-After)
    dropped    = entries whose future was cancelled (client gone, per-request timeout) are skipped
                 when the batch is taken and their rows leave the queue count at once
    failure    = an error in a forward mixing several requests re-runs each request alone, so one
                 bad request cannot fail its neighbours (a failing *task* is isolated one level down:
                 the runtime answers its rows with TaskFailedError and the others normally)
    admission  = ``check_capacity(n)`` lets a handler refuse (429) before it spends time tokenizing

``run_batch`` (e.g. ``Deployment.predict_mixed``) runs in the given executor: onnxruntime releases the
GIL and the event loop never blocks on it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from adapterdeploy.errors import AdapterDeployError, OverloadedError, RequestTimeoutError, UnavailableError
from adapterdeploy.serving.metrics import Metrics

__all__ = ["BatchStats", "Batcher", "Row"]

log = logging.getLogger("adapterdeploy.serving.batcher")

Row = tuple[Any, Any]  # (task or Embed, text) or (task or Embed, (text_a, text_b))


@dataclass(eq=False)
class _Entry:
    rows: Sequence[Row]
    tokens: Sequence[int]
    future: asyncio.Future[list[Any]]
    enqueued_at: float
    results: list[Any]
    next_row: int = 0  # rows [0, next_row) were handed to a batch
    done_rows: int = 0
    queued: bool = True  # its untaken rows still count in the queue totals

    def untaken(self) -> tuple[int, int]:
        return len(self.rows) - self.next_row, sum(self.tokens[self.next_row :])


@dataclass
class BatchStats:
    """Counters for tests and logs (the Prometheus histograms carry the distributions)."""

    batches: int = 0
    rows: int = 0
    max_rows: int = 0
    mixed_task_batches: int = 0
    isolated_retries: int = 0
    task_counts: list[int] = field(default_factory=list)


class Batcher:
    """The queue and its single owner coroutine. Create, ``await start()``, ``submit()``, ``await close()``."""

    def __init__(
        self,
        run_batch: Callable[[list[Row]], list[Any]],
        *,
        executor: Executor,
        max_rows: int = 64,
        max_tokens: int = 16384,
        max_wait_s: float = 0.002,
        max_queue_rows: int = 2048,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min(max_rows, max_tokens, max_queue_rows) < 1 or max_wait_s < 0:
            raise ValueError("max_rows, max_tokens and max_queue_rows must be >= 1 and max_wait_s >= 0")
        self._run_batch = run_batch
        self._executor = executor
        self.max_rows = max_rows
        self.max_tokens = max_tokens
        self.max_wait_s = max_wait_s
        self.max_queue_rows = max_queue_rows
        self._metrics = metrics
        self._clock = clock
        self._queue: deque[_Entry] = deque()
        self._queued_rows = 0
        self._queued_tokens = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._rows_per_s = 0.0  # EWMA throughput, for Retry-After
        self.stats = BatchStats()

    # ----------------------------------------------------------------------------------------- public
    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="adapterdeploy-batcher")
            self._task.add_done_callback(self._on_loop_exit)

    async def submit(self, rows: Sequence[Row], tokens: Sequence[int], *, timeout: float | None = None) -> list[Any]:
        """Queue ``rows`` (with their token counts) and wait for their results, in order.

        Raises OverloadedError when the queue is full, UnavailableError while closing, RequestTimeoutError
        after ``timeout`` seconds. Cancelling the caller removes its rows from the queue.
        """
        if len(rows) != len(tokens):
            raise ValueError(f"{len(rows)} rows but {len(tokens)} token counts")
        self.check_capacity(len(rows))
        if not rows:
            return []
        n = len(rows)
        loop = asyncio.get_running_loop()
        entry = _Entry(
            rows=rows, tokens=tokens, future=loop.create_future(), enqueued_at=self._clock(), results=[None] * n
        )
        entry.future.add_done_callback(partial(self._entry_future_done, entry))
        self._queue.append(entry)
        self._queued_rows += n
        self._queued_tokens += sum(tokens)
        self._set_queue_gauge()
        self._wake.set()
        try:
            return await asyncio.wait_for(entry.future, timeout)
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request did not finish within {timeout:g} s (--request-timeout); the server is overloaded "
                "or the request is too large; retry, send fewer rows, or add replicas"
            ) from None

    def check_capacity(self, n: int) -> None:
        """Raise now what ``submit`` of ``n`` rows would raise for a full queue or a closing batcher.

        Cheap (two comparisons): a handler calls it before tokenizing, so an overloaded server answers 429
        in microseconds instead of after spending CPU on text it will refuse.
        """
        if self._closing or not self.alive:
            raise UnavailableError("the server is shutting down; retry on another replica")
        if self._queued_rows + n > self.max_queue_rows:
            retry = self._retry_after(self._queued_rows + n)
            raise OverloadedError(
                f"the batch queue holds {self._queued_rows} rows and this request adds {n}; the limit is "
                f"{self.max_queue_rows} (--max-queue); retry after {retry} s or add replicas",
                retry_after_s=retry,
            )

    async def close(self, drain_timeout: float) -> None:
        """Refuse new work, finish what is queued within ``drain_timeout`` seconds, then fail the rest."""
        self._closing = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), drain_timeout)
        except TimeoutError:
            self._task.cancel()
            log.warning(
                "batch queue not drained within %.1f s; failing %d queued rows", drain_timeout, self._queued_rows
            )
        self._fail_all(UnavailableError("the server shut down before this request ran; retry"))

    # ------------------------------------------------------------------------------------- the owner
    async def _loop(self) -> None:
        while True:
            self._drop_dead_head()
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._closing:
                await self._wait_for_fill()
            batch = self._take()
            if batch:
                await self._run(batch)

    async def _wait_for_fill(self) -> None:
        deadline = self._queue[0].enqueued_at + self.max_wait_s
        while (
            self._queued_rows < self.max_rows
            and self._queued_tokens < self.max_tokens
            and not self._closing
            and self._queue
        ):
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    def _drop_dead_head(self) -> None:
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()

    def _take(self) -> list[tuple[_Entry, int, int]]:
        batch: list[tuple[_Entry, int, int]] = []
        rows = tokens = 0
        now = self._clock()
        while self._queue and rows < self.max_rows:
            entry = self._queue[0]
            if entry.future.done():
                self._queue.popleft()
                continue
            start = stop = entry.next_row
            while stop < len(entry.rows) and rows < self.max_rows:
                t = entry.tokens[stop]
                if rows and tokens + t > self.max_tokens:
                    break
                rows += 1
                tokens += t
                stop += 1
            if stop == start:
                break
            if start == 0 and self._metrics is not None:
                self._metrics.queue_time.observe(now - entry.enqueued_at)
            batch.append((entry, start, stop))
            entry.next_row = stop
            self._queued_rows -= stop - start
            self._queued_tokens -= sum(entry.tokens[start:stop])
            if stop < len(entry.rows):
                break  # the batch is full; the rest of this request goes first next time
            self._queue.popleft()
            entry.queued = False
        self._set_queue_gauge()
        return batch

    async def _run(self, batch: list[tuple[_Entry, int, int]]) -> None:
        rows = [row for entry, a, b in batch for row in entry.rows[a:b]]
        t0 = self._clock()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, self._checked_run, rows)
        except Exception as exc:
            if len(batch) > 1:
                self.stats.isolated_retries += 1
                for part in batch:  # one bad request must not fail the others: re-run each alone
                    if not part[0].future.done():
                        await self._run([part])
                return
            if not isinstance(exc, AdapterDeployError):
                log.exception("a batch of %d rows failed", len(rows))
            self._fail(batch, exc)
            return
        elapsed = self._clock() - t0
        self._record(batch, rows, elapsed)
        i = 0
        for entry, a, b in batch:
            n = b - a
            if not entry.future.done():
                entry.results[a:b] = results[i : i + n]
                entry.done_rows += n
                if entry.done_rows == len(entry.rows):
                    entry.future.set_result(entry.results)
            i += n

    # -------------------------------------------------------------------------------------- helpers
    def _checked_run(self, rows: list[Row]) -> list[Any]:
        results = self._run_batch(rows)
        if len(results) != len(rows):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(rows)} rows")
        return results

    def _record(self, batch: list[tuple[_Entry, int, int]], rows: list[Row], elapsed: float) -> None:
        n = len(rows)
        tasks = len({task for task, _ in rows})
        tokens = sum(sum(entry.tokens[a:b]) for entry, a, b in batch)
        self.stats.batches += 1
        self.stats.rows += n
        self.stats.max_rows = max(self.stats.max_rows, n)
        self.stats.mixed_task_batches += tasks > 1
        if elapsed > 0:
            rate = n / elapsed
            self._rows_per_s = rate if self._rows_per_s == 0 else 0.8 * self._rows_per_s + 0.2 * rate
        if self._metrics is not None:
            self._metrics.batch_rows.observe(n)
            self._metrics.batch_tokens.observe(tokens)
            self._metrics.batch_tasks.observe(tasks)
            self._metrics.batch_duration.observe(elapsed)

    def _retry_after(self, rows: int) -> int:
        if self._rows_per_s <= 0:
            return 1
        return int(min(30, max(1, math.ceil(rows / self._rows_per_s))))

    def _entry_future_done(self, entry: _Entry, _future: object) -> None:
        self._on_entry_done(entry)

    def _on_entry_done(self, entry: _Entry) -> None:
        if entry.queued and entry.future.cancelled():
            rows, tokens = entry.untaken()
            self._queued_rows -= rows
            self._queued_tokens -= tokens
            entry.queued = False
            self._set_queue_gauge()

    def _fail(self, batch: list[tuple[_Entry, int, int]], exc: BaseException) -> None:
        for entry, _, _ in batch:
            if not entry.future.done():
                entry.future.set_exception(exc)

    def _fail_all(self, exc: BaseException) -> None:
        while self._queue:
            entry = self._queue.popleft()
            if not entry.future.done():
                entry.future.set_exception(exc)
        self._queued_rows = self._queued_tokens = 0
        self._set_queue_gauge()

    def _on_loop_exit(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the batching loop died: %r; failing queued requests", task.exception())
            self._fail_all(UnavailableError("the batching loop stopped; the server must be restarted"))

    def _set_queue_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_rows.set(self._queued_rows)
