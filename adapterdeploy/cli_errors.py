"""How the command line reports errors: one line, exit code 2, a traceback only when asked for.

Every command's failure (a typed :class:`~adapterdeploy.errors.AdapterDeployError`, or anything unexpected,
e.g. a ``TypeError`` from a hand-edited file) is printed as one ``Error: ...`` line and exits with code 2,
the code click uses for usage errors; ``check`` exits 1 when a checklist item fails and ``inspect`` when
the checksums do not verify (they ran; the deployment did not pass). ``--debug`` (or
``ADAPTERDEPLOY_DEBUG=1``) re-raises the original exception so its traceback is printed.
"""

from __future__ import annotations

import click

from adapterdeploy.errors import AdapterDeployError

__all__ = ["EXIT_ERROR", "CLIError", "CatchingGroup", "cli_error"]

EXIT_ERROR = 2
DEBUG_HINT = "run with --debug (or ADAPTERDEPLOY_DEBUG=1) for the traceback"


class CLIError(click.ClickException):
    """A one-line error with exit code 2."""

    exit_code = EXIT_ERROR


def cli_error(exc: BaseException) -> CLIError:
    """The one-line form of ``exc``: ``error_type: message`` for our errors, ``Type: message`` otherwise."""
    if isinstance(exc, AdapterDeployError):
        return CLIError(f"{exc.error_type}: {exc}")
    text = " ".join(str(exc).split()) or "(no message)"
    return CLIError(f"{type(exc).__name__}: {text[:2000]} ({DEBUG_HINT})")


class CatchingGroup(click.Group):
    """A click group that turns any exception of a subcommand into :func:`cli_error` unless debugging."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except CLIError as exc:
            if ctx.meta.get("adapterdeploy.debug") and exc.__cause__ is not None:
                raise exc.__cause__ from None
            raise
        except click.ClickException:
            raise
        except Exception as exc:
            if ctx.meta.get("adapterdeploy.debug"):
                raise
            raise cli_error(exc) from exc
