"""CLI of the exporter: ``export`` (= ``export-adapters``), ``add-task``, ``remove-task``, ``export-standalone``.

Heavy imports (torch, onnx, onnxruntime) happen inside the command bodies.
Errors of the package's hierarchy become one-line messages (``error_type: message``) and exit status 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from adapterdeploy.cli_errors import cli_error
from adapterdeploy.errors import AdapterDeployError

__all__ = ["add_task", "export", "export_standalone", "remove_task"]

PRECISION_CHOICES = ("fp32", "int8", "fp16")
LOCK_TIMEOUT = click.option(
    "--lock-timeout",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds to wait while another export --force / add-task / remove-task changes the same deployment "
    "(they take turns through a lock file beside it); 0 fails at once naming the holder, -1 waits forever.",
)


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
        from adapterdeploy.runtime.inspection import inspect_deployment, print_inspection

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
        print_inspection(inspect_deployment(out_dir), as_json)


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
    from adapterdeploy.runtime.inspection import format_sci

    fp32 = result["parity"].get("fp32", {})
    click.echo(
        f"wrote {result['folder']} ({', '.join(result['files'])}); fp32 vs Deployment.predict: max abs "
        f"probability diff {format_sci(fp32.get('runtime_probabilities_max_abs_diff'))}, vs PyTorch logits "
        f"{format_sci(fp32.get('pytorch_logits_max_abs_diff'))}; ONNX op domains {', '.join(result['op_domains'])}"
    )
