"""The ``balseg report`` command."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``report`` to the main app."""

    @app.command("report")
    def report(
        run_dirs: list[Path] = typer.Argument(..., help="One or more run directories."),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Output folder (default RUN_DIR/report for one run)."
        ),
        supervised_miou: float | None = typer.Option(
            None,
            "--supervised-miou",
            help="Reference mIoU (0..1) for the '% of supervised' column; overrides any"
            " supervised run.",
        ),
    ) -> None:
        """Plots, a summary table (CSV, Markdown) and one HTML page from run directories."""
        from balseg.report.build import make_report
        from balseg.report.runs import ReportError, ReportWarning

        # Warnings (a truncated last line, a shared seed) as plain lines, not source excerpts.
        error: ReportError | None = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ReportWarning)
            try:
                index = make_report(run_dirs, out, supervised_miou=supervised_miou)
            except ReportError as err:
                error = err
        for w in caught:
            typer.echo(f"Warning: {w.message}", err=True)
        if error is not None:
            typer.echo(f"Error: {error}", err=True)
            raise typer.Exit(2) from error
        typer.echo(str(index))
