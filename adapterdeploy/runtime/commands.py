"""``adapterdeploy predict`` and ``adapterdeploy check``: the runtime from the command line (no torch).

onnxruntime and the runtime are imported inside the command bodies so that ``adapterdeploy --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import click

from adapterdeploy.cli_errors import cli_error
from adapterdeploy.errors import AdapterDeployError
from adapterdeploy.runtime.inputs import MAX_CHARS_PER_TEXT
from adapterdeploy.runtime.options import RuntimeOptions, runtime_options

__all__ = ["check", "inspect_cmd", "predict"]


def _chunks(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def _short(row: Any, width: int = 60) -> str:
    text = row if isinstance(row, str) else f"{row[0]} ||| {row[1]}"
    return text if len(text) <= width else text[: width - 1] + "…"


class _Writer:
    """Writes predictions as a table, one JSON array, or JSON lines; JSON streams as rows arrive."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.first = True
        self.table_rows: list[tuple[str, ...]] = []

    def add(self, index: int, row: Any, pred: Any) -> None:
        obj = {"row": index, **pred.to_dict()}
        if self.fmt == "jsonl":
            click.echo(json.dumps(obj))
        elif self.fmt == "json":
            click.echo(("[\n  " if self.first else ",\n  ") + json.dumps(obj), nl=False)
        else:
            label = f"{pred.value:.4f}" if pred.value is not None else pred.label
            if pred.labels is not None:  # multi-label: every label that is on
                label = ",".join(pred.labels) or "(none)"
            if pred.tokens is not None:  # tagging: word/LABEL per word, entities when --spans
                label = " ".join(f"{w.word}/{w.label}" for w in pred.tokens)
                if pred.entities is not None:
                    label += "\n" + "; ".join(f"[{e.word}]{e.label}" for e in pred.entities)
            score = "" if pred.value is not None else f"{pred.score:.4f}"
            self.table_rows.append(
                (str(index), pred.task, _short(row), str(label), score, "yes" if pred.truncated else "")
            )
        self.first = False

    def close(self) -> None:
        if self.fmt == "json":
            click.echo("[]" if self.first else "\n]")
        elif self.fmt == "table":
            from rich.console import Console
            from rich.table import Table

            table = Table("row", "task", "input", "label / value", "score", "truncated")
            for r in self.table_rows:
                table.add_row(*r)
            Console().print(table)


