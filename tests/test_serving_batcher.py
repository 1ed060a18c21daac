"""Batcher logic: caps, waits, queue bound, cancellation, timeouts, failure isolation, drain.

These tests use ``FakeRuntime``, a TEST DOUBLE that implements only ``predict_mixed`` (it echoes each row and
records every batch), so batching decisions can be asserted exactly and quickly. The real runtime is
exercised end to end over HTTP in test_serving_app.py / test_serving_load.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapterdeploy.errors import InputError, OverloadedError, RequestTimeoutError, UnavailableError
from adapterdeploy.serving.batcher import Batcher
from adapterdeploy.serving.metrics import Metrics

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeRuntime:
    """TEST DOUBLE for Deployment.predict_mixed: returns ``f"{task}:{text}"`` per row; records batches.

    ``gate`` (when set) blocks each call until released, to hold a batch "running" on the executor thread.
    A row whose text is ``"bad"`` raises InputError; ``"boom"`` raises a plain RuntimeError (a bug).
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[tuple[str, str]]] = []
        self.delay = delay
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def predict_mixed(self, rows, strict=False):
        self.batches.append(list(rows))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never released"
        if self.delay:
            time.sleep(self.delay)
        for _, text in rows:
            if text == "bad":
                raise InputError("rows[?]: bad text")
            if text == "boom":
                raise RuntimeError("bug")
        return [f"{task}:{text}" for task, text in rows]


async def make(fake: FakeRuntime, **kw) -> tuple[Batcher, ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)
    kw.setdefault("max_wait_s", 0.0)
    batcher = Batcher(fake.predict_mixed, executor=pool, metrics=Metrics(), **kw)
    await batcher.start()
    return batcher, pool


def rows(task: str, *texts: str) -> tuple[list[tuple[str, str]], list[int]]:
    return [(task, t) for t in texts], [len(t) + 2 for t in texts]


async def hold(fake: FakeRuntime, batcher: Batcher) -> asyncio.Task:
    """Start a request whose batch blocks on the gate, so later submits queue up."""
    fake.gate = threading.Event()
    fake.entered.clear()
    task = asyncio.ensure_future(batcher.submit(*rows("hold", "h")))
    await asyncio.get_running_loop().run_in_executor(None, fake.entered.wait, 5)
    return task


async def test_rows_of_many_tasks_share_one_forward_and_results_keep_order():
    fake = FakeRuntime()
    batcher, pool = await make(fake, max_rows=64)
    first = await hold(fake, batcher)
    calls = [batcher.submit(*rows(f"t{i % 3}", f"x{i}", f"y{i}")) for i in range(10)]
    tasks = [asyncio.ensure_future(c) for c in calls]
    await asyncio.sleep(0.05)
    fake.gate.set()
    results = await asyncio.gather(*tasks)
    assert await first == ["hold:h"]
    for i, res in enumerate(results):
        assert res == [f"t{i % 3}:x{i}", f"t{i % 3}:y{i}"]
    assert len(fake.batches) == 2  # the held one, then all 10 requests in ONE forward
    assert len(fake.batches[1]) == 20
    assert {task for task, _ in fake.batches[1]} == {"t0", "t1", "t2"}
    assert batcher.stats.mixed_task_batches == 1
    assert batcher.queued_rows == 0
    await batcher.close(1)
    pool.shutdown()


async def test_row_cap_splits_a_large_request_across_batches_in_order():
    fake = FakeRuntime()
    batcher, pool = await make(fake, max_rows=4)
    texts = [f"w{i}" for i in range(10)]
    result = await batcher.submit(*rows("a", *texts))
    assert result == [f"a:{t}" for t in texts]
    assert [len(b) for b in fake.batches] == [4, 4, 2]
    await batcher.close(1)
    pool.shutdown()


async def test_token_cap_limits_a_batch_but_an_oversized_row_still_runs_alone():
    fake = FakeRuntime()
    batcher, pool = await make(fake, max_rows=64, max_tokens=250)
    first = await hold(fake, batcher)
    a = asyncio.ensure_future(batcher.submit([("a", "1"), ("a", "2"), ("a", "3")], [100, 100, 100]))
    b = asyncio.ensure_future(batcher.submit([("b", "big")], [900]))
    await asyncio.sleep(0.02)
    fake.gate.set()
    assert await a == ["a:1", "a:2", "a:3"]
    assert await b == ["b:big"]
    await first
    assert [len(batch) for batch in fake.batches[1:]] == [2, 1, 1]
    assert fake.batches[-1] == [("b", "big")]
    await batcher.close(1)
    pool.shutdown()


async def test_max_wait_delays_a_lone_request_but_a_full_batch_goes_at_once():
    fake = FakeRuntime()
    batcher, pool = await make(fake, max_rows=4, max_wait_s=0.5)
    t0 = time.perf_counter()
    await batcher.submit(*rows("a", "x"))
    waited = time.perf_counter() - t0
    assert 0.48 <= waited < 2.0, waited
    t0 = time.perf_counter()
    await batcher.submit(*rows("a", "1", "2", "3", "4"))
    assert time.perf_counter() - t0 < 0.3
    await batcher.close(1)
    pool.shutdown()


