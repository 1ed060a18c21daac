"""Operating a deployment as a team would: file modes for another user, the writer lock, per-task checksums."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from exporter_helpers import make_checkpoint

from adapterdeploy.artifacts import MANIFEST_FILE, Manifest, TaskSpec, verify_deployment
from adapterdeploy.errors import LockedError
from adapterdeploy.exporter.deployment import export_deployment
from adapterdeploy.exporter.updates import add_task, remove_task
from adapterdeploy.writer_lock import lock_paths, writer_lock

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534


@pytest.fixture(scope="module")
def ckpts(tiny_base, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ops-ckpts")
    return {n: make_checkpoint(tiny_base, root, n, bottleneck=4 + i, seed=20 + i) for i, n in enumerate("xyzw")}


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is 0700 under /tmp/pytest-of-root)."""
    d = Path(tempfile.mkdtemp(prefix="adapterdeploy-ops-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        import shutil

        shutil.rmtree(d, ignore_errors=True)


def _wrong_modes(root: Path) -> dict[str, str]:
    """Entries under ``root`` whose mode is not what umask 022 gives (0644 files, 0755 directories)."""
    return {
        p.relative_to(root).as_posix(): oct(stat.S_IMODE(p.stat().st_mode))
        for p in [root, *root.rglob("*")]
        if stat.S_IMODE(p.stat().st_mode) != (0o755 if p.is_dir() else 0o644)
    }


def test_every_written_file_gets_the_umask_mode(tiny_base_dir, ckpts, tmp_path, umask022):
    """safetensors' save_file writes 0600 whatever the umask; export, add-task and checkpoints must not."""
    out = tmp_path / "dep"
    export_deployment(tiny_base_dir, [ckpts["x"]], out)
    add_task(out, ckpts["y"])
    assert (out / "tasks" / "y" / "adapters.safetensors").is_file()
    assert _wrong_modes(out) == {}
    assert _wrong_modes(ckpts["x"]) == {}  # save_checkpoint: what train and import-adapterhub write


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root; the mode test above still runs")
def test_deployment_exported_as_root_serves_as_another_user(tiny_base_dir, ckpts, shared_dir, umask022):
    """The Docker image runs as an unprivileged uid with the deployment mounted read-only: every task answers."""
    out = shared_dir / "dep"
    export_deployment(tiny_base_dir, [ckpts["x"]], out)
    add_task(out, ckpts["y"])
    # The interpreter may live under /root (0700), so the child starts as root, imports everything, and only
    # then drops to `nobody` before it reads any file of the deployment.
    code = (
        "import os, sys, json\n"
        "from adapterdeploy.runtime import Deployment\n"
        "import adapterdeploy.runtime.heads, onnxruntime, numpy, tokenizers, safetensors.numpy\n"
        f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        "with Deployment.open(sys.argv[1]) as d:\n"
        "    out = {t: d.predict(['a fine film'], task=t)[0].label for t in ('x', 'y')}\n"
        "try:\n"
        "    open(os.path.join(sys.argv[1], 'probe'), 'w')\n"
        "    out['writable'] = True\n"
        "except PermissionError:\n"
        "    out['writable'] = False\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": "/nonexistent"}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"x", "y", "writable"} and result["writable"] is False


def test_two_concurrent_add_tasks_both_land(tiny_base_dir, ckpts, tmp_path):
    """Two add-task commands started together: the second waits for the lock and adds to the first's result.
    One of them adds two checkpoints in one call (one torch start, one parity run, one manifest swap)."""
    out = tmp_path / "dep"
    export_deployment(tiny_base_dir, [ckpts["x"]], out)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "adapterdeploy.cli", "add-task", str(out)]
    procs = [
        subprocess.Popen(
            [*cmd, str(ckpts["y"]), str(ckpts["z"]), "--quiet"],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ),
        subprocess.Popen(
            [*cmd, str(ckpts["w"]), "--quiet"], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ),
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_stdout, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stderr[-2000:]
    printed = "".join(o for o, _ in outputs)
    assert all(f"added task {n!r}" in printed for n in "yzw")
    manifest = Manifest.read(out)
    assert set(manifest.tasks) == {"x", "y", "z", "w"}
    assert verify_deployment(out, manifest)[0] == []
    from adapterdeploy.runtime import Deployment

    with Deployment.open(out) as dep:
        assert {p.task for t in "xyzw" for p in dep.predict(["still here"], task=t)} == set("xyzw")


def test_a_writer_that_cannot_wait_names_the_holder(tiny_base_dir, ckpts, tmp_path):
    out = tmp_path / "dep"
    export_deployment(tiny_base_dir, [ckpts["x"], ckpts["y"]], out)
    with writer_lock(out, command="add-task by a colleague"):
        info = json.loads(lock_paths(out)[1].read_text())
        assert info["pid"] == os.getpid() and info["command"] == "add-task by a colleague"
        with pytest.raises(LockedError, match=rf"pid {os.getpid()} .*'add-task by a colleague'.*--lock-timeout"):
            remove_task(out, "y", lock_timeout=0)
        with pytest.raises(LockedError, match="add-task by a colleague"):
            export_deployment(tiny_base_dir, [ckpts["x"]], out, force=True, lock_timeout=0.2)
    assert set(Manifest.read(out).tasks) == {"x", "y"}
    remove_task(out, "y")  # released: the next writer goes through
    assert set(Manifest.read(out).tasks) == {"x"} and not (out / "tasks" / "y").exists()


def test_add_task_hashes_only_what_it_writes(tiny_base_dir, ckpts, tmp_path, monkeypatch):
    """Per-task checksums live in each task.json: adding a task never re-hashes the other tasks' files."""
    import adapterdeploy.artifacts as artifacts

    out = tmp_path / "dep"
    export_deployment(tiny_base_dir, [ckpts["x"], ckpts["y"]], out)
    before = Manifest.read(out)
    hashed: list[str] = []
    real = artifacts.sha256_file

    def spy(path, *a, **k):
        hashed.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(artifacts, "sha256_file", spy)
    add_task(out, ckpts["z"])
    remove_task(out, "y")
    monkeypatch.undo()
    deployment_files = [h for h in hashed if h.startswith(str(out))]
    assert deployment_files and all("/tasks/z/" in h or "/.staging-" in h for h in deployment_files), hashed
    after = Manifest.read(out)
    assert after.task_files["x"] == before.task_files["x"] and after.files == before.files
    assert not any(rel.startswith("tasks/") for rel in after.files)


def test_schema_1_deployments_still_load(tiny_base_dir, ckpts, tmp_path):
    """A deployment written before per-task checksums (every task file in the manifest's files) still opens,
    predicts and takes an add-task (which writes it back in schema 2)."""
    from adapterdeploy.runtime import Deployment

    out = tmp_path / "dep"
    export_deployment(tiny_base_dir, [ckpts["x"]], out)
    data = json.loads((out / MANIFEST_FILE).read_text())
    for name, rel in data["tasks"].items():
        spec = TaskSpec.read(out / rel)
        data["files"].update({f"{rel}/{f}": {"size": e.size, "sha256": e.sha256} for f, e in spec.files.items()})
        data["files"][f"{rel}/task.json"] = data["task_files"][name]
    del data["task_files"]
    data["schema_version"] = 1
    (out / MANIFEST_FILE).write_text(json.dumps(data))
    old = Manifest.read(out)
    assert set(old.task_files) == {"x"} and not any(f.startswith("tasks/") for f in old.files)
    with Deployment.open(out) as dep:
        assert dep.predict(["old but fine"], task="x")[0].task == "x"
    add_task(out, ckpts["y"])
    assert json.loads((out / MANIFEST_FILE).read_text())["schema_version"] == 2
    assert verify_deployment(out, Manifest.read(out))[0] == []


def test_tampered_task_json_is_refused_at_load(tiny_base_dir, ckpts, tmp_path):
    """task.json is covered by the manifest's checksum: an edited label list never reaches a prediction."""
    from adapterdeploy.errors import ChecksumError, TaskFailedError
    from adapterdeploy.runtime import Deployment

    out = tmp_path / "dep"
    export_deployment(tiny_base_dir, [ckpts["x"]], out)
    task_json = out / "tasks" / "x" / "task.json"
    data = json.loads(task_json.read_text())
    data["head"]["labels"] = ["evil", "labels", "here"]
    task_json.write_text(json.dumps(data, indent=2))
    # the task is taken out of service (TaskFailedError) with the checksum error as its cause
    with Deployment.open(out) as dep, pytest.raises(TaskFailedError, match=r"task\.json") as failed:
        dep.predict(["x"], task="x")
    assert isinstance(failed.value.__cause__, ChecksumError)
