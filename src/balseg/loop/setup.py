"""From a ``RunConfig`` to the loop's collaborators: the one place that builds them.

``build_collaborators`` prepares the run directory (snapshot rules below), opens and
prepares the data, and builds the model factory, score, selection, oracle and label store;
anything passed in replaces what the config would build.

Snapshot rules (``config.yaml``): a run that has written queries is bound to its config;
resuming with another one is refused, except for runtime keys (threads, device) and a
larger budget (``budget.cycles``), which extend the run. A folder whose first start failed
before any query was written takes the corrected config.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from balseg.config import RUNTIME_KEYS, RunConfig, check_resumable
from balseg.data import open_source, prepare_split, prepared_dir
from balseg.data.regions import region_maps
from balseg.distributed import DistContext, barrier
from balseg.errors import BalsegWarning, ConfigError, DataError
from balseg.labels import LabelStore
from balseg.loop.parts import Pool, Selection, simulated_oracle
from balseg.models import ModelFactory, ModelSpec
from balseg.rundir import DatasetMeta, RunDir
from balseg.strategy import SUPERVISED


def resolve_defaults(cfg: RunConfig) -> RunConfig:
    """Fill in what a config left to its defaults but the data decide.

    A ``folder`` dataset without a ``train/`` folder (a flat ``images/`` + ``masks/``) uses
    ``all`` as the pool; evaluation splits the folder lacks are dropped (a flat folder has
    none: the run then evaluates nothing). Each is said in a warning. Splits the config
    names itself are left alone (and a missing one is an error naming it).
    """
    d = cfg.data
    if d.dataset != "folder" or d.root is None:
        return cfg
    root = Path(d.root).expanduser()
    if not root.is_dir():
        return cfg  # the adapter names the missing root
    pool, notes = d.pool_split, []
    if ("pool_split" not in d.model_fields_set and not (root / pool).is_dir()
            and (root / "images").is_dir()):
        pool = "all"
        notes.append(f"{root} has no {d.pool_split}/ folder: using every image of"
                     f" {root / 'images'} as the pool (data.pool_split: all)")
    evals = list(d.eval_splits)
    if "eval_splits" not in d.model_fields_set:
        missing = [s for s in evals if not (root / s).is_dir()]
        evals = [s for s in evals if s not in missing]
        if missing:
            notes.append(f"{root} has no {', '.join(m + '/' for m in missing)} folder:"
                         + (" evaluating nothing (data.eval_splits: []); every cycle's"
                            " model is still trained and saved" if not evals else
                            f" evaluating on {', '.join(evals)} only"))
    if not notes:
        return cfg
    warnings.warn("; ".join(notes), BalsegWarning, stacklevel=2)
    data = d.model_copy(update={"pool_split": pool, "eval_splits": evals})
    return cfg.model_copy(update={"data": data})


def _stage(rundir: RunDir) -> tuple[bool, bool]:
    """(queried, trained): whether the run has written queries (then what they depend on
    is fixed) and whether it has trained a cycle (then its whole config is)."""
    trained = bool(rundir.checkpoint_cycles()) or bool(rundir.read_metrics())
    if not rundir.labels.is_file():
        return False, trained
    with LabelStore(rundir.labels, readonly=True) as store:
        cycles = store.cycles()
    return bool(cycles), trained or any(c > 0 for c in cycles)


def check_snapshot(old: RunConfig, new: RunConfig, rundir: RunDir) -> set[str] | None:
    """How ``new`` may replace the snapshot ``old`` of ``rundir`` (``check_resumable``'s
    rules for the run's stage): the differing keys, or None when the run never wrote a
    query (anything may change); a ConfigError when it may not."""
    queried, trained = _stage(rundir)
    if not queried and not trained:
        return None
    return check_resumable(old, new, rundir.path, trained=trained)


def prepare_run_dir(cfg: RunConfig, rundir: RunDir) -> None:
    """Create the folder (refusing one that cannot be written before any work), clean what
    killed writes left behind, and write or check the config snapshot."""
    rundir.make()
    for tmp in rundir.remove_stale_temp_files():
        warnings.warn(f"removed {tmp}, left by a write that was interrupted", BalsegWarning,
                      stacklevel=2)
    if not rundir.config.exists():
        rundir.write_config(cfg)
        return
    old = rundir.load_config()
    if old == cfg:
        return
    changed = check_snapshot(old, cfg, rundir)
    if changed is None:
        warnings.warn(f"{rundir.config}: replacing the config of a run that never started",
                      BalsegWarning, stacklevel=2)
    elif "budget.cycles" in changed and cfg.budget.cycles > old.budget.cycles:
        warnings.warn(f"extending {rundir.path} from {old.budget.cycles} to"
                      f" {cfg.budget.cycles} cycles", BalsegWarning, stacklevel=2)
    elif changed - RUNTIME_KEYS - {"budget.cycles"}:
        warnings.warn(f"{rundir.config}: no cycle was trained yet, so the run continues with"
                      f" the new {', '.join(sorted(changed))}", BalsegWarning, stacklevel=2)
    rundir.write_config(cfg)


def _prepare(cfg: RunConfig, split: str, ctx: DistContext, progress: bool) -> tuple[Any, Any]:
    """(source, prepared split); the first process of each machine decodes, the others
    then open the same cache."""
    d = cfg.data
    src = open_source(d.dataset, d.root, split, **d.options)
    kwargs = dict(size=d.size, pad_multiple=d.pad_multiple, cache_dir=prepared_dir(d.cache_dir),
                  resize=d.resize, in_memory=d.in_memory)
    prepared = None
    if ctx.local_rank == 0:
        prepared = prepare_split(src, progress=progress, **kwargs)
    barrier(ctx, f"prepare split {split}")
    if prepared is None:
        prepared = prepare_split(src, progress=False, **kwargs)
    return src, prepared


def _regions(cfg: RunConfig, data: Any, ctx: DistContext, progress: bool) -> Any:
    """The pool's region maps (``data.regions``), computed once into the cache."""
    d = cfg.data
    if d.regions is None:
        return None
    kwargs = dict(method=d.regions, size=d.region_size, compactness=d.region_compactness)
    maps = region_maps(data, progress=progress, **kwargs) if ctx.local_rank == 0 else None
    barrier(ctx, "compute regions")
    return maps if maps is not None else region_maps(data, **kwargs)


def _require_masks(pool: Pool) -> None:
    """The simulated oracle answers from the masks: every pool image needs one."""
    src = pool.source
    if src is None or not hasattr(src, "label_path"):
        return
    missing = [src.image_path(i) for i in range(len(src)) if src.label_path(i) is None]
    if missing:
        raise ConfigError(
            f"oracle.kind: simulated answers from the masks, but {len(missing)} of"
            f" {len(src)} pool images have none (e.g. {missing[0]}): set oracle.kind: person"
            " to answer them yourself (balseg annotate), or add their masks")


def build_collaborators(cfg: RunConfig, rundir: RunDir, *, ctx: DistContext,
                        progress: bool, **given: Any) -> dict[str, Any]:
    unknown = set(given) - {"pool", "eval_sets", "model", "score", "selection", "oracle",
                            "store"}
    if unknown:
        raise TypeError(f"unknown collaborators {sorted(unknown)}")
    if ctx.is_main:
        prepare_run_dir(cfg, rundir)
    barrier(ctx, "prepare run directory")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = cfg.data
    show = progress and ctx.is_main
    pool = given.get("pool")
    if pool is None:
        source, data = _prepare(cfg, d.pool_split, ctx, show)
        pool = Pool(data, source, _regions(cfg, data, ctx, show))
    info = pool.data.info
    if d.class_names is not None and list(d.class_names) != list(info.class_names):
        raise ConfigError(f"data.class_names {d.class_names} do not match dataset"
                          f" {d.dataset!r}'s classes {list(info.class_names)}")
    eval_sets = given.get("eval_sets")
    if eval_sets is None:
        eval_sets = {split: _prepare(cfg, split, ctx, show)[1] for split in d.eval_splits}
    for split, prepared in eval_sets.items():
        if prepared.info.class_names != info.class_names:
            raise DataError(f"split {split!r} has other classes than the pool")
    if ctx.is_main:
        rundir.write_dataset(DatasetMeta(
            dataset=d.dataset, root=d.root, split=d.pool_split, options=d.options,
            class_names=list(info.class_names), palette=info.palette.tolist(),
            num_images=len(pool), pixels_total=sum(h * w for h, w in pool.data.orig_sizes)))
    model = given.get("model") or ModelFactory(
        ModelSpec.from_config(cfg.model, info.num_classes), seed=cfg.seed, device=ctx.device)
    supervised = cfg.acquisition.strategy == SUPERVISED
    score = given.get("score", None if supervised else cfg.acquisition.strategy)
    selection = given.get("selection") or Selection.from_config(cfg.acquisition)
    if "oracle" in given:
        oracle = given["oracle"]
    elif cfg.oracle.kind == "simulated":
        _require_masks(pool)
        oracle = simulated_oracle(pool, cfg)
    elif cfg.oracle.kind == "labelstudio" and ctx.is_main:  # rank 0 asks Label Studio
        from balseg.labelstudio.sync import LabelStudioOracle

        oracle = LabelStudioOracle(rundir.path, cfg.oracle)
    else:
        oracle = None
    store = given.get("store")
    if store is None and ctx.is_main:  # rank 0 alone reads and writes the label database
        store = LabelStore(rundir.labels, num_classes=info.num_classes)
    return {"pool": pool, "eval_sets": eval_sets, "model": model, "score": score,
            "selection": selection, "oracle": oracle, "store": store}
