"""CLI commands of the annotation app (filled in by the annotate work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this concern's subcommands to the main app."""
