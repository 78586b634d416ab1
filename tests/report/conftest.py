"""Fixtures: a session-wide set of fabricated runs and a factory for one-off runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .fabricate import (
    CYCLES,
    POOL_PIXELS,
    SEEDS,
    STRATEGIES,
    SUPERVISED_MIOU,
    add_answers,
    add_overlays,
    metrics_row,
    write_run,
)


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 strategies x 3 seeds x 4 cycles, plus one supervised run."""
    root = tmp_path_factory.mktemp("runs")
    for strategy, (selection, _) in STRATEGIES.items():
        for seed in SEEDS:
            rows = [metrics_row(strategy, seed, c) for c in CYCLES]
            write_run(root / f"{strategy}-s{seed}", strategy=strategy, seed=seed, rows=rows,
                      selection=selection)
    add_answers(root / "balentacq-s0")
    add_overlays(root / "balentacq-s0")
    sup = metrics_row("balentacq", 0, 0)
    sup.update(miou=SUPERVISED_MIOU, labeled_fraction=1.0, pixels_per_image=1024.0,
               queried_pixels=POOL_PIXELS, strategy="supervised")
    write_run(root / "supervised-s0", strategy="supervised", seed=0, rows=[sup])
    return root


@pytest.fixture(scope="session")
def run_dirs(runs_root: Path) -> list[Path]:
    return sorted(p for p in runs_root.iterdir() if p.is_dir())


@pytest.fixture
def make_run(tmp_path: Path) -> Callable[..., Path]:
    def _make(name: str = "r", **kwargs: Any) -> Path:
        kwargs.setdefault("strategy", "balentacq")
        kwargs.setdefault("seed", 0)
        kwargs.setdefault("rows", [metrics_row("balentacq", 0, c) for c in CYCLES])
        return write_run(tmp_path / name, **kwargs)

    return _make