@click.command("predict")
@click.argument("deploy_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("texts", nargs=-1)
@click.option("--task", "task", default=None, help="Task to run (default: the only task, when there is one).")
@click.option(
    "--tasks",
    "tasks",
    default=None,
    help="Comma-separated tasks to fan every input out to (the shared trunk runs once per text).",
)
@click.option(
    "--pair",
    "pairs",
    nargs=2,
    multiple=True,
    metavar="TEXT_A TEXT_B",
    help="A text pair for pair tasks (paraphrase, entailment); repeat for more.",
)
@click.option(
    "--input",
    "input_file",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    default=None,
    help="Read inputs from a file ('-' = stdin): .txt one text per line, .tsv/.csv with a text (and "
    "text_b) column, .jsonl strings / [a, b] / objects. Streams in batches: any size works.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "jsonl"]),
    default="table",
    show_default=True,
    help="table for people; json = one array of objects (row, task, label, score, probabilities, value, "
    "truncated; a tagging task's rows add tokens: word, start, end, label, score); jsonl = one object per "
    "line, best for large files and pipes.",
)
@click.option(
    "--spans",
    is_flag=True,
    default=False,
    help="Tagging tasks: also merge the words' BIO / IOB tags into entities (word, start, end, label, score), "
    "as transformers' token-classification pipeline aggregates.",
)
@click.option(
    "--strict",
    is_flag=True,
    default=False,
    help="Refuse inputs longer than the deployment's max_length instead of truncating them.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Rows per forward pass: larger is faster per row on CPU, costs more memory.",
)
@click.option(
    "--max-chars-per-text",
    type=click.IntRange(min=1),
    default=MAX_CHARS_PER_TEXT,
    show_default=True,
    help="Longest --input line accepted (characters; the server's limit per text). A longer line is an "
    "error after reading only this much, so memory stays bounded; raise it for long documents.",
)
@runtime_options
def predict(
    deploy_dir: str,
    texts: tuple[str, ...],
    task: str | None,
    tasks: str | None,
    pairs: tuple[tuple[str, str], ...],
    input_file: str | None,
    fmt: str,
    spans: bool,
    strict: bool,
    batch_size: int,
    max_chars_per_text: int,
    **runtime: Any,
) -> None:
    """Predict with one task (--task) or fan out to several (--tasks) on TEXT arguments, --pair or --input."""
    from adapterdeploy.runtime import Deployment

    if task and tasks:
        raise click.UsageError("pass --task NAME or --tasks A,B,C, not both")
    if not (texts or pairs or input_file):
        raise click.UsageError("give inputs: TEXT arguments, --pair TEXT_A TEXT_B, or --input FILE")
    try:
        options = RuntimeOptions.from_cli(runtime).with_changes(batch_size=batch_size)
        with Deployment.open(deploy_dir, options) as dep:
            names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
            if not names and task is None:
                if len(dep.task_names) != 1:
                    raise click.UsageError(
                        f"this deployment has {len(dep.task_names)} tasks "
                        f"({', '.join(dep.task_names)}); choose one with --task"
                    )
                task = dep.task_names[0]
            writer = _Writer(fmt)
            _predict_stream(
                dep,
                _rows(texts, pairs, input_file, max_chars_per_text),
                task,
                names,
                strict,
                writer,
                spans,
                batch_size * 4,
                input_file,
            )
            writer.close()
    except AdapterDeployError as exc:
        raise cli_error(exc) from exc


def _rows(
    texts: tuple[str, ...], pairs: tuple[tuple[str, str], ...], input_file: str | None, max_chars: int
) -> Iterator[tuple[Any, int]]:
    yield from ((t, 0) for t in texts)
    yield from (((a, b), 0) for a, b in pairs)
    if input_file:
        from adapterdeploy.runtime.inputs import iter_inputs

        if input_file == "-":
            yield from iter_inputs(sys.stdin, "stdin.txt", max_chars)
        else:
            with open(input_file, encoding="utf-8") as f:
                yield from iter_inputs(f, input_file, max_chars)


def _predict_stream(
    dep: Any,
    rows: Iterator[tuple[Any, int]],
    task: str | None,
    names: list[str] | None,
    strict: bool,
    writer: _Writer,
    spans: bool,
    chunk: int,
    input_file: str | None,
) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    size = Path(input_file).stat().st_size if input_file and input_file != "-" else None
    progress = Progress(
        "predicting",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        transient=True,
        disable=size is None or not sys.stderr.isatty(),
    )
    index = 0
    with progress:
        bar = progress.add_task("rows", total=size)
        for batch in _chunks(rows, chunk):
            inputs = [r for r, _ in batch]
            if names:
                fanned = dep.fan_out(inputs, tasks=names, strict=strict, spans=spans)
                for i, row in enumerate(inputs):
                    for name in names:
                        writer.add(index + i, row, fanned[name][i])
            else:
                for i, (row, pred) in enumerate(
                    zip(inputs, dep.predict(inputs, task=task, strict=strict, spans=spans), strict=True)
                ):
                    writer.add(index + i, row, pred)
            index += len(inputs)
            progress.update(bar, completed=batch[-1][1])


@click.command("check")
@click.argument("deploy_dir", type=click.Path(file_okay=False))
@click.option(
    "--eval",
    "eval_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Labelled rows (.tsv/.csv/.jsonl as for training) to measure accuracy on; needs --task. Fails "
    "when the main metric is more than --max-accuracy-drop below the figure stored at export.",
)
@click.option("--task", "eval_task", default=None, help="The task --eval scores.")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print the results as one JSON object.")
@click.option(
    "--tolerance",
    type=float,
    default=1e-4,
    show_default=True,
    help="Largest allowed difference of probabilities (or regression values) in the parity item.",
)
@click.option(
    "--max-latency-ms",
    type=float,
    default=None,
    help="Fail when the batch-1 median latency is above this (default: report only).",
)
@click.option(
    "--max-rss-mb",
    type=float,
    default=None,
    help="Fail when the process RSS with every task loaded is above this (default: report only).",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=0.02,
    show_default=True,
    help="Allowed drop of the --eval main metric below the figure stored at export.",
)
@click.option(
    "--reps",
    type=click.IntRange(min=3),
    default=20,
    show_default=True,
    help="Timed repetitions for the latency medians (more is steadier, slower).",
)
@runtime_options
def check(
    deploy_dir: str,
    eval_file: str | None,
    eval_task: str | None,
    as_json: bool,
    tolerance: float,
    max_latency_ms: float | None,
    max_rss_mb: float | None,
    max_accuracy_drop: float,
    reps: int,
    **runtime: Any,
) -> None:
    """Production checklist: checksums, task loads, parity, latency, memory (and accuracy with --eval).

    Exits non-zero when any item fails.
    """
    from adapterdeploy.runtime.check import run_checklist

    if eval_file and not eval_task:
        raise click.UsageError("--eval needs --task NAME (the task whose accuracy to measure)")
    try:
        items = run_checklist(
            deploy_dir,
            RuntimeOptions.from_cli(runtime),
            eval_file=eval_file,
            eval_task=eval_task,
            tolerance=tolerance,
            max_latency_ms=max_latency_ms,
            max_rss_mb=max_rss_mb,
            max_accuracy_drop=max_accuracy_drop,
            reps=reps,
        )
    except AdapterDeployError as exc:
        raise cli_error(exc) from exc
    ok = all(i.status != "fail" for i in items)
    if as_json:
        from adapterdeploy.metrics import json_safe

        click.echo(
            json.dumps(
                json_safe({"ok": ok, "deployment": str(deploy_dir), "items": [i.to_dict() for i in items]}), indent=2
            )
        )
    else:
        from rich.console import Console
        from rich.table import Table

        colors = {"pass": "green", "fail": "bold red", "info": "cyan", "skip": "yellow"}
        table = Table("item", "status", "detail", title=f"adapterdeploy check {deploy_dir}")
        for i in items:
            table.add_row(i.name, f"[{colors[i.status]}]{i.status.upper()}[/]", i.detail)
        console = Console()
        console.print(table)
        console.print("[green]all checks passed[/]" if ok else "[bold red]some checks FAILED[/]")
    if not ok:
        sys.exit(1)


@click.command("inspect")
@click.argument("deploy_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON (for scripts and CI).")
def inspect_cmd(deploy_dir: str, as_json: bool) -> None:
    """Show a deployment: manifest summary, tasks, sizes, parity; verify every file's sha256.

    Exits with status 1 when a file is missing, truncated or modified.
    """
    from adapterdeploy.runtime.inspection import inspect_deployment, print_inspection

    try:
        info = inspect_deployment(deploy_dir)
    except AdapterDeployError as exc:
        raise cli_error(exc) from exc
    print_inspection(info, as_json)
    if info["leftovers"] and not as_json:
        click.echo(
            f"note: interrupted runs left {len(info['leftovers'])} hidden temp dir(s) beside the deployment, "
            f"safe to delete: {', '.join(info['leftovers'])}",
            err=True,
        )
    if not info["checksums"]["ok"]:
        click.echo(f"checksum verification failed: {'; '.join(info['checksums']['problems'])}", err=True)
        sys.exit(1)
