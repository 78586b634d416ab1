"""`balseg bench`: one base config, many strategies x seeds, each a resumable run.

A strategy is written ``name[+pixelpick[N]][+compat][@n]``: ``margin+pixelpick`` is
PixelPick's method (margin, top ``acquisition.top_fraction`` = 5% then uniform),
``+pixelpickN`` draws from the top N% instead (``balentacq+pixelpick10`` beside
``margin+pixelpick`` compares pool sizes in one bench), a bare name selects the top-k scores
(whatever the base config's ``selection`` says, so that a strategy name means the same in
every bench),
``balentacq+compat`` reproduces the reference code's log-beta floor, and ``@n`` runs it with
the first n seeds only (a side check such as compat need not cost three seeds).
``supervised`` trains once, with the first seed, on every pool pixel as the reference.

Cycle 0 (random initial pixels, the first training, its evaluation) depends on the seed and
the data, model and training settings but not on the strategy, so the bench runs it once per
seed in ``_cycle0/<key>/seed<s>`` and starts every strategy's run from a copy of it: the same
labels, checkpoint and metrics the run would have produced itself, for a sixth of the cost.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from balseg.config import RunConfig, TrainConfig, parse_config
from balseg.loop.runner import ActiveLearningLoop
from balseg.rundir import RunDir
from balseg.strategy import Strategy, parse_strategy


def bench_configs(base: RunConfig, strategies: Sequence[str], seeds: Sequence[int]
                  ) -> list[tuple[str, RunConfig]]:
    """(run subfolder, config) for every strategy x seed, seed by seed (so that a partial
    bench covers every strategy); the supervised reference runs with the first seed only,
    ``spec@n`` with the first n."""
    parsed: list[Strategy] = [parse_strategy(spec) for spec in strategies]
    out = []
    for i, seed in enumerate(seeds):
        for strat in parsed:
            if (strat.is_supervised and i > 0) or (strat.seeds is not None and i >= strat.seeds):
                continue
            label = strat.label
            raw = copy.deepcopy(base.model_dump(mode="json"))
            raw["acquisition"].update(strat.overrides())
            # each run's snapshot says how long it trains, and only the reference's changes
            supervised_steps = raw["train"].pop("supervised_steps")  # parsed back as None
            if strat.is_supervised and supervised_steps:
                raw["train"]["steps"] = supervised_steps
            raw["seed"] = seed
            raw["name"] = f"{base.name}-{label}-s{seed}"
            out.append((f"{label}/seed{seed}", parse_config(raw, source=f"bench {label}")))
    return out


def cycle0_config(cfg: RunConfig) -> RunConfig:
    """The part of ``cfg`` that cycle 0 depends on: acquisition and later budget neutralised."""
    raw = copy.deepcopy(cfg.model_dump(mode="json"))
    raw["acquisition"] = {}
    raw["budget"] = {"initial_pixels_per_image": cfg.budget.initial_pixels_per_image,
                     "cycles": 0}
    raw["name"] = "cycle0"
    raw["overlay_images"] = 0
    if cfg.train.pseudo:  # pseudo-labels start with cycle 1: cycle 0 is a plain one
        t = raw["train"]
        t["unlabeled"] = "consistency" if cfg.train.consistency else "none"
        t["unlabeled_class_top"] = None
        if not cfg.train.consistency:
            t["unlabeled_weight"] = _NEW_TRAIN_DEFAULTS["unlabeled_weight"]
            t["unlabeled_threshold"] = _NEW_TRAIN_DEFAULTS["unlabeled_threshold"]
    return parse_config(raw, source="bench cycle 0")


# config keys that are not part of cycle 0's identity: dropped from the key so that earlier
# keys stay valid (supervised_steps), or runtime-only choices (in_memory)
_NOT_IN_KEY = (("train", "supervised_steps"), ("data", "in_memory"), ("data", "resize"))


_NEW_TRAIN_DEFAULTS = {k: TrainConfig.model_fields[k].default for k in (
    "unlabeled", "unlabeled_weight", "unlabeled_threshold", "unlabeled_class_top")}


def _cycle0_dir(out_dir: Path, cfg: RunConfig) -> Path:
    c0 = cycle0_config(cfg)
    key_cfg = c0.model_dump(mode="json")
    key_cfg.pop("seed")
    for key, default in _NEW_TRAIN_DEFAULTS.items():  # keys added later: at their default,
        if key_cfg["train"].get(key) == default:   # they leave earlier keys as they were
            key_cfg["train"].pop(key)
    for section, key in _NOT_IN_KEY:
        value = key_cfg[section].pop(key)
        if section == "data" and key == "resize" and value != "stretch":
            key_cfg[section][key] = value  # a new choice changes cycle 0: part of the key
    key = hashlib.sha256(json.dumps(key_cfg, sort_keys=True).encode()).hexdigest()[:10]
    return out_dir / "_cycle0" / key / f"seed{cfg.seed}"


def seed_from_shared_cycle0(cfg: RunConfig, run_dir: Path, out_dir: Path, *,
                            progress: bool = True) -> bool:
    """Start ``run_dir`` from the seed's shared cycle 0 (computing it if needed).

    Does nothing (returns False) for a run that has already started, for the supervised
    reference and for a person oracle (whose cycle 0 waits for people's answers).
    """
    if cfg.acquisition.strategy == "supervised" or cfg.oracle.kind != "simulated":
        return False
    target = RunDir(run_dir)
    if target.is_started():
        return False
    shared = _cycle0_dir(out_dir, cfg)
    c0 = ActiveLearningLoop.from_config(cycle0_config(cfg), shared, progress=progress)
    result = c0.run()
    if result.status != "done":  # pragma: no cover - simulated oracle always answers
        return False
    target.make()
    shutil.copyfile(c0.checkpoint_path(0), target.checkpoint(0))
    rows = [{**r, "strategy": cfg.acquisition.strategy} for r in c0.read_metrics()]
    target.write_metrics(rows)
    progress_file = c0.rundir.read_progress()
    if progress_file:
        target.write_progress(progress_file)
    # the database last: a run is "started" once it exists, so a crash before this line
    # leaves a run that simply starts again from the shared cycle 0
    assert c0.store is not None  # a single-process bench: this process owns the database
    c0.store.backup_to(target.labels)
    c0.store.close()
    return True


def run_bench(base: RunConfig, out_dir: Path, strategies: Sequence[str], seeds: Sequence[int],
              *, progress: bool = True, share_cycle0: bool = True) -> list[Path]:
    """Run (or resume) every run in turn; finished runs cost nothing on a second call."""
    dirs = []
    for sub, cfg in bench_configs(base, strategies, seeds):
        if share_cycle0:
            seed_from_shared_cycle0(cfg, out_dir / sub, out_dir, progress=progress)
        loop = ActiveLearningLoop.from_config(cfg, out_dir / sub, progress=progress)
        loop.run()
        if loop.store is not None:
            loop.store.close()
        dirs.append(loop.run_dir)
    return dirs