async def test_full_queue_is_refused_with_retry_after_and_bounded():
    fake = FakeRuntime()
    batcher, pool = await make(fake, max_rows=8, max_queue_rows=5)
    first = await hold(fake, batcher)
    ok = asyncio.ensure_future(batcher.submit(*rows("a", "1", "2", "3", "4")))
    await asyncio.sleep(0)
    assert batcher.queued_rows == 4
    with pytest.raises(OverloadedError) as info:
        await batcher.submit(*rows("b", "5", "6"))
    assert info.value.http_status == 429 and info.value.retry_after_s >= 1
    assert "--max-queue" in str(info.value)
    assert batcher.queued_rows == 4
    fake.gate.set()
    assert len(await ok) == 4
    await first
    assert batcher.queued_rows == 0
    await batcher.close(1)
    pool.shutdown()


async def test_cancelled_caller_is_dropped_from_the_queue():
    fake = FakeRuntime()
    batcher, pool = await make(fake, max_rows=64)
    first = await hold(fake, batcher)
    gone = asyncio.ensure_future(batcher.submit(*rows("gone", "g1", "g2", "g3")))
    stays = asyncio.ensure_future(batcher.submit(*rows("stays", "s")))
    await asyncio.sleep(0.01)
    assert batcher.queued_rows == 4
    gone.cancel()
    await asyncio.sleep(0)
    assert batcher.queued_rows == 1  # released at once, not when the next batch forms
    fake.gate.set()
    assert await stays == ["stays:s"]
    await first
    assert all(task != "gone" for batch in fake.batches for task, _ in batch)
    await batcher.close(1)
    pool.shutdown()


async def test_per_request_timeout_raises_and_drops_the_rows():
    fake = FakeRuntime()
    batcher, pool = await make(fake, max_rows=64)
    first = await hold(fake, batcher)
    with pytest.raises(RequestTimeoutError) as info:
        await batcher.submit(*rows("late", "l"), timeout=0.05)
    assert info.value.http_status == 503 and "--request-timeout" in str(info.value)
    assert batcher.queued_rows == 0
    fake.gate.set()
    await first
    after = await batcher.submit(*rows("next", "n"))
    assert after == ["next:n"]
    assert all(task != "late" for batch in fake.batches for task, _ in batch)
    await batcher.close(1)
    pool.shutdown()


async def test_one_bad_request_does_not_fail_its_batch_neighbours():
    fake = FakeRuntime()
    batcher, pool = await make(fake, max_rows=64)
    first = await hold(fake, batcher)
    good1 = asyncio.ensure_future(batcher.submit(*rows("a", "fine")))
    bad = asyncio.ensure_future(batcher.submit(*rows("b", "ok", "bad")))
    good2 = asyncio.ensure_future(batcher.submit(*rows("c", "also")))
    await asyncio.sleep(0.01)
    fake.gate.set()
    await first
    assert await good1 == ["a:fine"]
    assert await good2 == ["c:also"]
    with pytest.raises(InputError):
        await bad
    assert batcher.stats.isolated_retries == 1
    await batcher.close(1)
    pool.shutdown()


async def test_an_unexpected_error_fails_its_batch_but_not_the_loop():
    fake = FakeRuntime()
    batcher, pool = await make(fake)
    with pytest.raises(RuntimeError):
        await batcher.submit(*rows("a", "boom"))
    assert batcher.alive
    assert await batcher.submit(*rows("a", "fine")) == ["a:fine"]
    await batcher.close(1)
    pool.shutdown()


async def test_event_loop_keeps_running_while_a_forward_runs():
    fake = FakeRuntime(delay=0.5)
    batcher, pool = await make(fake)
    ticks = 0

    async def heartbeat():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.ensure_future(heartbeat())
    await batcher.submit(*rows("a", "x"))
    beat.cancel()
    assert ticks >= 10, ticks  # ~50 possible in 0.5 s; a blocked loop would give 0 or 1
    await batcher.close(1)
    pool.shutdown()


async def test_close_finishes_queued_work_then_refuses_new_work():
    fake = FakeRuntime()
    batcher, pool = await make(fake, max_rows=2)
    first = await hold(fake, batcher)
    queued = [asyncio.ensure_future(batcher.submit(*rows("q", f"{i}"))) for i in range(5)]
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(batcher.close(5))
    await asyncio.sleep(0.01)
    with pytest.raises(UnavailableError):
        await batcher.submit(*rows("new", "n"))
    fake.gate.set()
    await closing
    await first
    assert [await q for q in queued] == [[f"q:{i}"] for i in range(5)]
    assert not batcher.alive
    pool.shutdown()


async def test_close_fails_what_cannot_drain_in_time():
    fake = FakeRuntime()
    batcher, pool = await make(fake, max_rows=1)
    first = await hold(fake, batcher)
    stuck = asyncio.ensure_future(batcher.submit(*rows("q", "x")))
    await asyncio.sleep(0.01)
    await batcher.close(0.05)
    with pytest.raises(UnavailableError):
        await stuck
    fake.gate.set()
    first.cancel()
    pool.shutdown()
