"""From what the user typed (a config file or a run directory) to a config and a folder."""

from __future__ import annotations

from pathlib import Path

from balseg.config import RunConfig, apply_overrides, load_config, parse_config
from balseg.errors import ConfigError
from balseg.loop.setup import check_snapshot
from balseg.rundir import RunDir


def open_run(target: Path, overrides: list[str], run_dir: Path | None
             ) -> tuple[RunConfig, Path]:
    """A config file starts (or resumes) a run; a run directory resumes it."""
    if target.is_dir():
        rd = RunDir(target)
        if not rd.exists():
            raise ConfigError(f"{target} is a folder without {rd.config.name}: not a run"
                              " directory")
        if not overrides:
            return rd.load_config(), target
        # only what check_resumable allows (a larger budget, runtime keys) may change
        raw = apply_overrides(rd.read_config_raw(), overrides)
        keys = {item.partition("=")[0] for item in overrides}
        new = parse_config(raw, source=str(rd.config), overridden=keys)
        try:
            check_snapshot(rd.load_config(), new, rd)
        except ConfigError as err:
            raise ConfigError(f"--set cannot change the config of an existing run directory"
                              f" this way: {err}") from None
        return new, target
    cfg = load_config(target, overrides)
    return cfg, run_dir or Path("runs") / cfg.name
