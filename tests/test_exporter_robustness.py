"""Exporter robustness: bad input refused with nothing written, SIGKILL mid-export, and the CLI contract."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from exporter_helpers import make_checkpoint

from adapterdeploy.artifacts import Manifest, TaskSpec, verify_deployment
from adapterdeploy.cli import main as cli
from adapterdeploy.errors import (
    ArtifactError,
    ConfigError,
    FingerprintMismatchError,
    UnsupportedArchitectureError,
)
from adapterdeploy.exporter.deployment import export_deployment
from adapterdeploy.models.base import load_base
from adapterdeploy.models.tiny import build_tiny_base
from adapterdeploy.runtime.inspection import inspect_deployment

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ckpts(tiny_base, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "x": make_checkpoint(tiny_base, root, "x", bottleneck=4, seed=1),
        "y": make_checkpoint(tiny_base, root, "y", bottleneck=6, pooling="mean", seed=2),
        "al": make_checkpoint(tiny_base, root, "al", placement="after_layer", seed=3),
    }


def _entries(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def test_bad_inputs_are_refused_and_nothing_is_written(tiny_base_dir, ckpts, tmp_path, tmp_path_factory):
    before = _entries(tmp_path)
    out = tmp_path / "dep"
    cases = [
        (ArtifactError, "does not exist", dict(base_dir=tmp_path / "nope")),
        (ConfigError, "out of range", dict(adapter_drop=4)),
        (ConfigError, "unknown precision", dict(precisions=("fp8",))),
        (ConfigError, "--max-length", dict(max_length=10_000)),
        (ConfigError, "placement", dict(tasks=[ckpts["x"], ckpts["al"]])),
        (ConfigError, "two checkpoints are named 'x'", dict(tasks=[ckpts["x"], ckpts["x"]])),
        (ConfigError, "no task", dict(tasks=[])),
    ]
    gpt = tmp_path_factory.mktemp("gpt2")
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    cases.append((UnsupportedArchitectureError, "gpt2", dict(base_dir=gpt)))
    other_base = load_base(build_tiny_base(tmp_path_factory.mktemp("other"), seed=1))
    foreign = make_checkpoint(other_base, tmp_path_factory.mktemp("foreign"), "foreign")
    cases.append((FingerprintMismatchError, "different base model", dict(tasks=[foreign])))
    for exc, match, kwargs in cases:
        base_dir = kwargs.pop("base_dir", tiny_base_dir)
        tasks = kwargs.pop("tasks", [ckpts["x"]])
        with pytest.raises(exc, match=match):
            export_deployment(base_dir, tasks, out, **kwargs)
        assert _entries(tmp_path) == before, f"{exc.__name__} ({match}) left files behind"

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="--force"):
        export_deployment(tiny_base_dir, [ckpts["x"]], existing)
    with pytest.raises(ArtifactError, match="not an adapterdeploy deployment"):
        export_deployment(tiny_base_dir, [ckpts["x"]], existing, force=True)
    assert (existing / "notes.txt").read_text() == "mine"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ArtifactError, match="cannot write"):
        export_deployment(tiny_base_dir, [ckpts["x"]], blocker / "dep")


def _in_subprocess(code: str, *args: Path | str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], what: str) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False when it finished first (then it must have succeeded)."""
    deadline = time.monotonic() + 240
    try:
        while not ready():
            if proc.poll() is not None:
                assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
                return False
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not happen in time")
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    return proc.returncode == -signal.SIGKILL


def _assert_whole(out: Path, tasks: set[str]) -> None:
    """``out`` is a complete deployment holding exactly ``tasks``: checksums, no stray files, it predicts."""
    from adapterdeploy.runtime import Deployment

    manifest = Manifest.read(out)
    assert set(manifest.tasks) == tasks
    assert verify_deployment(out, manifest)[0] == []
    listed = [*manifest.files, "deployment.json"]
    for rel in manifest.tasks.values():
        listed += [f"{rel}/task.json", *(f"{rel}/{f}" for f in TaskSpec.read(out / rel).files)]
    leftovers = inspect_deployment(out)["leftovers"]  # what a killed writer left: hidden, named by inspect
    on_disk = sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and not any(str(p).startswith(x) for x in leftovers)
    )
    assert on_disk == sorted(listed)
    with Deployment.open(out) as dep:
        for name in tasks:
            assert len(dep.predict(["still whole"], task=name)) == 1


