"""balseg command line: one Typer app; every command group registered here, in one place.

Each group is a module with module-level command functions and a ``COMMANDS`` table
(name -> function), as nnActive's registry does: the functions can be imported, called and
tested alone, and this file stays a table of contents. Group modules import nothing heavy
at module level (torch, FastAPI, matplotlib load inside the commands), so ``balseg --help``
and the annotation server start without torch.

The one error handler (``guarded``) wraps every command: a ``BalsegError`` (the user's
input) becomes one line on stderr and its exit code; ``BalsegWarning``s become
``warning: ...`` lines; Ctrl-C becomes exit 130 with a line (commands that can be resumed
say how); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import importlib
import sys
import warnings
from collections.abc import Callable
from typing import Any

import typer

COMMAND_GROUPS = (
    "balseg.loop.cli",  # run, evaluate
    "balseg.experiments.cli",  # bench, demo
    "balseg.report.cli",  # report
    "balseg.annotate.cli",  # annotate, export, import, backup
    "balseg.predict.cli",  # predict, export-model
    "balseg.labelstudio.cli",  # sync, labelstudio-backend
)

app = typer.Typer(
    name="balseg",
    help="Pixel-level Bayesian active learning for semantic segmentation.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The CLI's error layer around one command function (signature kept for Typer)."""
    from balseg.errors import EXIT_INTERRUPTED, BalsegError, BalsegWarning

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BalsegWarning)
            try:
                return fn(*args, **kwargs)
            except BalsegError as err:
                _flush(caught)
                typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
                raise typer.Exit(err.exit_code) from None
            except KeyboardInterrupt:
                _flush(caught)
                typer.secho("interrupted (Ctrl-C)", fg=typer.colors.RED, err=True)
                raise typer.Exit(EXIT_INTERRUPTED) from None
            finally:
                _flush(caught)

    return wrapper


def _flush(caught: list[warnings.WarningMessage]) -> None:
    """Print the recorded balseg warnings as plain lines (others in Python's format).

    Others are written, not re-emitted: ``warnings.showwarning`` inside the recording
    context would append them to ``caught`` again, and this loop would never end.
    """
    from balseg.errors import BalsegWarning

    pending = list(caught)
    caught.clear()
    for w in pending:
        if issubclass(w.category, BalsegWarning):
            typer.secho(f"Warning: {w.message}", fg=typer.colors.YELLOW, err=True)
        else:
            sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename,
                                                    w.lineno))


def register(target: typer.Typer, *groups: str) -> typer.Typer:
    """Add the commands of ``groups`` (module names; default all) to ``target``."""
    for module_name in groups or COMMAND_GROUPS:
        module = importlib.import_module(module_name)
        for name, fn in module.COMMANDS.items():
            target.command(name)(guarded(fn))
    return target


_registered = False


def _register_all() -> None:
    global _registered
    if not _registered:
        register(app)
        _registered = True


def main() -> None:
    _register_all()
    app()
