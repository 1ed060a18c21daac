"""``adapterdeploy serve``: settings, admin token sources, CLI errors, --workers, and no torch at serve time."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections import Counter

import aiohttp
import pytest
from click.testing import CliRunner
from serving_fixtures import ADMIN_TOKEN, REPO, build_deployment, metric, scrape, subprocess_server

from adapterdeploy.errors import ConfigError
from adapterdeploy.runtime.options import RuntimeOptions, parse_bytes
from adapterdeploy.serving.commands import serve
from adapterdeploy.serving.settings import ADMIN_TOKEN_ENV, Settings, read_admin_token


def test_admin_token_file_wins_over_the_environment(tmp_path):
    f = tmp_path / "token"
    f.write_text(f"  {ADMIN_TOKEN}\n")
    assert read_admin_token(f, {ADMIN_TOKEN_ENV: "other-token-from-the-env-123"}) == ADMIN_TOKEN
    assert read_admin_token(None, {ADMIN_TOKEN_ENV: "token-from-the-environment"}) == "token-from-the-environment"
    assert read_admin_token(None, {}) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_admin_token(tmp_path / "empty", {})
    with pytest.raises(ConfigError, match="cannot read"):
        read_admin_token(tmp_path / "missing", {})


def test_settings_validate_and_round_trip_without_printing_the_token(tmp_path):
    runtime = RuntimeOptions(providers=["cpu", ("cuda", {"device_id": 1})], threads=2, memory_budget_bytes=1 << 20)
    s = Settings(deploy_dir=str(tmp_path), admin_token=ADMIN_TOKEN, runtime=runtime, preload=["a"], max_batch_rows=8)
    assert ADMIN_TOKEN not in repr(s)
    assert Settings.from_json(s.to_json()) == s  # JSON turns tuples into lists: they come back as tuples
    assert s.runtime_options().providers == ("cpu", ("cuda", {"device_id": 1}))
    assert s.runtime_options().batch_size == 8  # the batcher's batches are never split again
    with pytest.raises(ConfigError, match="16"):
        Settings(deploy_dir=".", admin_token="short")
    with pytest.raises(ConfigError, match="--max-queue"):
        Settings(deploy_dir=".", max_rows_per_request=100, max_queue=10)
    with pytest.raises(ConfigError, match="max_batch_rows"):
        Settings(deploy_dir=".", max_batch_rows=0)
    with pytest.raises(ConfigError, match="port"):
        Settings(deploy_dir=".", port=70000)


def test_parse_bytes():
    assert parse_bytes("1MiB") == 1 << 20
    assert parse_bytes("512 KiB") == 512 * 1024
    assert parse_bytes("1000") == 1000
    assert parse_bytes(None) is None
    with pytest.raises(Exception, match="not a size"):
        parse_bytes("lots")


def test_serve_refuses_a_directory_that_is_not_a_deployment(tmp_path):
    result = CliRunner().invoke(serve, [str(tmp_path)])
    assert result.exit_code == 2 and "deployment.json" in result.output
    result = CliRunner().invoke(serve, [str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_serving_never_imports_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any 'import torch' now raises
        "import adapterdeploy.cli, adapterdeploy.serving.app, adapterdeploy.serving.admin\n"
        "import adapterdeploy.serving.server, adapterdeploy.serving.ray_serve, adapterdeploy.runtime\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_workers_and_admin_token_file(tiny_base_dir, tmp_path_factory, tmp_path):
    deploy_dir = build_deployment(tiny_base_dir, tmp_path_factory.mktemp("serving"))
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    log = tmp_path / "server.log"
    with subprocess_server(deploy_dir, "--workers", "2", "--admin-token-file", str(token_file), log_path=log) as (
        proc,
        url,
    ):

        async def calls():
            async with aiohttp.ClientSession(url) as http:
                instances: Counter = Counter()
                for _ in range(40):  # fresh connections, until both workers (one may still be starting) answered
                    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(force_close=True)) as c:
                        for r in await asyncio.gather(
                            *(c.post("/v1/predict", json={"task": "topic", "inputs": ["x"]}) for _ in range(8))
                        ):
                            assert r.status == 200
                            instances[r.headers["x-adapterdeploy-instance"]] += 1
                    if len(instances) == 2:
                        break
                    await asyncio.sleep(0.5)
                async with http.post("/v2/repository/index", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
                    index_status = r.status
                return instances, index_status

        instances, index_status = asyncio.run(calls())
        assert len(instances) == 2, instances
        assert index_status == 200
        for _ in range(4):  # whichever worker answers the scrape reports both workers' requests
            samples = scrape(url)
            assert metric(samples, "adapterdeploy_requests_total", endpoint="predict") == sum(instances.values())
            assert not [name for name, _ in samples if name.endswith("_created")]
            assert len({dict(labels)["pid"] for name, labels in samples if name == "adapterdeploy_ready"}) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    assert not [x for x in lines if x["logger"] == "uvicorn.access"]  # ours replaces uvicorn's access log
    access = [x for x in lines if x["logger"] == "adapterdeploy.serving.access" and x["path"] == "/v1/predict"]
    assert access and all(len(x["request_id"]) == 32 and x["status"] == 200 for x in access)
    assert ADMIN_TOKEN not in log.read_text()
