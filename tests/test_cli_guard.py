"""The CLI's error layer (``balseg.cli.guarded``) with warnings that are not balseg's."""

from __future__ import annotations

import warnings

import pytest
import typer
from typer.testing import CliRunner

from balseg.cli import guarded
from balseg.errors import BalsegWarning


@pytest.mark.timeout(30)
def test_a_library_warning_is_printed_once_and_the_command_ends():
    # _flush used to re-emit such warnings inside the recording context, which appended
    # them to the list it was emptying: the command never returned (balseg export-model).
    def command() -> None:
        warnings.warn("library says so", FutureWarning, stacklevel=1)
        warnings.warn("balseg says so", BalsegWarning, stacklevel=1)
        typer.echo("done")

    app = typer.Typer()
    app.command()(guarded(command))
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 0, result.output
    assert result.output.count("FutureWarning: library says so") == 1
    assert "Warning: balseg says so" in result.output and "done" in result.output
