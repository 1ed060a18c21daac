"""CLI commands of this stage (work in progress: each command is replaced by its real implementation)."""

from __future__ import annotations

import click


@click.command("train")
def train() -> None:
    """(not available yet in this build)."""
    raise click.ClickException("'train' is not implemented yet")


@click.command("import-adapterhub")
def import_adapterhub() -> None:
    """(not available yet in this build)."""
    raise click.ClickException("'import-adapterhub' is not implemented yet")