@pytest.mark.parametrize(
    "previous,stage", [(False, ".work/adapted.plain.onnx"), (True, "tasks/y/adapters.safetensors")]
)
def test_sigkill_mid_export_leaves_previous_or_nothing(tiny_base_dir, ckpts, tmp_path, previous, stage):
    out = tmp_path / "deploy"
    old = export_deployment(tiny_base_dir, [ckpts["x"]], out) if previous else None
    code = (
        "import sys; from adapterdeploy.exporter.deployment import export_deployment; "
        "export_deployment(sys.argv[1], sys.argv[3:], sys.argv[2], force=True, precisions=('fp32', 'int8'))"
    )
    proc = _in_subprocess(code, tiny_base_dir, out, ckpts["x"], ckpts["y"])

    def staged() -> bool:
        return bool(list(tmp_path.glob(f".deploy.tmp-*/{stage}")))

    assert _kill_when(proc, staged, f"the export reaching {stage}"), f"the export finished before reaching {stage}"
    if old is None:
        assert not out.exists()
    else:
        assert Manifest.read(out).created == old.created
        _assert_whole(out, {"x"})
    # What a kill leaves is a hidden temp sibling (and the writer lock's files), never the target itself.
    assert all(p.name.startswith((".deploy.tmp-", ".deploy.lock")) for p in tmp_path.iterdir() if p.name != "deploy")
    if old is not None:
        assert inspect_deployment(out)["leftovers"]


