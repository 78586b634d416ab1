"""`balseg demo`: the main job in miniature, on the built-in synthetic dataset.

It ends with its conclusion in one line (which strategy reached which mIoU at the last
budget) and a report whose paired table sets BalEntAcq against random, seed by seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from balseg.config import parse_config
from balseg.loop.runner import ActiveLearningLoop
from balseg.rundir import RunDir

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
DEMO_BASELINE = "random"
SHOWN_NAMES = {"balentacq": "BalEntAcq"}


@dataclass(frozen=True)
class DemoResult:
    report: Path
    run_dirs: tuple[Path, ...]
    conclusion: str  # "BalEntAcq 44.2 vs random 43.9 mIoU at 20 px/img on ... (3 cycles)"


def conclusion(run_dirs: dict[str, Path], cycles: int) -> str:
    """The last evaluated cycle of each strategy, side by side, in one line."""
    parts, budget, split = [], None, None
    for strategy, run_dir in run_dirs.items():
        rows = [r for r in RunDir(run_dir).read_metrics() if r.get("miou") is not None]
        last = max(rows, key=lambda r: r["cycle"])
        parts.append(f"{SHOWN_NAMES.get(strategy, strategy)} {100 * last['miou']:.1f}")
        budget, split = last["pixels_per_image"], last["split"]
    return (f"{' vs '.join(parts)} mIoU ({split}) at {budget:.0f} px/img on the built-in"
            f" synthetic data ({cycles} cycle{'s' if cycles != 1 else ''}, seed"
            f" {DEMO_CONFIG['seed']})")


def run_demo(run_root: Path, *, progress: bool = True) -> DemoResult:
    """Run each demo strategy (resuming any finished part) and write the report, with
    BalEntAcq paired against random."""
    from balseg.report import make_report

    run_dirs: dict[str, Path] = {}
    for strategy in DEMO_STRATEGIES:
        raw = {**DEMO_CONFIG, "name": f"demo-{strategy}",
               "acquisition": {**DEMO_CONFIG["acquisition"], "strategy": strategy}}
        cfg = parse_config(raw, source="balseg demo")
        loop = ActiveLearningLoop.from_config(cfg, run_root / strategy, progress=progress)
        try:
            loop.run()
        finally:
            loop.close()
        run_dirs[strategy] = loop.run_dir
    report = make_report(list(run_dirs.values()), run_root / "report", baseline=DEMO_BASELINE)
    return DemoResult(report, tuple(run_dirs.values()),
                      conclusion(run_dirs, int(DEMO_CONFIG["budget"]["cycles"])))
