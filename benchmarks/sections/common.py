"""Pieces shared by the sections: system specs, the section result shape, and small formatting helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import LoadMonitor
from benchmarks.prepare import Prepared

__all__ = [
    "LABELS",
    "SectionResult",
    "Table",
    "adapterhub_spec",
    "mib",
    "monitored",
    "ort_spec",
    "ours_spec",
    "torch_spec",
]

# system key -> label used in every table and plot
LABELS = {
    "torch_eager": "PyTorch eager (our adapters)",
    "adapterhub": "PyTorch eager (AdapterHub adapters)",
    "torch_compile": "torch.compile (our adapters)",
    "ort_task": "optimum ORT O3, whole model + task",
    "ort_plain": "optimum ORT O3, plain model (no adapters)",
    "ort_plain_nospin": "optimum ORT O3, plain model, idle threads not spinning",
    "ours_fp32": "ours fp32",
    "ours_int8": "ours int8",
    "ours_fp32_mixed": "ours fp32, many tasks loaded, mixed",
    "ours_int8_mixed": "ours int8, many tasks loaded, mixed",
    "ours_noadapter_fp32": "our featurizer without adapters, fp32",
    "ours_noadapter_int8": "our featurizer without adapters, int8",
    "ours_seq_bn_fp32": "ours fp32, AdapterHub seq_bn (Pfeiffer) imported",
    "ours_seq_bn_int8": "ours int8, AdapterHub seq_bn (Pfeiffer) imported",
    "ours_double_seq_bn_fp32": "ours fp32, AdapterHub double_seq_bn (Houlsby) imported",
    "ours_double_seq_bn_int8": "ours int8, AdapterHub double_seq_bn (Houlsby) imported",
}


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows}


@dataclass
class SectionResult:
    """What a section hands the report: tables, plot specs (drawn by report.py), notes, raw data, load."""

    key: str
    title: str
    tables: list[Table] = field(default_factory=list)
    plots: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    load: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "tables": [t.to_dict() for t in self.tables],
            "plots": self.plots,
            "notes": self.notes,
            "raw": self.raw,
            "load": self.load,
            "skipped": self.skipped,
            "wall_s": self.wall_s,
        }


def monitored(result: SectionResult, what: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` under a LoadMonitor and record the foreign load next to ``what``."""
    with LoadMonitor() as mon:
        value = fn()
    result.load.append({"what": what, **mon.report.to_dict()})
    return value


def first_model(ctx: Any, result: SectionResult) -> tuple[Any, str, Prepared]:
    """(settings, model key, prepared model) for sections measured on the first model only.

    Those sections run on one model to keep a full run within its time budget; the note says so.
    """
    s = ctx.settings
    key = s.models[0]
    if len(s.models) > 1:
        result.notes.append(f"measured on {key} only (the first model), to keep the full run within its time budget")
    return s, key, ctx.model(key)


def mib(n: float) -> float:
    return round(n / (1 << 20), 1)


def torch_spec(p: Prepared, task_dir: Path | None = None) -> dict[str, Any]:
    return {
        "base_dir": str(p.base_dir),
        "ckpt_dir": str(task_dir or p.task_dirs(1)[0]),
        "tokenizer": str(p.tokenizer),
        "max_length": p.max_length,
    }


def adapterhub_spec(p: Prepared) -> dict[str, Any]:
    from benchmarks.prepare import ADAPTER_STD, REDUCTION_FACTOR

    return {
        "base_dir": str(p.base_dir),
        "reduction_factor": REDUCTION_FACTOR,
        "activation": "relu",
        "init_std": ADAPTER_STD,
        "tokenizer": str(p.tokenizer),
        "max_length": p.max_length,
    }


def ort_spec(p: Prepared, model_path: Path) -> dict[str, Any]:
    return {"model_path": str(model_path), "tokenizer": str(p.tokenizer), "max_length": p.max_length}


def ours_spec(deployment: Path, precision: str, **extra: Any) -> dict[str, Any]:
    return {"deployment": str(deployment), "precision": precision, **extra}
