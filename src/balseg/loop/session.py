"""From what the user typed (a config file or a run directory) to a config and a folder."""

from __future__ import annotations

from pathlib import Path

from balseg.config import RunConfig, load_config
from balseg.errors import ConfigError
from balseg.rundir import RunDir


def open_run(target: Path, overrides: list[str], run_dir: Path | None
             ) -> tuple[RunConfig, Path]:
    """A config file starts (or resumes) a run; a run directory resumes it."""
    if target.is_dir():
        rd = RunDir(target)
        if not rd.exists():
            raise ConfigError(f"{target} is a folder without {rd.config.name}: not a run"
                              " directory")
        if overrides:
            raise ConfigError("--set cannot change the config of an existing run directory")
        return rd.load_config(), target
    cfg = load_config(target, overrides)
    return cfg, run_dir or Path("runs") / cfg.name
