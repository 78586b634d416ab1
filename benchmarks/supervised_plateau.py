"""The fully supervised reference trained until its validation mIoU stops improving.

One supervised run (every pool pixel labeled) of ``--steps`` optimizer steps with the
config's recipe, evaluated on every evaluation split every ``--every`` steps; writes
``curve.json`` beside the run and prints the curve and where it plateaus (the first step
after which no evaluation gains more than ``--tolerance`` points). The run directory is a
normal supervised run: ``balseg report`` uses its final evaluation as the reference.

    .venv/bin/python benchmarks/supervised_plateau.py configs/camvid.yaml \\
        --steps 2200 --every 275 --out runs/supervised-plateau
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from balseg.config import load_config, parse_config
from balseg.fsutil import atomic_write_bytes
from balseg.loop import ActiveLearningLoop


def plateau(curve: list[dict], split: str, tolerance: float) -> dict:
    """The best evaluation and the first step after which nothing gains > tolerance."""
    values = [(p["step"], 100 * p["miou"][split]) for p in curve]
    best_step, best = max(values, key=lambda v: v[1])
    for i, (step, value) in enumerate(values):
        if all(later <= value + tolerance for _, later in values[i + 1:]):
            return {"best_step": best_step, "best_miou": best, "plateau_step": step,
                    "plateau_miou": value}
    raise AssertionError("unreachable")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", type=Path)
    p.add_argument("--set", dest="sets", action="append", default=[])
    p.add_argument("--steps", type=int, default=3300)
    p.add_argument("--every", type=int, default=275)
    p.add_argument("--tolerance", type=float, default=0.5, help="mIoU points")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    base = load_config(a.config, a.sets)
    raw = base.model_dump(mode="json")
    raw["acquisition"] = {"strategy": "supervised"}
    raw["train"]["steps"] = a.steps
    raw["train"]["supervised_steps"] = None
    raw["name"] = f"{base.name}-supervised-{a.steps}"
    cfg = parse_config(raw, source=f"{a.config} (supervised, {a.steps} steps)")
    loop = ActiveLearningLoop.from_config(cfg, a.out, progress=True)
    curve_file = a.out / "curve.json"
    curve: list[dict] = []
    started = time.perf_counter()

    def evaluate(cycle: int, step: int, model) -> None:
        if step % a.every and step != a.steps:
            return
        modes = {m: m.training for m in model.modules()}
        model.eval()
        point = {"step": step, "seconds": round(time.perf_counter() - started, 1),
                 "miou": {s: loop.evaluate(model, s)["miou"] for s in loop.eval_sets}}
        for m, mode in modes.items():
            m.train(mode)
        curve.append(point)
        atomic_write_bytes(curve_file, json.dumps(curve, indent=1).encode())
        print(json.dumps(point), flush=True)

    loop.on_train_step = evaluate
    loop.run()
    if not curve:
        curve = json.loads(curve_file.read_text())
    for split in loop.eval_sets:
        print(split, json.dumps(plateau(curve, split, a.tolerance)))


if __name__ == "__main__":
    main()
