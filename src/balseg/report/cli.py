"""The ``balseg report`` command."""

from __future__ import annotations

from pathlib import Path

import typer


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
    baseline: str | None = typer.Option(
        None,
        "--baseline",
        help="Strategy every other strategy is paired with, seed by seed, per budget"
        " (mean difference, 95% paired-t interval, p, ahead in k of n); default"
        " margin+pixelpick when the runs have it, else no paired table.",
    ),
) -> None:
    """Plots, a summary table (CSV, Markdown), paired statistics against a baseline and one
    HTML page from run directories. Runs of different datasets, class lists or protocols
    are separate curves, never averaged together."""
    from balseg.report.build import make_report

    typer.echo(str(make_report(run_dirs, out, supervised_miou=supervised_miou,
                               baseline=baseline)))


COMMANDS = {"report": report}
