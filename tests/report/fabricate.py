"""Fabricated run directories with known numbers, following docs/architecture.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.image import imsave

from balseg.labels import LabelStore

CLASSES = ["road", "car", "sky"]
PALETTE = [[128, 64, 128], [0, 0, 142], [70, 130, 180]]
POOL_IMAGES = 20
POOL_PIXELS = POOL_IMAGES * 32 * 32
# strategy name -> (selection, base mIoU); a run's mIoU is base + 0.05 * cycle + 0.01 * seed.
STRATEGIES = {"balentacq": ("topk", 0.40), "random": ("pixelpick", 0.30)}
SEEDS = (0, 1, 2)
CYCLES = (0, 1, 2, 3)
SUPERVISED_MIOU = 0.80


def miou_of(strategy: str, seed: int, cycle: int) -> float:
    return STRATEGIES[strategy][1] + 0.05 * cycle + 0.01 * seed


def ppi_of(cycle: int) -> float:
    return 10.0 * (cycle + 1)


def metrics_row(strategy: str, seed: int, cycle: int, split: str = "val") -> dict[str, Any]:
    miou = miou_of(strategy, seed, cycle)
    queried = int(ppi_of(cycle) * POOL_IMAGES)
    return {
        "cycle": cycle, "split": split, "queried_pixels": queried,
        "labeled_pixels": queried - 3, "pixels_per_image": ppi_of(cycle),
        "labeled_fraction": queried / POOL_PIXELS, "miou": miou,
        "per_class_iou": [miou + 0.1, None, miou - 0.1],
        "train_time_s": 5.0, "score_time_s": 1.0, "wall_time_s": 100.0 * (cycle + 1) + seed,
        "strategy": strategy, "seed": seed,
    }


def write_run(
    run_dir: Path,
    *,
    strategy: str,
    seed: int,
    rows: list[dict[str, Any]],
    selection: str = "topk",
    official_compat: bool = False,
    config: dict[str, Any] | None = None,
    dataset: str = "synthetic",
    class_names: list[str] | None = None,
) -> Path:
    """A run directory; ``config`` is merged into the config snapshot section by section
    (e.g. ``{"model": {"dropout_kind": "element"}}``)."""
    run_dir.mkdir(parents=True)
    snapshot: dict[str, Any] = {
        "name": run_dir.name, "seed": seed,
        "acquisition": {"strategy": strategy, "selection": selection,
                        "official_compat": official_compat},
    }
    for key, value in (config or {}).items():
        if isinstance(value, dict):
            snapshot[key] = {**snapshot.get(key, {}), **value}
        else:
            snapshot[key] = value
    names = CLASSES if class_names is None else class_names
    (run_dir / "config.yaml").write_text(yaml.safe_dump(snapshot))
    (run_dir / "dataset.json").write_text(json.dumps({
        "dataset": dataset, "root": "/nowhere", "split": "train", "options": {},
        "class_names": names, "palette": (PALETTE * len(names))[: len(names)],
        "ignore_index": 255,
    }))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def add_answers(run_dir: Path) -> None:
    """Cycle 0: road, road, car, unknown; cycle 1: sky, unknown (+ one open query)."""
    with LabelStore(run_dir / "labels.sqlite", num_classes=len(CLASSES)) as store:
        ids0 = store.add_queries([("img0", 0, i, None) for i in range(4)], cycle=0,
                                 strategy="balentacq")
        store.add_answers(zip(ids0, [0, 0, 1, None], strict=True), source="oracle")
        ids1 = store.add_queries([("img0", 1, i, 0.5) for i in range(3)], cycle=1,
                                 strategy="balentacq")
        store.add_answers(zip(ids1[:2], [2, None], strict=True), source="oracle")


def add_overlays(run_dir: Path) -> None:
    folder = run_dir / "overlays"
    folder.mkdir()
    img = np.random.default_rng(0).random((8, 8))
    for cycle in (1, 2):
        for kind in ("uncertainty", "queries"):
            imsave(folder / f"cycle_{cycle:03d}_img0_{kind}.png", img)
