"""Many synthetic tasks in a real deployment, fast: the scale benchmark's and the scale tests' task maker.

Why synthetic: exporting a task runs PyTorch, a parity check and a head export (seconds each), so a
deployment of 10,000 exported tasks would take many hours to build. A synthetic task is an exported
*template* task with NEW random adapter rows: the same bank keys, shapes and dtype (the featurizer's real
shapes, read from the template's ``adapters.safetensors``), the template's head (its weights and
``head.onnx`` stay consistent), written through the exporter's own writer
(:func:`adapterdeploy.exporter.task_pieces.write_task_files`: safetensors + ``task.json`` with sizes and
sha256) and registered in the manifest like ``add-task`` does. The runtime loads it through its ordinary
path (task.json, fingerprint, checksums, safetensors, bank rows). It is not parity-checked: its
``task.json`` says it is synthetic.

Semantics: row key k of task i = N(0, std_k) with std_k the template row's std (1e-3 when that is 0),
drawn from ``numpy.random.default_rng((seed, i))``; head keys are the template's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from adapterdeploy.artifacts import MANIFEST_FILE, TASK_HEAD_FILE, FileEntry, Manifest, TaskSpec

__all__ = ["add_synthetic_tasks", "synthetic_name"]


def synthetic_name(prefix: str, i: int) -> str:
    """``s00042``: names sort in creation order up to a million tasks."""
    return f"{prefix}{i:06d}"


def add_synthetic_tasks(
    deploy_dir: str | Path, n: int, *, template: str | None = None, prefix: str = "s", seed: int = 0, start: int = 0
) -> list[str]:
    """Add ``n`` synthetic tasks (``prefix`` + index from ``start``) to the deployment; return their names.

    ``template`` is an exported task of the deployment (default: its first task). The manifest is
    rewritten once at the end (write to a temp file, then rename), not once per task.
    """
    from adapterdeploy.exporter.task_pieces import write_task_files

    root = Path(deploy_dir)
    manifest = Manifest.read(root)
    if not manifest.tasks:
        raise ValueError(f"{root} has no exported task to use as the template")
    template = template or sorted(manifest.tasks)[0]
    src = root / manifest.tasks[template]
    spec = TaskSpec.read(src)
    tensors = load_file(str(src / "adapters.safetensors"))
    stds = {k: float(v.std()) or 1e-3 for k, v in tensors.items() if k.startswith("bank.")}
    head_graph = src / TASK_HEAD_FILE
    names, tasks, files = [], dict(manifest.tasks), dict(manifest.files)
    for i in range(start, start + n):
        name = synthetic_name(prefix, i)
        rel = f"tasks/{name}"
        task_dir = root / rel
        task_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng((seed, i))
        weights = {
            k: (rng.standard_normal(v.shape, dtype=np.float32) * np.float32(stds[k]) if k in stds else v)
            for k, v in tensors.items()
        }
        if head_graph.is_file():
            shutil.copyfile(head_graph, task_dir / TASK_HEAD_FILE)
        written = write_task_files(
            task_dir,
            dataclasses.replace(
                spec,
                name=name,
                parity={"note": f"synthetic: {template}'s head, random adapter rows; not exported"},
                metrics={},
            ),
            weights,
        )
        tasks[name] = rel
        files.update({f"{rel}/{f}": FileEntry(e.size, e.sha256) for f, e in written.files.items()})
        names.append(name)
    new = dataclasses.replace(
        manifest, tasks=tasks, files=files, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )
    tmp = root / f".{MANIFEST_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(new.to_dict(), indent=2) + "\n")
    os.replace(tmp, root / MANIFEST_FILE)
    return names
