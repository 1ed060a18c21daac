"""CLI of the exporter: ``export`` (= ``export-adapters``), ``add-task``, ``remove-task``, ``inspect``.

Heavy imports (torch, onnx, onnxruntime) happen inside the command bodies; ``inspect`` needs none of them.
Errors of the package's hierarchy become one-line messages (``error_type: message``) and exit status 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from adapterdeploy.cli_errors import cli_error
from adapterdeploy.errors import AdapterDeployError

__all__ = ["add_task", "export", "export_standalone", "inspect_cmd", "remove_task"]

PRECISION_CHOICES = ("fp32", "int8", "fp16")
LOCK_TIMEOUT = click.option(
    "--lock-timeout",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds to wait while another export --force / add-task / remove-task changes the same deployment "
    "(they take turns through a lock file beside it); 0 fails at once naming the holder, -1 waits forever.",
)
_SHORT = {
    "Attention": "Attn",
    "MultiHeadAttention": "MHA",
    "SkipLayerNormalization": "SkipLN",
    "LayerNormalization": "LN",
    "EmbedLayerNormalization": "EmbedLN",
}


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except AdapterDeployError as exc:
        raise cli_error(exc) from exc


def _logger(quiet: bool):
    if quiet:
        return lambda _m: None
    from rich.console import Console

    console = Console(stderr=True)
    return lambda m: console.print(f"[dim]·[/dim] {m}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _sci(x: float | None) -> str:
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
            p, _mb(v["size_bytes"]), fused or "none", _sci(diff), str(par.get("argmax_agreement", "-")), timing
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
            "regression" if t["problem_type"] == "regression" else "classification",
            ",".join(t["labels"]),
            t["pooling"],
            str(t["bottleneck"]),
            span,
            "yes" if t["text_pair"] else "no",
            _mb(t["size_bytes"]),
            _sci(t["parity"].get("fp32", {}).get("logits_max_abs_diff")),
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


def _print_info(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console

    console = Console()
    for table in _summary_tables(info):
        console.print(table)


class AdapterDropParam(click.ParamType):
    """``--adapter-drop``: a layer count K >= 0, or ``auto``."""

    name = "K|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) or str(value).strip().lower() == "auto":
            return value if isinstance(value, int) else "auto"
        try:
            k = int(str(value))
        except ValueError:
            k = -1
        if k < 0:
            self.fail(f"{value!r} is not a layer count >= 0 nor 'auto'", param, ctx)
        return k


@click.command("export")
@click.option(
    "--base",
    "base_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Local BERT-family model directory the tasks were trained on. Default: the embedded all-MiniLM-L6-v2.",
)
@click.option(
    "--task",
    "tasks",
    multiple=True,
    required=True,
    type=click.Path(file_okay=False),
    help="Task checkpoint directory (repeatable). All tasks must share one adapter signature (placement, "
    "activation, site options, per-task LayerNorms); bottleneck sizes may differ.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Deployment directory to write (atomically: it appears complete or not at all).",
)
@click.option(
    "--adapter-drop",
    "adapter_drop",
    type=AdapterDropParam(),
    default="0",
    show_default=True,
    help="AdapterDrop K: layers [0, K) run once per text without adapters (shared by every task of a "
    "fan-out); faster, at some accuracy cost for tasks trained with adapters there (see --allow-drop). "
    "'auto': score every task's --eval file at every K and take the largest K within --max-drop "
    "(costs L evaluation passes per task; the table and the measured fan-out speed go in the "
    "manifest).",
)
@click.option(
    "--max-drop",
    "max_drop",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="With --adapter-drop auto: the largest dev-metric loss accepted for any task, in points "
    "(accuracy: percentage points; regression: percent more mean abs error). Larger: a larger K, "
    "faster fan-out, less accurate.",
)
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice(PRECISION_CHOICES),
    default=("fp32",),
    show_default=True,
    help="Featurizer variants to write (repeatable). fp32 is always written (the reference). int8 "
    "(dynamic) was 4x smaller and took ~2.2x less CPU per call on MiniLM, at some accuracy cost; "
    "fp16 is for GPU providers.",
)
@click.option(
    "--max-length",
    type=click.IntRange(min=2),
    default=None,
    help="Longest input in tokens. Default: the largest max_length of the tasks, capped by the base.",
)
@click.option(
    "--opset",
    type=click.IntRange(14, 20),
    default=17,
    show_default=True,
    help="ONNX opset; 17 has a single LayerNormalization op and is what the fusions are tuned for.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0, min_open=True),
    default=1e-4,
    show_default=True,
    help="Max abs difference of fp32 outputs vs PyTorch; the export is refused beyond it.",
)
@click.option(
    "--standalone",
    is_flag=True,
    help="Also write standalone/<task>/, a Hugging Face model folder per task (config.json, tokenizer files, "
    "onnx/model.onnx and, with int8, onnx/model_quantized.onnx; adapters and head baked in) for "
    "optimum, transformers.js, onnxruntime-web; each is as large as the base model.",
)
@click.option("--force", is_flag=True, help="Replace an existing deployment at --out (swapped in only when complete).")
@click.option(
    "--allow-drop",
    is_flag=True,
    help="Deploy tasks trained with adapters below --adapter-drop without those adapters (measure the "
    "cost with --eval).",
)
@click.option(
    "--eval",
    "eval_files",
    multiple=True,
    help="Labelled TSV/CSV/JSONL rows to score each task with and without its dropped adapters: FILE "
    "(the only task, or the task named like the file's folder) or NAME=FILE; repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the deployment summary as JSON.")
@LOCK_TIMEOUT
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
def export(
    base_dir: str | None,
    tasks: tuple[str, ...],
    out_dir: str,
    adapter_drop: int | str,
    max_drop: float,
    precisions: tuple[str, ...],
    max_length: int | None,
    opset: int,
    tolerance: float,
    standalone: bool,
    force: bool,
    allow_drop: bool,
    eval_files: tuple[str, ...],
    as_json: bool,
    lock_timeout: float,
    quiet: bool,
) -> None:
    """Export task checkpoints into one deployment: a shared ONNX featurizer + small per-task pieces.

    \b
    Every export checks the ONNX graphs against PyTorch (several tasks in one mixed batch, padded and
    unpadded rows, single texts and pairs, a row at max length) before anything is written.
    """
    with _errors():
        from adapterdeploy.exporter.deployment import export_deployment
        from adapterdeploy.exporter.report import inspect_deployment

        export_deployment(
            base_dir,
            list(tasks),
            out_dir,
            adapter_drop=adapter_drop,
            max_drop=max_drop,
            precisions=precisions,
            max_length=max_length,
            opset=opset,
            tolerance=tolerance,
            standalone=standalone,
            force=force,
            allow_drop=allow_drop,
            eval_file=list(eval_files) or None,
            lock_timeout=lock_timeout,
            log=_logger(quiet or as_json),
        )
        _print_info(inspect_deployment(out_dir), as_json)


@click.command("add-task")
@click.argument("deploy_dir", type=click.Path(file_okay=False))
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--base",
    "base_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="The base model directory, when it moved since the export (its fingerprint must match).",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Max abs difference vs PyTorch. Default: the deployment's.",
)
@click.option("--replace", is_flag=True, help="Replace tasks of the same names.")
@click.option("--allow-drop", is_flag=True, help="Accept losing the tasks' adapters below the deployment's K.")
@LOCK_TIMEOUT
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
def add_task(
    deploy_dir: str,
    checkpoints: tuple[str, ...],
    base_dir: str | None,
    tolerance: float | None,
    replace: bool,
    allow_drop: bool,
    lock_timeout: float,
    quiet: bool,
) -> None:
    """Add task checkpoints to a deployment against its existing featurizer (no re-export, parity-checked).

    \b
    Several checkpoints in one call share one PyTorch start, one base load, one parity run and one manifest
    swap: much faster than one call each. Writers of one deployment take turns (a lock beside it).
    """
    with _errors():
        from adapterdeploy.exporter.updates import add_tasks

        specs = add_tasks(
            deploy_dir,
            list(checkpoints),
            base_dir=base_dir,
            tolerance=tolerance,
            replace=replace,
            allow_drop=allow_drop,
            lock_timeout=lock_timeout,
            log=_logger(quiet),
        )
        for spec in specs:
            fig = spec.parity.get("fp32", {})
            click.echo(
                f"added task {spec.name!r} to {deploy_dir} (bottleneck {spec.bottleneck}, layers "
                f"{list(spec.layers)}; fp32 logits max abs diff {fig.get('logits_max_abs_diff')})"
            )


@click.command("remove-task")
@click.argument("deploy_dir", type=click.Path(file_okay=False))
@click.argument("name")
@LOCK_TIMEOUT
def remove_task(deploy_dir: str, name: str, lock_timeout: float) -> None:
    """Remove a task's pieces from a deployment and rewrite its manifest (atomic)."""
    with _errors():
        from adapterdeploy.exporter.updates import remove_task as do_remove

        manifest = do_remove(deploy_dir, name, lock_timeout=lock_timeout)
        click.echo(f"removed task {name!r}; {len(manifest.tasks)} task(s) left: {', '.join(sorted(manifest.tasks))}")


