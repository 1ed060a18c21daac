"""Export streams task models through PyTorch one parity group at a time (issue 16 item 1).

Behaviour, not RSS: the peak RSS of `export` against N is measured on MiniLM (docs/performance.md, scale
section); here we count the task models alive whenever a new one is built.
"""

from __future__ import annotations

import gc
import weakref

from exporter_helpers import make_checkpoint

from adapterdeploy.artifacts import Manifest
from adapterdeploy.exporter import parity
from adapterdeploy.exporter.deployment import export_deployment
from adapterdeploy.models.checkpoint import TaskCheckpoint

N_TASKS, GROUP = 5, 2


def test_export_never_holds_every_task_model(tiny_base, tiny_base_dir, tmp_path, monkeypatch):
    ckpts = [make_checkpoint(tiny_base, tmp_path / "ck", f"t{i}", seed=i) for i in range(N_TASKS)]
    monkeypatch.setattr(parity, "PARITY_GROUP", GROUP)
    alive: weakref.WeakSet = weakref.WeakSet()
    peak = []
    build = TaskCheckpoint.build_model

    def counting(self, base):
        gc.collect()  # count models still referenced, not garbage waiting for the collector
        model = build(self, base)
        alive.add(model)
        peak.append(len(alive))
        return model

    monkeypatch.setattr(TaskCheckpoint, "build_model", counting)
    export_deployment(tiny_base_dir, ckpts, tmp_path / "dep")
    assert len(peak) == N_TASKS and max(peak) <= GROUP  # one group's models at a time, never all N
    manifest = Manifest.read(tmp_path / "dep")
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
