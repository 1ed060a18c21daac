"""SIGTERM with a backlog longer than --drain: every accepted request gets 200 or our 503, never a bare 500.

A real ``adapterdeploy serve`` child process (tests/serving_fixtures.py) with ``--drain 1`` and small
forwards (8 rows), loaded with far more rows than it can run in one second, then sent SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import httpx
from serving_fixtures import subprocess_server


def test_sigterm_with_a_backlog_longer_than_drain_answers_503_not_500(deploy_dir, tmp_path):
    log_path = tmp_path / "server.log"
    args = (
        "--drain",
        "1",
        "--max-batch-rows",
        "8",
        "--max-queue",
        "65536",
        "--request-timeout",
        "120",
        "--log-level",
        "debug",
    )
    with subprocess_server(deploy_dir, *args, log_path=log_path) as (proc, url):

        async def run():
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
                body = {"task": "topic", "inputs": [f"text {i} " + "word " * 30 for i in range(256)]}
                jobs = [asyncio.ensure_future(http.post("/v1/predict", json=body)) for _ in range(48)]
                while log_path.read_text().count('"request started"') < len(jobs):  # all accepted
                    await asyncio.sleep(0.05)
                proc.send_signal(signal.SIGTERM)  # ~12k rows in the backlog, a few hundred served per second
                return await asyncio.gather(*jobs, return_exceptions=True)

        responses = asyncio.run(run())
        code = proc.wait(60)
    errors = [r for r in responses if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] >= 1, f"the backlog was served within the drain; make it longer: {statuses}"
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and r.json()["error_type"] == "unavailable", r.text
    assert code == 0
    assert "Exception in ASGI application" not in log_path.read_text()
    print(f"\nsigterm with a backlog: {dict(statuses)}")
