"""The ``adapterdeploy`` command line (click).

Each stage owns its commands (``models/commands.py``, ``exporter/commands.py``, ``runtime/commands.py``,
``serving/commands.py``); this module only assembles the group. Command modules import their heavy
dependencies (torch, onnx, onnxruntime) inside the command bodies, so ``adapterdeploy --help`` is fast
and the runtime commands never import torch. Every option can also come from the environment as
``ADAPTERDEPLOY_<COMMAND>_<OPTION>`` (click's ``auto_envvar_prefix``).
"""

from __future__ import annotations

import click

from adapterdeploy import __version__
from adapterdeploy.cli_errors import CatchingGroup, CLIError
from adapterdeploy.exporter.commands import add_task, export, export_standalone, remove_task
from adapterdeploy.models.commands import import_adapterhub, import_peft, train
from adapterdeploy.runtime.commands import check, inspect_cmd, predict
from adapterdeploy.serving.commands import serve

__all__ = ["export_adapters_main", "main"]

CONTEXT = {"auto_envvar_prefix": "ADAPTERDEPLOY", "help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(cls=CatchingGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="adapterdeploy")
@click.option(
    "--debug",
    is_flag=True,
    default=False,
    envvar="ADAPTERDEPLOY_DEBUG",
    help="Print the full traceback of an error (default: one line, exit code 2).",
)
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Deploy BERT-family encoders with per-task bottleneck adapters: one shared ONNX featurizer, many tasks.

    \b
    Data flow:  train / import-adapterhub  ->  export (add-task, remove-task, inspect)
                ->  predict / check  ->  serve
    """
    ctx.meta["adapterdeploy.debug"] = debug


@click.command(
    "bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}
)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Run the benchmarks (source checkout only): `adapterdeploy bench [--quick] ...`; see `bench --help`."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise CLIError(
            f"'adapterdeploy bench' runs the benchmarks/ package of a source checkout, and {root} has none (this is "
            "an installed copy); clone the repository, `pip install -e '.[export,adapterhub,serve,bench]'`, and run "
            "`adapterdeploy bench` or `python -m benchmarks` from it"
        )
    sys.path.insert(0, str(root))
    from benchmarks.__main__ import main as bench_main

    bench_main.main(args=ctx.args, prog_name=ctx.command_path)


for _cmd in (
    train,
    import_adapterhub,
    import_peft,
    export,
    add_task,
    remove_task,
    export_standalone,
    inspect_cmd,
    predict,
    check,
    serve,
    bench,
):
    main.add_command(_cmd)


def export_adapters_main() -> None:
    """Entry point of ``export-adapters``: the same command as ``adapterdeploy export``."""
    export.main(
        prog_name="export-adapters", auto_envvar_prefix="ADAPTERDEPLOY_EXPORT", help_option_names=["-h", "--help"]
    )


if __name__ == "__main__":
    main()
