"""`balseg demo`: the main job in miniature, on the built-in synthetic dataset."""

from __future__ import annotations

from pathlib import Path

from balseg.config import parse_config
from balseg.loop.runner import ActiveLearningLoop

DEMO_CONFIG = {
    "name": "demo",
    "seed": 0,
    "overlay_images": 3,
    "data": {"dataset": "synthetic", "size": None},
    "model": {"dropout_p": 0.3},
    "train": {"steps": 50, "warm_start": True, "warm_steps": 20, "batch_size": 8},
    "acquisition": {"mc_samples": 10, "score_batch_size": 16},
    "budget": {"initial_pixels_per_image": 5, "pixels_per_cycle": 5, "cycles": 3},
}
DEMO_STRATEGIES = ("balentacq", "random")


def run_demo(run_root: Path, *, progress: bool = True) -> Path:
    """Run each demo strategy (resuming any finished part) and write the report."""
    from balseg.report import make_report

    run_dirs = []
    for strategy in DEMO_STRATEGIES:
        raw = {**DEMO_CONFIG, "name": f"demo-{strategy}",
               "acquisition": {**DEMO_CONFIG["acquisition"], "strategy": strategy}}
        cfg = parse_config(raw, source="balseg demo")
        loop = ActiveLearningLoop.from_config(cfg, run_root / strategy, progress=progress)
        loop.run()
        run_dirs.append(loop.run_dir)
    return make_report(run_dirs, run_root / "report")
