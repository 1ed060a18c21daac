"""CLI commands of this stage (work in progress: each command is replaced by its real implementation)."""

from __future__ import annotations

import click


@click.command("predict")
def predict() -> None:
    """(not available yet in this build)."""
    raise click.ClickException("'predict' is not implemented yet")


@click.command("check")
def check() -> None:
    """(not available yet in this build)."""
    raise click.ClickException("'check' is not implemented yet")