@click.command("inspect")
@click.argument("deploy_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON (for scripts and CI).")
def inspect_cmd(deploy_dir: str, as_json: bool) -> None:
    """Show a deployment: manifest summary, tasks, sizes, parity; verify every file's sha256.

    Exits with status 1 when a file is missing, truncated or modified.
    """
    with _errors():
        from adapterdeploy.exporter.report import inspect_deployment

        info = inspect_deployment(deploy_dir)
    _print_info(info, as_json)
    if info["leftovers"] and not as_json:
        click.echo(
            f"note: interrupted runs left {len(info['leftovers'])} hidden temp dir(s) beside the deployment, "
            f"safe to delete: {', '.join(info['leftovers'])}",
            err=True,
        )
    if not info["checksums"]["ok"]:
        click.echo(f"checksum verification failed: {'; '.join(info['checksums']['problems'])}", err=True)
        sys.exit(1)


@click.command("export-standalone")
@click.argument("deploy_dir", type=click.Path(file_okay=False))
@click.option("--task", "task", required=True, help="The task to write out.")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="The model folder to write (Hugging Face layout: config.json, tokenizer files, onnx/model.onnx, "
    "onnx/model_quantized.onnx).",
)
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    type=click.Choice(("fp32", "int8")),
    default=("fp32", "int8"),
    show_default=True,
    help="Graphs to write (repeatable).",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Max abs difference vs the deployment (fp32). Default: the deployment's.",
)
@click.option("--force", is_flag=True, help="Replace an existing folder at --out (swapped in only when complete).")
@click.option("--json", "as_json", is_flag=True, help="Print the result (files, parity) as JSON.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
def export_standalone(
    deploy_dir: str,
    task: str,
    out_dir: str,
    precisions: tuple[str, ...],
    tolerance: float | None,
    force: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Write one task of an existing deployment as a standalone model folder (no torch, no re-export).

    \b
    The graph is assembled from the deployment's own fp32 graphs and the task's weights, checked against
    the PyTorch logits stored at export and against Deployment.predict, and loads unchanged in optimum,
    transformers.js, onnxruntime-node / -web and plain onnxruntime + tokenizers.
    """
    with _errors():
        from adapterdeploy.exporter.compose import export_standalone_folder

        result = export_standalone_folder(
            deploy_dir,
            task,
            out_dir,
            force=force,
            precisions=precisions,
            tolerance=tolerance,
            log=_logger(quiet or as_json),
        )
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    fp32 = result["parity"].get("fp32", {})
    click.echo(
        f"wrote {result['folder']} ({', '.join(result['files'])}); fp32 vs Deployment.predict: max abs "
        f"probability diff {_sci(fp32.get('runtime_probabilities_max_abs_diff'))}, vs PyTorch logits "
        f"{_sci(fp32.get('pytorch_logits_max_abs_diff'))}; ONNX op domains {', '.join(result['op_domains'])}"
    )
