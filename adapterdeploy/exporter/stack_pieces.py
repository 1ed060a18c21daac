"""Stack in a deployment: each distinct lower adapter stored once under ``shared/``, tasks refer to it.

A stacked task's bank rows hold its own adapter rows and its lower adapter's rows
(``bank.{layer}.{site}_lower.*``). The task's ``adapters.safetensors`` keeps only its own rows; the lower
rows go to ``shared/<lower name>/adapters.safetensors`` (written once per distinct lower adapter, named
by the adapter, identified by a digest of its rows) and ``task.json``'s ``adapter.stack_on`` points at
it. The runtime reads each shared file once and gives every task stacked on it the same arrays.
Plain tasks in a stacked deployment carry no lower rows: the runtime fills zeros, which the exporter
checked to be the identity (``zero_adapter_is_identity`` of the stacked signature).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from adapterdeploy.config import LOWER_SUFFIX
from adapterdeploy.errors import ConfigError
from adapterdeploy.models.stack import lower_digest

__all__ = ["SHARED_DIR", "SHARED_FORMAT", "is_lower_key", "split_lower_rows", "write_shared_lower"]

SHARED_DIR = "shared"
SHARED_FORMAT = "adapterdeploy.shared-lower-adapter"
SHARED_WEIGHTS_FILE = "adapters.safetensors"


def is_lower_key(key: str) -> bool:
    """``bank.3.ffn_lower.down_w`` -> True."""
    parts = key.split(".")
    return len(parts) == 4 and parts[2].endswith(LOWER_SUFFIX)


def split_lower_rows(rows: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the task's own rows, its lower adapter's rows)."""
    own = {k: v for k, v in rows.items() if not is_lower_key(k)}
    return own, {k: v for k, v in rows.items() if is_lower_key(k)}


def write_shared_lower(root: Path, lower_name: str, rows: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write ``shared/<name>/adapters.safetensors`` unless the same rows are already there; return ``stack_on``.

    Two different lower adapters with one name are refused (rename one with the importer's or trainer's
    options); the same adapter under many tasks is written once.
    """
    from adapterdeploy.exporter.task_pieces import check_task_name

    check_task_name(lower_name)
    rel = f"{SHARED_DIR}/{lower_name}/{SHARED_WEIGHTS_FILE}"
    path = root / rel
    tensors = {k: v.detach().contiguous().float() for k, v in rows.items()}
    digest = lower_digest(tensors)
    m = max(int(v.shape[-1]) for k, v in tensors.items() if k.endswith(".down_w"))
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            existing = (f.metadata() or {}).get("digest")
        if existing != digest:
            raise ConfigError(
                f"two different lower adapters are both named {lower_name!r} ({path} holds another one); a "
                "deployment stores one lower adapter per name: rename one (its stack_on name in task.json)"
            )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"format": SHARED_FORMAT, "name": lower_name, "digest": digest})
        path.chmod(0o644)  # save_file writes 0600; a deployment is read by other users
    return {"name": lower_name, "file": rel, "bottleneck": m, "digest": digest}


def prune_shared(root: Path, task_dirs: list[Path]) -> list[str]:
    """Remove ``shared/<name>`` directories no remaining task is stacked on; return the removed names."""
    import shutil

    from adapterdeploy.artifacts import TaskSpec

    shared = root / SHARED_DIR
    if not shared.is_dir():
        return []
    used = set()
    for d in task_dirs:
        stack_on = TaskSpec.read(d).adapter.get("stack_on")
        if stack_on:
            used.add(Path(stack_on["file"]).parent.name)
    removed = sorted(p.name for p in shared.iterdir() if p.name not in used)
    for name in removed:
        shutil.rmtree(shared / name)
    if not any(shared.iterdir()):
        shared.rmdir()
    return removed
