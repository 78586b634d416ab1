"""The active-learning loop: label, train, evaluate, score, select, ask; then again.

Resume needs no separate journal: every step leaves an artifact written atomically, and the
loop derives where it stands from them.

| step of cycle c          | done when                                        |
| ------------------------ | ------------------------------------------------ |
| queries of cycle c       | the label database holds queries with cycle c    |
| answers of cycle c       | none of them is open                             |
| training                 | ``checkpoints/cycle_{c:03d}.pt`` exists          |
| evaluation               | ``metrics.jsonl`` has a row for (c, split)       |
| selection for cycle c+1  | the label database holds queries with cycle c+1  |

Every random choice is seeded from (seed, cycle, image), so a run killed at any point and
resumed ends with the same labels as an uninterrupted run.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from balseg.acquisition import select_pixels
from balseg.config import ConfigError, RunConfig, parse_config
from balseg.data import (
    IGNORE_INDEX,
    PreparedSplit,
    SegAugment,
    cache_base,
    open_source,
    prepare_split,
    to_original_coords,
    to_work_coords,
)
from balseg.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    shard,
)
from balseg.errors import MissingFileError
from balseg.fsutil import atomic_write_bytes
from balseg.labels import LabelStore, SimulatedOracle
from balseg.mc import score_pool
from balseg.models import ModelSpec, build_model, input_mean_std
from balseg.train import TrainSettings, confusion_matrix, iou_from_confusion, train_cycle

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
DATASET_FILE = "dataset.json"
LABELS_FILE = "labels.sqlite"
METRICS_FILE = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
INITIAL_STRATEGY = "initial"


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class RunResult:
    run_dir: Path
    status: str  # "done" | "waiting_for_answers"
    cycles_done: int
    open_queries: int = 0


class ActiveLearningLoop:
    """One run directory: its config, label database, checkpoints and metrics."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, progress: bool = True,
                 ctx: DistContext | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ctx = ctx or DistContext(device=resolve_device(cfg.device))
        self.main = self.ctx.is_main
        self.progress = progress and self.main
        if self.main:
            self._prepare_run_dir()
        barrier(self.ctx, "prepare run directory")
        self.device = self.ctx.device
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.spec = ModelSpec(
            arch=cfg.model.arch, encoder=cfg.model.encoder,
            encoder_weights=cfg.model.encoder_weights, num_classes=0,
            dropout_p=cfg.model.dropout_p, mc_mode=cfg.model.mc_mode,
            dropout_kind=cfg.model.dropout_kind,
        )
        self.mean, self.std = input_mean_std(self.spec)
        self._open_data()
        self.spec = ModelSpec(**{**self.spec.__dict__, "num_classes": self.info.num_classes})
        # rank 0 alone reads and writes the label database; others get what they need
        self.store = (LabelStore(self.run_dir / LABELS_FILE, num_classes=self.info.num_classes)
                      if self.main else None)

    @classmethod
    def from_config(cls, cfg: RunConfig, run_dir: str | Path, *, progress: bool = True,
                    ctx: DistContext | None = None) -> ActiveLearningLoop:
        return cls(cfg, run_dir, progress=progress, ctx=ctx)

    @property
    def rundir(self):
        from balseg.rundir import RunDir

        return RunDir(self.run_dir)

    def _db(self) -> LabelStore:
        assert self.store is not None, "only rank 0 touches the label database"
        return self.store

    # -- set-up ---------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
            (self.run_dir / "overlays").mkdir(exist_ok=True)
            probe = self.run_dir / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise ConfigError(f"run directory {self.run_dir} is not writable: {err}") from None
        snapshot = self.run_dir / CONFIG_FILE
        text = self.cfg.to_yaml()
        if snapshot.exists():
            import yaml

            old = parse_config(yaml.safe_load(snapshot.read_text()), source=str(snapshot))
            if old != self.cfg:
                a, b = old.model_dump(), self.cfg.model_dump()
                diff = sorted(_diff_keys(a, b))
                raise ConfigError(
                    f"{self.run_dir} already holds a run with another config (differs in"
                    f" {', '.join(diff)}); resume it with `balseg run {self.run_dir}` or"
                    " choose a new run directory"
                )
        else:
            atomic_write_bytes(snapshot, text.encode())

    def _open_data(self) -> None:
        d = self.cfg.data
        cache = Path(d.cache_dir).expanduser() if d.cache_dir else _default_cache()
        self.pool_source = open_source(d.dataset, d.root, d.pool_split, **d.options)
        self.info = self.pool_source.info
        if d.class_names is not None and list(d.class_names) != list(self.info.class_names):
            raise ConfigError(
                f"data.class_names {d.class_names} do not match dataset {d.dataset!r}'s"
                f" classes {list(self.info.class_names)}"
            )
        self.pool = prepare_split(self.pool_source, size=d.size, pad_multiple=d.pad_multiple,
                                  cache_dir=cache, progress=self.progress)
        self.eval_sets: dict[str, tuple[PreparedSplit, list[torch.Tensor]]] = {}
        for split in d.eval_splits:
            src = open_source(d.dataset, d.root, split, **d.options)
            prepared = prepare_split(src, size=d.size, pad_multiple=d.pad_multiple,
                                     cache_dir=cache, progress=self.progress)
            targets = [torch.from_numpy(src.load(i)[1]) for i in range(len(src))]
            self.eval_sets[split] = (prepared, targets)
        self.index_of = {iid: i for i, iid in enumerate(self.pool.image_ids)}
        meta = {
            "dataset": d.dataset, "root": d.root, "split": d.pool_split, "options": d.options,
            "class_names": list(self.info.class_names),
            "palette": np.asarray(self.info.palette).tolist(),
            "ignore_index": IGNORE_INDEX,
            "num_images": len(self.pool.image_ids),
            "pixels_total": int(sum(h * w for h, w in self.pool.orig_sizes)),
        }
        if self.main:
            atomic_write_bytes(self.run_dir / DATASET_FILE, json.dumps(meta).encode())

    @functools.cached_property
    def oracle(self) -> SimulatedOracle:
        @functools.lru_cache(maxsize=64)
        def label_of(image_id: str) -> np.ndarray:
            return self.pool_source.load(self.index_of[image_id])[1]

        return SimulatedOracle(label_of, self.info.num_classes,
                               error_rate=self.cfg.oracle.error_rate, seed=self.cfg.seed)

    # -- artifacts ------------------------------------------------------------------------
    def checkpoint_path(self, cycle: int) -> Path:
        return self.run_dir / "checkpoints" / f"cycle_{cycle:03d}.pt"

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _write_metrics(self, rows: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write_bytes(self.run_dir / METRICS_FILE, text.encode())
        keys = [k for k in rows[0] if k != "per_class_iou"] if rows else []
        csv = ",".join(keys) + "\n" + "".join(
            ",".join(str(r.get(k, "")) for k in keys) + "\n" for r in rows
        )
        atomic_write_bytes(self.run_dir / METRICS_CSV, csv.encode())

    # -- steps ----------------------------------------------------------------------------
    def _fresh_model(self) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            model = build_model(self.spec)
        return model.to(self.device).to(memory_format=torch.channels_last)

    def _load_model(self, cycle: int) -> torch.nn.Module:
        """The cycle's checkpoint; rank 0 reads it and sends it (no shared disk needed)."""
        model = self._fresh_model()
        state = None
        if self.main:
            state = torch.load(self.checkpoint_path(cycle), map_location="cpu",
                               weights_only=True)["model"]
        model.load_state_dict(broadcast_object(state, self.ctx, "send checkpoint"))
        return model.eval()

    def initial_queries(self) -> None:
        k = self.cfg.budget.initial_pixels_per_image
        h, w = self.pool.valid_hw
        rows = []
        for i, iid in enumerate(self.pool.image_ids):
            rng = np.random.default_rng([self.cfg.seed, 0, i])
            flat = rng.choice(h * w, size=min(k, h * w), replace=False)
            yx = torch.from_numpy(np.stack([flat // w, flat % w], axis=1))
            rows.extend(self._to_rows(iid, i, yx, None))
        self._db().add_queries(rows, cycle=0, strategy=INITIAL_STRATEGY)

    def _to_rows(self, image_id: str, index: int, yx_work: torch.Tensor,
                 scores: torch.Tensor | None) -> list[tuple[str, int, int, float | None]]:
        yx0 = to_original_coords(yx_work, self.pool.valid_hw, self.pool.orig_sizes[index])
        rows, seen = [], set()
        for j, (y, x) in enumerate(yx0.tolist()):
            if (y, x) in seen:  # work resolution above the original: two map to one
                continue
            seen.add((y, x))
            s = None if scores is None else float(scores[j])
            rows.append((image_id, y, x, s))
        return rows

    def sparse_labels(self, cycle: int) -> torch.Tensor:
        """Training labels at working resolution from the resolved answers up to ``cycle``."""
        labels = torch.full(self.pool.labels.shape, IGNORE_INDEX, dtype=torch.uint8)
        by_image: dict[str, list[tuple[int, int, int]]] = {}
        for iid, y, x, c in self._db().resolved_labels(max_cycle=cycle):
            by_image.setdefault(iid, []).append((y, x, c))
        for iid, items in by_image.items():
            i = self.index_of[iid]
            arr = torch.tensor(items, dtype=torch.int64)
            yx = to_work_coords(arr[:, :2], self.pool.valid_hw, self.pool.orig_sizes[i])
            labels[i, yx[:, 0], yx[:, 1]] = arr[:, 2].to(torch.uint8)
        return labels

    def answer_open(self, cycle: int) -> int:
        """Simulated oracle answers every open query; returns how many remain open."""
        open_q = self._db().open_queries(cycle=cycle)
        if self.cfg.oracle.kind == "simulated" and open_q:
            source = "initial" if cycle == 0 else "oracle"
            self.oracle.answer_all(self._db(), open_q, source=source)
            return 0
        return len(open_q)

    def train(self, cycle: int, labels: torch.Tensor | None) -> tuple[torch.nn.Module, dict]:
        """Train the cycle's model on rank 0's ``labels`` (sent to every rank)."""
        labels = broadcast_object(labels, self.ctx, "send training labels")
        t = self.cfg.train
        if t.warm_start and cycle > 0:
            previous = self.checkpoint_path(cycle - 1)
            if self.main and not previous.exists():
                raise MissingFileError(
                    f"{previous}: missing, and cycle {cycle} warm-starts from it; restore it "
                    f"or set train.warm_start: false")
            model = self._load_model(cycle - 1)
        else:
            model = self._fresh_model()
        warm = t.warm_start and cycle > 0
        steps = t.warm_steps if warm and t.warm_steps else t.steps
        if self.cfg.acquisition.strategy == "supervised" and t.supervised_steps:
            steps = t.supervised_steps
        settings = TrainSettings(steps=steps, batch_size=t.batch_size, lr=t.lr,
                                 weight_decay=t.weight_decay, poly_power=t.poly_power,
                                 freeze_bn=t.freeze_bn,
                                 seed=int(np.random.SeedSequence([self.cfg.seed, 3, cycle])
                                          .generate_state(1)[0]))
        a = t.augment
        augment = SegAugment(hflip=a.hflip, scale=a.scale, color_jitter=a.color_jitter,
                             mean=self.mean, std=self.std)
        stats = train_cycle(model, self.pool.images, labels, settings, mean=self.mean,
                            std=self.std, augment=augment, device=self.device,
                            progress=self.progress, ctx=self.ctx)
        if self.main:
            atomic_torch_save({"model": model.state_dict(), "cycle": cycle,
                               "spec": self.spec.__dict__}, self.checkpoint_path(cycle))
            for old in sorted((self.run_dir / "checkpoints").glob("cycle_*.pt"))[:-2]:
                old.unlink()  # keep the last two: warm start of a resumed cycle needs c-1
        barrier(self.ctx, "save checkpoint")
        return model.eval(), {"train_steps": stats.steps, "train_time_s": stats.seconds,
                              "train_images_per_s": stats.images_per_s,
                              "final_loss": stats.final_loss}

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, Any]:
        """mIoU on ``split``; each rank scores its share, confusion matrices are summed."""
        prepared, targets = self.eval_sets[split]
        mine = shard(range(len(targets)), self.ctx)
        cm = confusion_matrix(model, prepared.images[mine], [targets[i] for i in mine],
                              self.info.num_classes, valid_hw=prepared.valid_hw,
                              mean=self.mean, std=self.std,
                              batch_size=self.cfg.train.eval_batch_size, device=self.device,
                              progress=self.progress)
        all_reduce_sum(cm, self.ctx, f"sum confusion matrices of {split}")
        miou, per_class = iou_from_confusion(cm)
        return {"miou": miou, "per_class_iou": per_class}

    def select(self, model: torch.nn.Module, cycle: int) -> float:
        """Score the pool with the cycle's model and add the next cycle's queries.

        Each rank scores and selects in its share of the images (an image's dropout masks and
        tie-breaking depend only on (seed, cycle, image)), rank 0 merges the picks in image
        order and writes them in one transaction: the same queries as a single process.
        """
        a = self.cfg.acquisition
        n = len(self.pool.image_ids)
        kwargs = {"official_compat": a.official_compat} if a.strategy.startswith("balent") else {}
        queried = None
        if self.main:
            queried = {iid: self._db().queried_pixels(iid) for iid in self.pool.image_ids}
        queried = broadcast_object(queried, self.ctx, "send queried pixels")
        mine = shard(range(n), self.ctx)
        start = time.perf_counter()
        scores = score_pool(model, self.pool.images, mine, valid_hw=self.pool.valid_hw,
                            strategy=a.strategy, samples=a.mc_samples, seed=self.cfg.seed,
                            cycle=cycle, mean=self.mean, std=self.std,
                            batch_size=a.score_batch_size, score_kwargs=kwargs,
                            device=self.device, progress=self.progress,
                            resolution=a.score_resolution)
        score_time = time.perf_counter() - start
        picks: dict[int, list[tuple[str, int, int, float | None]]] = {}
        overlay_maps: dict[int, torch.Tensor] = {}
        for j, i in enumerate(mine):
            iid = self.pool.image_ids[i]
            candidates = torch.ones(self.pool.valid_hw, dtype=torch.bool)
            done = torch.from_numpy(queried[iid])
            if len(done):
                yx = to_work_coords(done, self.pool.valid_hw, self.pool.orig_sizes[i])
                candidates[yx[:, 0], yx[:, 1]] = False
            g = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.cfg.seed, 4, cycle, i]).generate_state(1)[0]))
            picked = select_pixels(scores[j], self.cfg.budget.pixels_per_cycle,
                                   candidates=candidates, method=a.selection,
                                   top_fraction=a.top_fraction, min_spacing=a.min_spacing,
                                   power=a.power, power_beta=a.power_beta, generator=g)
            picks[i] = self._to_rows(iid, i, picked, scores[j][picked[:, 0], picked[:, 1]])
            if i < self.cfg.overlay_images:
                overlay_maps[i] = scores[j]
        gathered = all_gather_objects((picks, overlay_maps), self.ctx, "gather selections")
        if self.main:
            merged: dict[int, list] = {}
            maps: dict[int, torch.Tensor] = {}
            for part, part_maps in gathered:
                merged.update(part)
                maps.update(part_maps)
            rows = [row for i in range(n) for row in merged[i]]
            self._db().add_queries(rows, cycle=cycle + 1, strategy=a.strategy)
            if maps:
                from balseg.loop.overlays import write_overlays

                write_overlays(self, cycle, torch.stack([maps[i] for i in sorted(maps)]))
        barrier(self.ctx, "write queries")
        return score_time

    # -- the loop -------------------------------------------------------------------------
    def _plan(self, cycle: int, metrics: list[dict[str, Any]]) -> dict[str, Any]:
        """What cycle ``cycle`` still needs, decided by rank 0 from the run's artifacts."""
        plan = None
        if self.main:
            open_left = self.answer_open(cycle)
            done_splits = {r["split"] for r in metrics if r["cycle"] == cycle}
            evals = [s for s in self.eval_sets if s not in done_splits]
            select = cycle < self.cfg.budget.cycles and (cycle + 1) not in self._db().cycles()
            plan = {
                "open_left": open_left,
                # a finished cycle needs no model: its checkpoint may be pruned (the loop
                # keeps the last two), and retraining it would waste a whole cycle
                "train": (not self.checkpoint_path(cycle).exists()) and bool(evals or select),
                "eval": evals,
                "select": select,
            }
        return broadcast_object(plan, self.ctx, f"plan cycle {cycle}")

    def run(self) -> RunResult:
        if self.cfg.acquisition.strategy == "supervised":
            return self._run_supervised()
        cycles = self.cfg.budget.cycles
        started = time.perf_counter()
        metrics = self.read_metrics() if self.main else []
        prior_wall = max((r.get("wall_time_s", 0.0) for r in metrics), default=0.0)
        if self.main and 0 not in self._db().cycles():
            self.initial_queries()
        bar = tqdm(range(cycles + 1), desc=f"{self.cfg.name}: cycles", unit="cycle",
                   disable=not self.progress)
        for cycle in bar:
            plan = self._plan(cycle, metrics)
            if plan["open_left"]:
                return RunResult(self.run_dir, "waiting_for_answers", cycle, plan["open_left"])
            extra: dict[str, float] = {}
            model = None
            if plan["train"]:
                model, extra = self.train(cycle, self.sparse_labels(cycle) if self.main else None)
            elif plan["eval"] or plan["select"]:
                model = self._load_model(cycle)
            score_time = self.select(model, cycle) if plan["select"] else 0.0
            if plan["eval"]:
                assert model is not None
                counts = self._budget_counts(cycle) if self.main else {}
                for split in plan["eval"]:
                    row = {"cycle": cycle, "split": split, **counts, **self.evaluate(model, split),
                           **extra, "score_time_s": score_time,
                           "wall_time_s": prior_wall + time.perf_counter() - started,
                           "strategy": self.cfg.acquisition.strategy, "seed": self.cfg.seed}
                    metrics.append(row)
                if self.main:
                    self._write_metrics(metrics)
                    bar.set_postfix(miou=f"{metrics[-1]['miou']:.3f}",
                                    px=f"{counts['pixels_per_image']:.0f}")
        barrier(self.ctx, "finish")
        return RunResult(self.run_dir, "done", cycles + 1)

    def _budget_counts(self, cycle: int) -> dict[str, float]:
        queried = sum(1 for q in self._db().queries() if q.cycle <= cycle)
        labeled = len(self._db().resolved_labels(max_cycle=cycle))
        n = len(self.pool.image_ids)
        total = sum(h * w for h, w in self.pool.orig_sizes)
        return {"queried_pixels": queried, "labeled_pixels": labeled,
                "pixels_per_image": queried / n, "labeled_fraction": queried / total}

    def _run_supervised(self) -> RunResult:
        started = time.perf_counter()
        metrics = self.read_metrics() if self.main else []
        plan = None
        if self.main:
            done = {r["split"] for r in metrics}
            plan = {"trained": self.checkpoint_path(0).exists(),
                    "eval": [s for s in self.eval_sets if s not in done]}
        plan = broadcast_object(plan, self.ctx, "plan supervised run")
        if not plan["eval"]:  # finished: nothing to load, train or rewrite
            barrier(self.ctx, "finish")
            return RunResult(self.run_dir, "done", 1)
        extra: dict[str, float] = {}
        if plan["trained"]:
            model = self._load_model(0)
        else:
            model, extra = self.train(0, self.pool.labels.clone() if self.main else None)
        n = len(self.pool.image_ids)
        total = sum(h * w for h, w in self.pool.orig_sizes)
        for split in plan["eval"]:
            metrics.append({"cycle": 0, "split": split, "queried_pixels": total,
                            "labeled_pixels": total, "pixels_per_image": total / n,
                            "labeled_fraction": 1.0, **self.evaluate(model, split), **extra,
                            "score_time_s": 0.0,
                            "wall_time_s": time.perf_counter() - started,
                            "strategy": "supervised", "seed": self.cfg.seed})
        if self.main:
            self._write_metrics(metrics)
        barrier(self.ctx, "finish")
        return RunResult(self.run_dir, "done", 1)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}


def _default_cache() -> Path:
    return cache_base() / "prepared"
