"""Section 6: bytes on disk: whole model vs shared featurizer vs one task's piece vs a standalone task file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.prepare import main_deployment, optimum_export, ours_available
from benchmarks.sections.common import SectionResult, Table, mib
from benchmarks.settings import Context

__all__ = ["run"]


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _onnx_size(model: Path) -> int:
    """An ONNX file plus its external-data files, if any."""
    return sum(_size(f) for f in model.parent.iterdir() if f.name.startswith(model.name))


def run(ctx: Context) -> SectionResult:
    result = SectionResult("sizes", "6. Sizes on disk")
    missing = ours_available()
    if missing:
        result.skipped = missing
        return result
    from adapterdeploy.artifacts import Manifest

    raw: dict[str, Any] = {}
    for key in ctx.settings.models:
        p = ctx.model(key)
        dep = main_deployment(p, not ctx.settings.quick)
        m = Manifest.read(dep)
        rows: list[tuple[str, int]] = []
        weights = next(
            (f for f in (p.base_dir / "model.safetensors", p.base_dir / "pytorch_model.bin") if f.is_file()), None
        )
        if weights is not None:
            rows.append(("base model weights (PyTorch, safetensors)", _size(weights)))
        rows.append(("whole model + task, ONNX fp32 (optimum O3 export)", _onnx_size(optimum_export(p, "task"))))
        for prec, v in m.featurizer.variants.items():
            rows.append(
                (f"shared featurizer {prec} (trunk + adapted graphs)", _size(dep / v.trunk) + _size(dep / v.adapted))
            )
        task_dir = dep / m.tasks["t0000"]
        rows.append(("one task's piece in a deployment (tasks/<name>/: adapters + head + task.json)", _size(task_dir)))
        rows.append(("one task checkpoint (adapter.safetensors + task.json)", _size(p.task_dirs(1)[0])))
        for prec, rel in sorted(getattr(m, "standalone", {}).get("t0000", {}).items()):
            rows.append((f"standalone task file {prec} (one self-contained ONNX)", _size(dep / rel)))
        task_bytes = _size(task_dir)
        raw[key] = {label: n for label, n in rows}
        t = Table(f"{key}: bytes on disk", ["artifact", "MiB", "bytes", "x one task's piece"])
        for label, n in rows:
            t.rows.append([label, mib(n), n, f"{n / task_bytes:.1f}"])
        result.tables.append(t)
    result.raw = raw
    return result
