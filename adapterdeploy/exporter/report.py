"""``inspect``: a deployment's manifest summary, tasks, sizes, parity and a checksum check of every file.

Pure Python on top of artifacts.py (no torch, no onnxruntime), so it is fast and runs anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapterdeploy.artifacts import MANIFEST_FILE, STAGING_PREFIX, Manifest, TaskSpec, safe_relpath, verify_deployment
from adapterdeploy.errors import ArtifactError

__all__ = ["inspect_deployment"]


def inspect_deployment(deploy_dir: str | Path) -> dict[str, Any]:
    """Everything ``adapterdeploy inspect`` shows, as one JSON-able dict.

    ``checksums.ok`` is False when any file listed in the manifest is missing, truncated or modified, or when
    a task's ``task.json`` is unreadable or was exported for another featurizer.
    """
    root = Path(deploy_dir)
    leftovers = _leftovers(root)
    if not root.is_dir():
        old = [p for p in leftovers if ".old-" in p.name]
        if old:
            raise ArtifactError(
                f"deployment directory {root} does not exist, but {old[0]} does: an update was "
                f"interrupted between its two renames; rename {old[0].name} back to {root.name}"
            )
    manifest = Manifest.read(root)
    fz = manifest.featurizer
    problems, files_checked = verify_deployment(root, manifest)
    tasks = []
    for name, rel in sorted(manifest.tasks.items()):
        task_dir = root / safe_relpath(rel)
        json_entry = manifest.task_files.get(name)
        size = json_entry.size if json_entry else 0
        try:
            spec = TaskSpec.read(task_dir)
        except ArtifactError as exc:
            tasks.append({"name": name, "dir": rel, "size_bytes": size, "error": str(exc)})
            continue
        size += sum(e.size for e in spec.files.values())
        if spec.featurizer_fingerprint != fz.fingerprint:
            problems.append(
                f"{rel}: exported for featurizer {spec.featurizer_fingerprint[:12]}…, this one is "
                f"{fz.fingerprint[:12]}…"
            )
        tasks.append(
            {
                "name": name,
                "dir": rel,
                "problem_type": spec.head.problem_type,
                "labels": list(spec.head.labels),
                "pooling": spec.head.pooling,
                "bottleneck": spec.bottleneck,
                "layers": list(spec.layers),
                "dropped_layers": spec.adapter.get("dropped_layers", []),
                "text_pair": spec.text_pair,
                "size_bytes": size,
                "parity": {k: v for k, v in spec.parity.items() if k != "samples"},
                "metrics": spec.metrics,
                "standalone": manifest.standalone.get(name, {}),
            }
        )
    variants = {}
    for precision, v in fz.variants.items():
        variants[precision] = {
            "trunk": v.trunk,
            "adapted": v.adapted,
            "optimization": v.optimization,
            "size_bytes": sum(manifest.files[f].size for f in (v.trunk, v.adapted) if f in manifest.files),
            "op_counts": v.op_counts,
            "parity": v.parity,
            "timings": v.timings,
        }
    total = sum(e.size for e in manifest.files.values()) + sum(t["size_bytes"] for t in tasks)
    return {
        "path": str(root),
        "schema_version": manifest.schema_version,
        "tool_version": manifest.tool_version,
        "created": manifest.created,
        "base": manifest.base,
        "featurizer": {
            "fingerprint": fz.fingerprint,
            "adapter_drop": fz.adapter_drop,
            "num_layers": fz.num_layers,
            "hidden_size": fz.hidden_size,
            "adapted_layers": list(fz.adapted_layers),
            "signature": fz.signature.to_dict(),
            "bank_inputs": len(fz.bank_inputs),
            "outputs": list(fz.outputs),
            "opset": fz.opset,
            "variants": variants,
        },
        "tokenizer": {
            "file": manifest.tokenizer.file,
            "max_length": manifest.tokenizer.max_length,
            "model_type": manifest.tokenizer.model_type,
        },
        "tasks": tasks,
        "sizes": {
            "total_bytes": total,
            "tasks_bytes": sum(t["size_bytes"] for t in tasks),
            "standalone_bytes": sum(e.size for f, e in manifest.files.items() if f.startswith("standalone/")),
        },
        "parity": manifest.parity,
        "adapter_drop_eval": manifest.adapter_drop_eval,
        "checksums": {"ok": not problems, "files_checked": files_checked, "problems": problems},
        "leftovers": [str(p) for p in [*leftovers, *_inner_leftovers(root, manifest)]],
    }


def _inner_leftovers(root: Path, manifest: Manifest) -> list[Path]:
    """What killed writers left inside: staging dirs, manifest temp files, task dirs / standalone graphs that
    no manifest entry names (the next add-task / remove-task removes the first two)."""
    # a standalone task is a folder (standalone/<task>/...): its name part is named by the files inside it
    named = {*manifest.tasks.values(), *manifest.files, *("/".join(f.split("/")[:2]) for f in manifest.files)}
    found = sorted(root.glob(f"{STAGING_PREFIX}*")) + sorted(root.glob(f".{MANIFEST_FILE}.*.tmp"))
    for sub in ("tasks", "standalone"):
        if (root / sub).is_dir():
            found += sorted(p for p in (root / sub).iterdir() if f"{sub}/{p.name}" not in named)
    return found


def _leftovers(root: Path) -> list[Path]:
    """Hidden temp siblings an interrupted export / add-task / remove-task left (safe to delete)."""
    parent = root.absolute().parent
    if not parent.is_dir():
        return []
    return sorted(parent.glob(f".{root.name}.tmp-*")) + sorted(parent.glob(f".{root.name}.old-*"))
