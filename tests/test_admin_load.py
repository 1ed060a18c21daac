"""The admin API's load: only from the operator's task roots, and a 4xx (never a 500) for every bad artifact."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_fixtures import ADMIN_TOKEN, ThreadedServer, build_deployment

from adapterdeploy.serving.settings import Settings

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def roots(tiny_base_dir, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(deployment, an allowed extra root, a directory outside every root)."""
    deploy = build_deployment(tiny_base_dir, tmp_path_factory.mktemp("serving"))
    top = tmp_path_factory.mktemp("admin-roots")
    (top / "allowed").mkdir()
    (top / "outside").mkdir()
    return deploy, top / "allowed", top / "outside"


@pytest.fixture(scope="module")
def client(roots) -> Iterator[httpx.Client]:
    from adapterdeploy.runtime import Deployment

    deploy, allowed, _ = roots
    settings = Settings(deploy_dir=str(deploy), admin_token=ADMIN_TOKEN, task_roots=(str(allowed),))
    with (
        Deployment.open(deploy) as dep,
        ThreadedServer(settings, deployment=dep) as srv,
        httpx.Client(base_url=srv.url, timeout=60, headers=AUTH) as c,
    ):
        yield c


def _task_copy(deploy: Path, where: Path, name: str, edit: Any = None) -> Path:
    """A copy of the deployment's 'spam' task named ``name`` under ``where``, its task.json edited."""
    task = where / name
    shutil.rmtree(task, ignore_errors=True)
    shutil.copytree(deploy / "tasks" / "spam", task)
    data = json.loads((task / "task.json").read_text())
    data["name"] = name
    if edit is not None:
        edit(data)
    (task / "task.json").write_text(json.dumps(data))
    return task


def _load(client: httpx.Client, name: str, path: Path | str) -> httpx.Response:
    return client.post(f"/v2/repository/models/{name}/load", json={"parameters": {"path": str(path)}})


def _error(r: httpx.Response, status: int, error_type: str, fragment: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error_type"] == error_type and fragment in body["error"], body
    assert "Traceback" not in r.text


def test_a_good_task_under_an_allowed_root_loads(client, roots):
    deploy, allowed, _ = roots
    r = _load(client, "extra", _task_copy(deploy, allowed, "extra"))
    assert r.status_code == 200 and r.json()["name"] == "extra", r.text
    assert client.post("/v1/predict", json={"task": "extra", "inputs": ["x"]}).status_code == 200


def test_paths_outside_the_task_roots_are_forbidden(client, roots):
    deploy, allowed, outside = roots
    _error(_load(client, "out", _task_copy(deploy, outside, "out")), 403, "forbidden_path", "--task-root")
    _error(_load(client, "out", "/etc"), 403, "forbidden_path", "outside the directories")
    _error(_load(client, "out", f"{allowed}/../outside/out"), 403, "forbidden_path", "outside")
    os.symlink(outside / "out", allowed / "link")  # a symlink inside a root does not lead out of it
    _error(_load(client, "out", allowed / "link"), 403, "forbidden_path", "outside")
    # the deployment's own tasks/ is not allowed when the operator named other roots
    _error(_load(client, "spam", deploy / "tasks" / "spam"), 403, "forbidden_path", "outside")


BAD = [
    ("missing key", lambda d: d.pop("head"), "field 'head' is missing"),
    ("absurd bottleneck", lambda d: d.update(bottleneck=100_000), "outside 1..16384"),
    ("bottleneck vs weights", lambda d: d.update(bottleneck=3), "says bottleneck 3"),
    ("label count vs head", lambda d: d["head"].update(num_labels=3, labels=["a", "b", "c"]), "head.out.w has shape"),
    ("wrong type", lambda d: d.update(layers="all"), "field 'layers' must be a list of integers"),
    ("newer schema", lambda d: d.update(schema_version=99), "upgrade adapterdeploy"),
    ("checksum", lambda d: d["files"]["adapters.safetensors"].update(sha256="0" * 64), "sha256 differs"),
]


@pytest.mark.parametrize("case,edit,fragment", BAD, ids=[b[0] for b in BAD])
def test_every_bad_artifact_is_a_4xx(client, roots, case, edit, fragment):
    deploy, allowed, _ = roots
    name = "bad-" + case.replace(" ", "-")
    r = _load(client, name, _task_copy(deploy, allowed, name, edit))
    _error(r, 422, "invalid_task_artifact", fragment)


def test_names_in_the_url_and_non_task_directories(client, roots):
    _, allowed, _ = roots
    _error(
        client.post("/v2/repository/models/-rf%20x/load", json={"parameters": {"path": str(allowed)}}),
        400,
        "invalid_input",
        "not a safe name",
    )
    (allowed / "empty").mkdir(exist_ok=True)
    _error(_load(client, "empty", allowed / "empty"), 422, "invalid_task_artifact", "not a task directory")
