"""CLI commands of this stage (work in progress: each command is replaced by its real implementation)."""

from __future__ import annotations

import click


@click.command("export")
def export() -> None:
    """(not available yet in this build)."""
    raise click.ClickException("'export' is not implemented yet")


@click.command("add-task")
def add_task() -> None:
    """(not available yet in this build)."""
    raise click.ClickException("'add-task' is not implemented yet")


@click.command("remove-task")
def remove_task() -> None:
    """(not available yet in this build)."""
    raise click.ClickException("'remove-task' is not implemented yet")


@click.command("inspect")
def inspect_cmd() -> None:
    """(not available yet in this build)."""
    raise click.ClickException("'inspect' is not implemented yet")

