"""`balseg bench`: one base config, many strategies x seeds, each a resumable run.

A strategy is written ``name[+pixelpick][+compat]``: ``margin+pixelpick`` is PixelPick's
method (margin, top 5% then uniform), ``balentacq+compat`` reproduces the reference code's
log-beta floor. ``supervised`` trains once on every pool pixel as the reference.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from balseg.loop.config import ConfigError, RunConfig, parse_config
from balseg.loop.runner import ActiveLearningLoop

DEFAULT_STRATEGIES = ("random", "entropy", "margin+pixelpick", "bald", "balentacq",
                      "balentacq+compat", "supervised")


def strategy_overrides(spec: str) -> dict[str, Any]:
    name, *flags = spec.split("+")
    acq: dict[str, Any] = {"strategy": name}
    for flag in flags:
        if flag == "pixelpick":
            acq["selection"] = "pixelpick"
        elif flag == "compat":
            if not name.startswith("balent"):
                raise ConfigError(f"strategy {spec!r}: +compat applies to balent/balentacq only")
            acq["official_compat"] = True
        else:
            raise ConfigError(f"strategy {spec!r}: unknown flag {flag!r} (pixelpick, compat)")
    return acq


def bench_configs(base: RunConfig, strategies: Sequence[str], seeds: Sequence[int]
                  ) -> list[tuple[str, RunConfig]]:
    """(run subfolder, config) for every strategy x seed, seed by seed (so that a partial
    bench covers every strategy); the supervised reference runs with the first seed only."""
    out = []
    for seed in seeds:
        for spec in strategies:
            if spec == "supervised" and seed != seeds[0]:
                continue
            raw = copy.deepcopy(base.model_dump(mode="json"))
            raw["acquisition"].update(strategy_overrides(spec))
            raw["seed"] = seed
            raw["name"] = f"{base.name}-{spec}-s{seed}"
            out.append((f"{spec}/seed{seed}", parse_config(raw, source=f"bench {spec}")))
    return out


def run_bench(base: RunConfig, out_dir: Path, strategies: Sequence[str], seeds: Sequence[int],
              *, progress: bool = True) -> list[Path]:
    """Run (or resume) every run in turn; finished runs cost nothing on a second call."""
    dirs = []
    for sub, cfg in bench_configs(base, strategies, seeds):
        loop = ActiveLearningLoop(cfg, out_dir / sub, progress=progress)
        loop.run()
        dirs.append(loop.run_dir)
    return dirs
