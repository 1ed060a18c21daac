"""Export and add-task stream task models through PyTorch one parity group at a time (issue 16 item 1).

Behaviour, not RSS: the peak RSS of `export` and `add-task` against N is measured on MiniLM
(docs/performance.md, scale section); here we count the objects alive whenever a new task model is built.
"""

from __future__ import annotations

import gc
import shutil
import weakref
from pathlib import Path

import pytest
from exporter_helpers import make_checkpoint

from adapterdeploy.artifacts import Manifest
from adapterdeploy.errors import ParityError
from adapterdeploy.exporter import parity, task_pieces
from adapterdeploy.exporter.deployment import export_deployment
from adapterdeploy.exporter.updates import add_tasks
from adapterdeploy.models import checkpoint
from adapterdeploy.models.checkpoint import TaskCheckpoint

N_TASKS, GROUP = 5, 2


class Alive:
    """Weak references to the checkpoints read with their weights, prepared tasks (bank rows and heads) and task
    models; ``peaks`` counts those alive each time a model is built (the model being built included). Lists of
    weak references, not WeakSets: the dataclasses are unhashable."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.loaded: list[weakref.ref] = []
        self.prepared: list[weakref.ref] = []
        self.models: list[weakref.ref] = []
        self.peaks: list[tuple[int, int, int]] = []
        load, prepare, build = checkpoint.load_checkpoint, task_pieces.prepare_task, TaskCheckpoint.build_model

        def counting_load(path):
            ckpt = load(path)
            self.loaded.append(weakref.ref(ckpt))
            return ckpt

        def counting_prepare(*args, **kwargs):
            task = prepare(*args, **kwargs)
            self.prepared.append(weakref.ref(task))
            return task

        def counting_build(ckpt, base):
            gc.collect()  # count what is still referenced, not garbage waiting for the collector
            model = build(ckpt, base)
            self.models.append(weakref.ref(model))
            with_weights = sum(1 for r in self.loaded if r() is not None and r().weights)
            self.peaks.append((with_weights, _count(self.prepared), _count(self.models)))
            return model

        mp.setattr(parity, "PARITY_GROUP", GROUP)
        mp.setattr(checkpoint, "load_checkpoint", counting_load)
        mp.setattr(task_pieces, "prepare_task", counting_prepare)
        mp.setattr(TaskCheckpoint, "build_model", counting_build)

    def most(self, which: int) -> int:
        return max(p[which] for p in self.peaks)


def _count(refs: list[weakref.ref]) -> int:
    return sum(1 for r in refs if r() is not None)


@pytest.fixture(scope="module")
def exported(tiny_base, tiny_base_dir, tmp_path_factory) -> tuple[Path, Alive, Path]:
    """N tasks exported once for the module, counting: (deployment, counts, checkpoint directory)."""
    ck = tmp_path_factory.mktemp("ck")
    ckpts = [make_checkpoint(tiny_base, ck, f"t{i}", seed=i) for i in range(N_TASKS)]
    out = tmp_path_factory.mktemp("export") / "dep"
    with pytest.MonkeyPatch.context() as mp:
        alive = Alive(mp)
        export_deployment(tiny_base_dir, ckpts, out)
    return out, alive, ck


def test_export_never_holds_every_task_model(exported):
    dep, alive, _ = exported
    assert len(alive.peaks) == N_TASKS and alive.most(2) <= GROUP  # one group's models at a time, never all N
    manifest = Manifest.read(dep)
    # Every task was still checked against its PyTorch model, in mixed and fan-out batches of its group.
    assert manifest.parity["fp32"]["logits_max_abs_diff"] <= 1e-4
    assert [b.split(":")[0] for b in manifest.parity["batches"]][:4] == [
        "mixed[0",
        "fan_out_unpadded[0",
        "mixed[2",
        "fan_out_unpadded[2",
    ]
    for i in range(N_TASKS):
        assert manifest.parity["tasks"][f"t{i}"]["fp32"]["argmax_agreement"] is not None


def test_add_task_holds_one_group_of_checkpoints_rows_and_models(exported, tiny_base, tmp_path, monkeypatch):
    """Before: add-task read every checkpoint with its weights up front and kept every task's rows to the end."""
    dep, _, ck = exported
    shutil.copytree(dep, tmp_path / "dep")
    ckpts = [make_checkpoint(tiny_base, ck, f"n{i}", seed=10 + i) for i in range(N_TASKS)]
    alive = Alive(monkeypatch)
    specs = add_tasks(tmp_path / "dep", ckpts)
    assert len(alive.peaks) == N_TASKS
    assert alive.most(0) <= GROUP, alive.peaks  # checkpoints with their weights
    assert alive.most(1) < GROUP, alive.peaks  # prepared tasks (the one being built is not prepared yet)
    assert alive.most(2) <= GROUP, alive.peaks  # task models
    manifest = Manifest.read(tmp_path / "dep")
    assert sorted(manifest.tasks) == sorted([f"t{i}" for i in range(N_TASKS)] + [f"n{i}" for i in range(N_TASKS)])
    for spec in specs:  # every task still checked against its PyTorch model, recorded in its task.json
        assert spec.parity["fp32"]["logits_max_abs_diff"] <= 1e-4
        assert manifest.parity["tasks"][spec.name]["fp32"]["argmax_agreement"] is not None


def test_add_task_refusal_names_the_failing_tasks_of_every_group(exported, tiny_base, tmp_path, monkeypatch):
    """Streaming keeps the check whole: an fp32 failure in one group does not stop the others being checked, the
    ParityError names the tasks of every group, and nothing is installed."""
    dep, _, ck = exported
    shutil.copytree(dep, tmp_path / "dep")
    before = (tmp_path / "dep" / "deployment.json").read_bytes()
    ckpts = [make_checkpoint(tiny_base, ck, f"bad{i}", seed=20 + i) for i in range(GROUP + 1)]
    monkeypatch.setattr(parity, "PARITY_GROUP", GROUP)
    with pytest.raises(ParityError) as err:
        add_tasks(tmp_path / "dep", ckpts, tolerance=1e-12)  # fp32 ONNX vs PyTorch is never exact
    assert {key.split()[0] for key in err.value.failures} == {f"bad{i}" for i in range(GROUP + 1)}
    assert (tmp_path / "dep" / "deployment.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "dep" / "tasks").iterdir()) == [f"t{i}" for i in range(N_TASKS)]
    assert not list((tmp_path / "dep").glob(".staging-*"))
