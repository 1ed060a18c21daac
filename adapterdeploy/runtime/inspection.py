"""``inspect``: a deployment's manifest summary, tasks, sizes, parity and a checksum check of every file.

Pure Python on top of artifacts.py (no torch, no onnxruntime), so it is fast and runs anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from adapterdeploy.artifacts import MANIFEST_FILE, STAGING_PREFIX, Manifest, TaskSpec, safe_relpath, verify_deployment
from adapterdeploy.errors import ArtifactError

__all__ = ["inspect_deployment", "print_inspection"]

_SHORT = {
    "Attention": "Attn",
    "MultiHeadAttention": "MHA",
    "SkipLayerNormalization": "SkipLN",
    "LayerNormalization": "LN",
    "EmbedLayerNormalization": "EmbedLN",
}


_KINDS = {"regression": "regression", "multi_label_classification": "multi-label", "token_classification": "tagging"}


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
    tasks: list[dict[str, Any]] = []
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
                "pooling": "tokens" if spec.head.token_level else spec.head.pooling,
                "bottleneck": spec.bottleneck,
                "layers": list(spec.layers),
                "dropped_layers": spec.adapter.get("dropped_layers", []),
                "text_pair": spec.text_pair,
                "size_bytes": size,
                "parity": {k: v for k, v in spec.parity.items() if k != "samples"},
                "metrics": spec.metrics,
                "standalone": manifest.standalone.get(name, {}),
                "composition": _composition(spec.adapter),
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
        "base": manifest.base.to_dict(),
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


def _composition(adapter: dict[str, Any]) -> str | None:
    """``Fuse(a, b)`` / ``Stack(lang, task)`` for a fusion or stacked task (issue 19), None for a plain one."""
    fusion, stack_on = adapter.get("fusion"), adapter.get("stack_on")
    if isinstance(fusion, dict) and isinstance(fusion.get("adapters"), list):
        return f"Fuse({', '.join(map(str, fusion['adapters']))})"
    if isinstance(stack_on, dict) and stack_on.get("name"):
        return f"Stack({stack_on['name']}, task)"
    return None


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


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def format_sci(x: float | None) -> str:
    """A small figure such as a parity difference, in one column width ("-" when absent)."""
    return "-" if x is None else f"{x:.1e}"


def _summary_tables(info: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    fz = info["featurizer"]
    head = Table(title=f"deployment {info['path']}", show_header=False)
    head.add_row(
        "base",
        f"{info['base'].get('model_type')} {info['base'].get('path')} "
        f"({info['base'].get('num_layers')} layers, H={info['base'].get('hidden_size')})",
    )
    sig = fz["signature"]
    head.add_row(
        "featurizer",
        f"{fz['fingerprint'][:16]}…  K={fz['adapter_drop']}  adapted layers "
        f"{fz['adapted_layers']}  {sig['placement']} / {sig['activation']}",
    )
    head.add_row("tokenizer", f"{info['tokenizer']['file']} max_length={info['tokenizer']['max_length']}")
    head.add_row(
        "size",
        f"{_mb(info['sizes']['total_bytes'])} total, tasks {_mb(info['sizes']['tasks_bytes'])}"
        + (f", standalone {_mb(info['sizes']['standalone_bytes'])}" if info["sizes"]["standalone_bytes"] else ""),
    )
    checks = info["checksums"]
    head.add_row(
        "checksums",
        f"[green]ok[/green] ({checks['files_checked']} files)"
        if checks["ok"]
        else f"[red]{len(checks['problems'])} problem(s)[/red]: " + "; ".join(checks["problems"][:5]),
    )
    variants = Table(title="featurizer variants")
    for col in ("precision", "size", "fused ops (adapted)", "logits max|Δ|", "argmax", "ms: candidates (*kept)"):
        variants.add_column(col)
    for p, v in fz["variants"].items():
        ops = v["op_counts"].get("adapted", {})
        fused = ", ".join(f"{_SHORT.get(k, k)} {n}" for k, n in ops.items() if n and k not in ("MatMul", "nodes"))
        t = v.get("timings", {})
        timing = (
            " / ".join(
                f"{k}{'*' if k == t.get('chosen') else ''} {ms:.2f}" for k, ms in t.get("candidates", {}).items()
            )
            or "-"
        )
        par = v.get("parity", {})
        diff = par.get("logits_max_abs_diff")
        variants.add_row(
            p, _mb(v["size_bytes"]), fused or "none", format_sci(diff), str(par.get("argmax_agreement", "-")), timing
        )
    tasks = Table(title="tasks")
    for col in ("task", "type", "labels", "pooling", "m", "layers", "pair", "size", "fp32 logits max|Δ|"):
        tasks.add_column(col)
    for t in info["tasks"]:
        if "error" in t:
            tasks.add_row(t["name"], f"[red]{t['error']}[/red]", *[""] * 7)
            continue
        layers = t["layers"]
        contiguous = layers and layers == list(range(layers[0], layers[-1] + 1))
        span = f"{layers[0]}-{layers[-1]}" if contiguous else str(layers)
        if t["dropped_layers"]:
            span += f" (dropped {t['dropped_layers']})"
        tasks.add_row(
            t["name"],
            _KINDS.get(t["problem_type"], "classification") + (f", {t['composition']}" if t.get("composition") else ""),
            ",".join(t["labels"]),
            t["pooling"],
            str(t["bottleneck"]),
            span,
            "yes" if t["text_pair"] else "no",
            _mb(t["size_bytes"]),
            format_sci(t["parity"].get("fp32", {}).get("logits_max_abs_diff")),
        )
    out = [head, variants, tasks]
    drop_info = info.get("adapter_drop_eval", {})
    drop = drop_info.get("tasks", {})
    if drop and drop_info.get("mode") == "auto":
        out.append(_auto_drop_table(drop_info))
    elif drop:
        ev = Table(title=f"AdapterDrop K={info['adapter_drop_eval'].get('adapter_drop')} (PyTorch, --eval)")
        for col in ("task", "file", "rows", "metric", "all adapters", "without dropped", "retained"):
            ev.add_column(col)
        for name, e in drop.items():
            ev.add_row(
                name,
                e["file"],
                str(e["rows"]),
                e["metric"],
                str(e["all_adapters"]),
                str(e["without_dropped"]),
                str(e.get("retained")),
            )
        out.append(ev)
    return out


def _auto_drop_table(drop: dict[str, Any]) -> Any:
    """``--adapter-drop auto``: each task's dev score and loss at every K, the chosen K and the fan-out speed."""
    from rich.table import Table

    ks = [str(k) for k in drop.get("candidates", [])]
    speed = drop.get("fanout_speed", {})
    ms = speed.get("ms", {})
    title = (
        f"AdapterDrop auto: chose K={drop.get('chosen')} (largest K with loss <= {drop.get('max_drop')} points "
        f"for every task)"
    )
    if ms:
        title += "; fan-out CPU ms/call " + ", ".join(f"K={k}: {v}" for k, v in ms.items())
    ev = Table(title=title, caption=f"{speed.get('batch', '')}; {drop.get('loss_unit', '')}")
    ev.add_column("task")
    ev.add_column("metric")
    for k in ks:
        ev.add_column(f"K={k}" + (" *" if k == str(drop.get("chosen")) else ""))
    for name, e in drop.get("tasks", {}).items():
        ev.add_row(name, f"{e['metric']} ({e['rows']} rows)", *(str(e["scores"].get(k)) for k in ks))
        ev.add_row("", "loss (points)", *(str(e["loss_points"].get(k)) for k in ks))
    return ev


def print_inspection(info: dict[str, Any], as_json: bool) -> None:
    """Print what :func:`inspect_deployment` returned: rich tables, or JSON for scripts."""
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console

    console = Console()
    for table in _summary_tables(info):
        console.print(table)
