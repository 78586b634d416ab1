"""balseg command line: one Typer app, one subcommand per job.

Each concern registers its own commands (``register(app)``) so this file stays a table of
contents rather than a second copy of every module's options.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="balseg",
    help="Pixel-level Bayesian active learning for semantic segmentation.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _register_all() -> None:
    from balseg.annotate import cli as annotate_cli
    from balseg.loop import cli as loop_cli
    from balseg.report import cli as report_cli

    loop_cli.register(app)
    report_cli.register(app)
    annotate_cli.register(app)


def main() -> None:
    _register_all()
    app()
