"""``python -m benchmarks [--quick] [options]``: run the benchmarks, write report.md + results.json + plots.

--quick runs the tiny random model with few repeats (seconds; CI). The full run measures the embedded
MiniLM and a BERT-base-shaped random model; run it on a quiet machine, since other processes' load
shows up in every absolute number (the report states how busy the machine was).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from benchmarks.settings import SECTIONS, full_settings, quick_settings

__all__ = ["main"]


def _csv(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def _ints(value: str | None) -> tuple[int, ...] | None:
    try:
        return tuple(int(v) for v in _csv(value) or ()) or None
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of integers", param_hint="--fanout-k"
        ) from None


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--quick",
    is_flag=True,
    help="Tiny random model, few repeats: checks the harness works (CI), not how fast anything is.",
)
@click.option(
    "--models",
    default=None,
    help="Comma-separated: tiny, minilm, bertbase (default: minilm,bertbase; "
    "--quick: tiny). BERT-base is the slow part of a full run.",
)
@click.option(
    "--sections",
    "--section",
    "sections",
    default=None,
    help=f"Comma-separated subset of: {', '.join(SECTIONS)} (default: all; --quick leaves out composition).",
)
@click.option(
    "--threads",
    type=int,
    default=None,
    help="Threads per system (default 2 = this machine's cores). "
    "Fixed for every system so that none wins by using more cores.",
)
@click.option(
    "--rounds",
    type=int,
    default=None,
    help="Interleaved rounds per case (default 7; quick 3). More "
    "rounds = tighter medians on a noisy machine, linearly longer.",
)
@click.option("--block-s", type=float, default=None, help="Target seconds per system per round (default 0.4).")
@click.option(
    "--fanout-k",
    default=None,
    help="Comma-separated AdapterDrop K values for the fanout section (default: every K; --quick: 0,2). "
    "One export per K: '--sections fanout --fanout-k 3' measures the K = 3 fan-out and the Parallel comparison.",
)
@click.option("--no-compile", is_flag=True, help="Leave torch.compile out (its compilation takes minutes on 2 cores).")
@click.option(
    "--ckpt-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Real trained task checkpoints (sst2, mrpc, rte, cola) for the accuracy sections (default /work/ckpts).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Report folder (default benchmarks/results/<machine>-<date>, quick runs prefixed quick-).",
)
@click.option(
    "--work",
    type=click.Path(path_type=Path),
    default=None,
    help="Cache of built models, exports and deployments (default benchmarks/.work); reused between runs.",
)
@click.option(
    "--prepare-only",
    is_flag=True,
    help="Only build the models, exports and deployments into --work (minutes for a full run), so that "
    "the measured run that follows does not include them.",
)
def main(
    quick: bool,
    models: str | None,
    sections: str | None,
    threads: int | None,
    rounds: int | None,
    block_s: float | None,
    fanout_k: str | None,
    no_compile: bool,
    ckpt_dir: Path | None,
    out: Path | None,
    work: Path | None,
    prepare_only: bool,
) -> None:
    """Run the adapterdeploy benchmarks and write a markdown report, raw JSON and PNG plots."""
    from benchmarks.runner import prepare_everything, run_benchmarks

    chosen = _csv(sections)
    unknown = sorted(set(chosen or ()) - set(SECTIONS))
    if unknown:
        raise click.BadParameter(
            f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}", param_hint="--sections"
        )
    make = quick_settings if quick else full_settings
    settings = make(
        models=_csv(models),
        sections=chosen,
        threads=threads,
        rounds=rounds,
        block_s=block_s,
        fanout_k=_ints(fanout_k),
        compile=False if no_compile else None,
        ckpt_dir=ckpt_dir,
    )
    args = sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]
    prog = click.get_current_context().command_path
    if prepare_only:
        prepare_everything(settings, work)
        return
    command = (
        ("python -m benchmarks" if prog in ("bench", "__main__.py") else prog)
        + " "
        + " ".join(shlex.quote(a) for a in args)
    )
    outcome = run_benchmarks(settings, out=out, work=work, command=command.strip())
    click.echo(f"report: {outcome.report}")
    if outcome.errors:
        raise click.ClickException("sections failed: " + "; ".join(f"{k}: {v}" for k, v in outcome.errors.items()))


if __name__ == "__main__":
    main()
