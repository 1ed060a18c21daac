"""CLI commands of this stage (work in progress: each command is replaced by its real implementation)."""

from __future__ import annotations

import click


@click.command("serve")
def serve() -> None:
    """(not available yet in this build)."""
    raise click.ClickException("'serve' is not implemented yet")

