"""The shared lower adapters of a stacked deployment: each ``shared/<name>`` file read once per deployment.

Every task stacked on a lower adapter gets the same :class:`~adapterdeploy.runtime.bank.LowerRows` object,
so 10 tasks on one language adapter hold its weights once. Lower adapters stay loaded while the deployment
is open (there are few, and they are what many tasks share); they are not counted in the task registry's
memory budget, which counts each task's own rows and head (:attr:`shared_bytes` says how much they take).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.numpy import load_file

from adapterdeploy.artifacts import safe_relpath
from adapterdeploy.errors import ArtifactError, ChecksumError
from adapterdeploy.runtime.bank import BankLayout, LowerRows

__all__ = ["SharedLowers"]


class SharedLowers:
    """Lower adapters by file, loaded on first use by a task; thread-safe (one lock, read outside it is not
    needed: a lower file is small and read once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, LowerRows] = {}

    def get(self, root: Path, stack_on: Any, layout: BankLayout) -> LowerRows:
        """The rows of the lower adapter that ``task.json``'s ``adapter.stack_on`` names."""
        if (
            not isinstance(stack_on, dict)
            or not all(isinstance(stack_on.get(k), str) for k in ("name", "file"))
            or not isinstance(stack_on.get("bottleneck"), int)
        ):
            raise ArtifactError(
                f"a task's stack_on must name the lower adapter's name, file and bottleneck, got "
                f"{stack_on!r:.120}; re-export the task"
            )
        rel = stack_on["file"]
        with self._lock:
            cached = self._rows.get(rel)
            if cached is not None:
                return cached
            path = root / safe_relpath(rel)
            if not path.is_file():
                raise ArtifactError(f"lower adapter file {path} is missing; the deployment is incomplete: re-export it")
            try:
                tensors = load_file(str(path))
            except (SafetensorError, OSError, ValueError) as exc:
                raise ChecksumError(f"cannot read {path}: {exc}; re-export the deployment") from exc
            rows = layout.lower_rows(stack_on["name"], tensors, stack_on["bottleneck"])
            self._rows[rel] = rows
            return rows

    @property
    def shared_bytes(self) -> int:
        with self._lock:
            return sum(r.nbytes for r in self._rows.values())

    def items(self) -> list[tuple[str, LowerRows]]:
        with self._lock:
            return sorted((r.name, r) for r in self._rows.values())