@pytest.fixture(scope="module")
def cli_dep(tiny_base_dir, ckpts, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cli") / "dep"
    result = CliRunner().invoke(
        cli,
        [
            "export",
            "--base",
            str(tiny_base_dir),
            "--task",
            str(ckpts["x"]),
            "--out",
            str(out),
            "--precision",
            "int8",
            "--max-length",
            "40",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output)


def test_cli_export_and_inspect(cli_dep):
    out, info = cli_dep
    assert info["checksums"]["ok"] and info["tokenizer"]["max_length"] == 40
    assert set(info["featurizer"]["variants"]) == {"fp32", "int8"}
    runner = CliRunner()
    table = runner.invoke(cli, ["inspect", str(out)])
    assert table.exit_code == 0 and "featurizer variants" in table.output and "checksums" in table.output
    again = runner.invoke(cli, ["export", "--base", str(info["base"]["path"]), "--task", "x", "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_cli_add_remove_task_and_corruption(cli_dep, ckpts, tmp_path):
    import shutil

    out, _ = cli_dep
    dep = tmp_path / "dep"
    shutil.copytree(out, dep)
    runner = CliRunner()
    added = runner.invoke(cli, ["add-task", str(dep), str(ckpts["y"]), "--quiet"])
    assert added.exit_code == 0, added.output
    assert "added task 'y'" in added.output
    bad = runner.invoke(cli, ["add-task", str(dep), str(ckpts["al"]), "--quiet"])
    assert bad.exit_code == 2 and "fingerprint_mismatch" in bad.output
    removed = runner.invoke(cli, ["remove-task", str(dep), "x"])
    assert removed.exit_code == 0 and "1 task(s) left: y" in removed.output
    info = json.loads(runner.invoke(cli, ["inspect", str(dep), "--json"]).output)
    assert [t["name"] for t in info["tasks"]] == ["y"] and info["checksums"]["ok"]
    (dep / "featurizer" / "trunk.onnx").write_bytes(b"truncated")
    broken = runner.invoke(cli, ["inspect", str(dep)])
    assert broken.exit_code == 1 and "featurizer/trunk.onnx" in broken.output
    missing = runner.invoke(cli, ["inspect", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "invalid_artifact" in missing.output


def test_eval_plan_and_zero_fill_rules(tmp_path):
    from types import SimpleNamespace

    from adapterdeploy.config import AdapterConfig, SiteOptions
    from adapterdeploy.exporter.deployment import _eval_plan
    from adapterdeploy.exporter.featurizer import fusion_friendly, zero_adapter_is_identity

    f = tmp_path / "sst2" / "dev.tsv"
    f.parent.mkdir()
    f.write_text("label\ttext\n1\tgood\n")
    one, two = [SimpleNamespace(name="sst2")], [SimpleNamespace(name="sst2"), SimpleNamespace(name="cola")]
    assert _eval_plan(str(f), one) == {"sst2": f}
    assert _eval_plan([str(f)], two) == {"sst2": f}  # named like its folder
    assert _eval_plan([f"cola={f}"], two) == {"cola": f}
    with pytest.raises(ConfigError, match="NAME=FILE"):
        _eval_plan([str(tmp_path / "other.tsv")], two)
    with pytest.raises(ConfigError, match="does not exist"):
        _eval_plan([f"cola={tmp_path / 'missing.tsv'}"], two)
    with pytest.raises(ConfigError, match="not exported here"):
        _eval_plan({"rte": f}, two)
    native = AdapterConfig(placement="houlsby").signature()
    assert fusion_friendly(native.site) and zero_adapter_is_identity(native)
    hub = AdapterConfig(placement="pfeiffer", site=SiteOptions(original_ln_before=True)).signature()
    assert not fusion_friendly(hub.site) and zero_adapter_is_identity(hub)
    lossy = AdapterConfig(placement="pfeiffer", site=SiteOptions(ln_after=True, adapter_residual_before_ln=True))
    assert not zero_adapter_is_identity(lossy.signature())
    no_ln_after = AdapterConfig(placement="pfeiffer", site=SiteOptions(original_ln_after=False))
    assert not zero_adapter_is_identity(no_ln_after.signature())


def test_sigkill_mid_add_task_keeps_the_previous_deployment(tiny_base_dir, ckpts, tmp_path):
    out = tmp_path / "deploy"
    export_deployment(tiny_base_dir, [ckpts["x"]], out, precisions=("fp32", "int8"))
    code = "import sys; from adapterdeploy.exporter.updates import add_task; add_task(sys.argv[1], sys.argv[2])"
    proc = _in_subprocess(code, out, ckpts["y"])
    killed = _kill_when(
        proc,
        lambda: bool(list(out.glob(".staging-*/tasks/y/adapters.safetensors"))),
        "add-task writing the new task's weights",
    )
    assert killed, "add-task finished before its new task was staged"
    _assert_whole(out, {"x"})
    assert [Path(p).name[:9] for p in inspect_deployment(out)["leftovers"]] == [".staging-"]
    assert {p.name for p in tmp_path.iterdir()} <= {"deploy", ".deploy.lock", ".deploy.lock.json"}


def test_sigkill_during_remove_task_leaves_old_or_new_never_half(tiny_base_dir, ckpts, tmp_path):
    """remove-task takes milliseconds, so the kill lands somewhere in it (or after it): either way the
    deployment is whole, with or without the task."""
    out = tmp_path / "deploy"
    export_deployment(tiny_base_dir, [ckpts["x"], ckpts["y"]], out)
    code = "import sys; from adapterdeploy.exporter.updates import remove_task; remove_task(sys.argv[1], sys.argv[2])"
    proc = _in_subprocess(code, out, "y")
    killed = _kill_when(proc, (tmp_path / ".deploy.lock.json").exists, "remove-task holding the lock")
    tasks = set(Manifest.read(out).tasks)
    assert tasks in ({"x", "y"}, {"x"})
    assert killed or tasks == {"x"}
    _assert_whole(out, tasks)
