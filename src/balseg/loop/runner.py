"""The active-learning loop: label, train, evaluate, score, select, ask; then again.

``ActiveLearningLoop`` is handed its collaborators, as baal's loop is: the ``pool``
(a prepared split on disk), the ``model`` (a factory of fresh or checkpointed models),
the ``score`` (a registered ``ScoreSpec`` or any function of an ``MCMoments``), the
``selection`` rule, the ``oracle`` (``None``: people answer through the annotation app)
and the label ``store``. ``ActiveLearningLoop.from_config`` builds each of them from a
``RunConfig``; any of them can be passed in instead.

Resume needs no separate journal: every step leaves an artifact written atomically, and the
loop derives where it stands from them.

| step of cycle c          | done when                                        |
| ------------------------ | ------------------------------------------------ |
| queries of cycle c       | the label database holds queries with cycle c    |
| answers of cycle c       | none of them is open                             |
| training                 | ``checkpoints/cycle_{c:03d}.pt`` exists          |
| evaluation               | ``metrics.jsonl`` has a row for (c, split)       |
| selection for cycle c+1  | the label database holds queries with cycle c+1  |

Every random choice is seeded from (seed, stream, cycle, image) (``balseg.seeding``), so a
run killed at any point and resumed ends with the same labels as an uninterrupted run.

Memory does not grow with the pool: images are read per batch from the prepared split,
scores are turned into picks batch by batch, training labels are the answered points
(``SparseLabels``), and evaluation reads its targets per image (docs/architecture.md,
"Memory").
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from balseg.acquisition.registry import ScoreSpec
from balseg.config import RunConfig
from balseg.data import PreparedSplit, SegAugment, to_original_coords, to_work_coords
from balseg.data.regions import best_pixel, region_scores
from balseg.devices import resolve_device
from balseg.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    shard,
)
from balseg.errors import ConfigError, MissingFileError, TrainingDivergedError
from balseg.labels import LabelStore
from balseg.loop.parts import Pool, Selection
from balseg.loop.setup import build_collaborators, resolve_defaults
from balseg.mc import PoolBatch, as_score_spec, iter_pool_scores
from balseg.models import ModelFactory, input_mean_std, read_checkpoint
from balseg.rundir import RunDir
from balseg.seeding import Stream, rng_for, seed_for, torch_generator
from balseg.strategy import SUPERVISED
from balseg.train import TrainSettings, confusion_matrix, iou_from_confusion, train_cycle
from balseg.train.estimate import TrainEstimate
from balseg.train.labels import DenseLabels, RegionLabels, SparseLabels, agreement
from balseg.train.pseudo import PseudoLabels, PseudoWriter

log = logging.getLogger(__name__)

INITIAL_STRATEGY = "initial"


@dataclass
class RunResult:
    run_dir: Path
    status: str  # "done" | "waiting_for_answers"
    cycles_done: int
    open_queries: int = 0


@dataclass
class _Clock:
    """Time this run has spent, across every process that worked on it (progress.json)."""

    rundir: RunDir
    prior: float = 0.0
    cycles: dict[str, dict[str, float]] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def load(cls, rundir: RunDir) -> _Clock:
        raw = rundir.read_progress()
        return cls(rundir, float(raw.get("wall_time_s", 0.0)),
                   {str(k): dict(v) for k, v in (raw.get("cycles") or {}).items()})

    def wall(self) -> float:
        return self.prior + time.perf_counter() - self.started

    def record(self, cycle: int, **values: float) -> None:
        self.cycles.setdefault(str(cycle), {}).update(values)
        self.save()

    def of(self, cycle: int) -> dict[str, float]:
        return dict(self.cycles.get(str(cycle), {}))

    def save(self) -> None:
        self.rundir.write_progress({"wall_time_s": self.wall(), "cycles": self.cycles})


class ActiveLearningLoop:
    """One run directory: its config, collaborators, label database, checkpoints, metrics."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        *,
        pool: Pool,
        eval_sets: dict[str, PreparedSplit],
        model: ModelFactory,
        score: ScoreSpec | str | Callable[..., Any] | None,
        selection: Selection | Callable[..., torch.Tensor],
        oracle: Any | None,
        store: LabelStore | None,
        ctx: DistContext | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.rundir = RunDir(run_dir)
        self.run_dir = self.rundir.path
        self.ctx = ctx or DistContext(device=resolve_device(cfg.device))
        self.main = self.ctx.is_main
        if self.ctx.world_size > 1 and cfg.train.unlabeled != "none":
            raise ConfigError(f"train.unlabeled: {cfg.train.unlabeled!r} runs in one process"
                              f" only ({self.ctx.world_size} were started); set it to none or"
                              " run without torchrun")
        self.progress = progress and self.main
        self.device = self.ctx.device
        self.pool = pool
        self.eval_sets = eval_sets
        self.models = model
        self.score = as_score_spec(score) if score is not None else None
        self.selection = selection
        self.oracle = oracle
        if self.main and store is None:
            raise ValueError("rank 0 needs the label store")
        self.store = store if self.main else None
        self.info = pool.data.info
        self.mean, self.std = input_mean_std(model.spec)
        self.clock = _Clock.load(self.rundir) if self.main else None
        # called after every training step with (cycle, step, model): learning curves
        self.on_train_step: Callable[[int, int, torch.nn.Module], None] | None = None
        self._owns_store = False

    # -- building from a config -------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: RunConfig, run_dir: str | Path, *, progress: bool = True,
                    ctx: DistContext | None = None, **given: Any) -> ActiveLearningLoop:
        """Prepare the run directory and build every collaborator the config describes;
        ``given`` (pool, eval_sets, model, score, selection, oracle, store) replaces any."""
        cfg = resolve_defaults(cfg)
        ctx = ctx or DistContext(device=resolve_device(cfg.device))
        parts = build_collaborators(cfg, RunDir(run_dir), ctx=ctx, progress=progress, **given)
        loop = cls(cfg, run_dir, ctx=ctx, progress=progress, **parts)
        loop._owns_store = "store" not in given
        return loop

    def close(self) -> None:
        """Close the label database if this loop opened it (``from_config``); SQLite then
        folds its write-ahead log into ``labels.sqlite``, so the file alone holds every
        query and answer."""
        if self.store is not None and self._owns_store:
            self.store.close()
            self.store = None

    def _db(self) -> LabelStore:
        assert self.store is not None, "only rank 0 touches the label database"
        return self.store

    def read_metrics(self) -> list[dict[str, Any]]:
        return self.rundir.read_metrics()

    def checkpoint_path(self, cycle: int) -> Path:
        return self.rundir.checkpoint(cycle)

    # -- steps ------------------------------------------------------------------------------
    def _load_model(self, cycle: int) -> torch.nn.Module:
        """The cycle's checkpoint; rank 0 reads it and sends it (no shared disk needed)."""
        state = None
        if self.main:
            state = read_checkpoint(self.checkpoint_path(cycle))["model"]
        return self.models.load_state(broadcast_object(state, self.ctx, "send checkpoint"))

    def initial_queries(self) -> None:
        k = self.cfg.budget.initial_pixels_per_image
        rows = []
        regions = self.pool.regions
        for i, iid in enumerate(self.pool.data.image_ids):
            h, w = self.pool.data.valid_size(i)
            rng = rng_for(self.cfg.seed, Stream.INITIAL_PIXELS, i)
            if regions is None:
                flat = rng.choice(h * w, size=min(k, h * w), replace=False)
            else:  # random pixels of k different regions: a click labels its region
                ids = regions[i][:h, :w].reshape(-1).numpy()
                order = rng.permutation(h * w)
                _, first = np.unique(ids[order], return_index=True)
                flat = order[np.sort(first)[:k]]
            yx = torch.from_numpy(np.stack([flat // w, flat % w], axis=1))
            rows.extend(self._to_rows(iid, i, yx, None))
        self._db().add_queries(rows, cycle=0, strategy=INITIAL_STRATEGY)

    def _to_rows(self, image_id: str, index: int, yx_work: torch.Tensor,
                 scores: torch.Tensor | None, predicted: torch.Tensor | None = None
                 ) -> list[tuple]:
        data = self.pool.data
        yx0 = to_original_coords(yx_work, data.valid_size(index), data.orig_sizes[index])
        rows, seen = [], set()
        for j, (y, x) in enumerate(yx0.tolist()):
            if (y, x) in seen:  # work resolution above the original: two map to one
                continue
            seen.add((y, x))
            s = None if scores is None else float(scores[j])
            rows.append((image_id, y, x, s) if predicted is None
                        else (image_id, y, x, s, int(predicted[j])))  # the page's suggestion
        return rows

    def sparse_labels(self, cycle: int) -> SparseLabels | RegionLabels:
        """Training labels (working resolution) from the resolved answers up to ``cycle``;
        with regions, each answer fills its region (``RegionLabels``)."""
        data = self.pool.data
        by_image: dict[str, list[tuple[int, int, int]]] = {}
        for iid, y, x, c in self._db().resolved_labels(max_cycle=cycle):
            by_image.setdefault(iid, []).append((y, x, c))
        points = {}
        for iid, items in by_image.items():
            i = data.index_of(iid)
            arr = torch.tensor(items, dtype=torch.int64)
            yx = to_work_coords(arr[:, :2], data.valid_size(i), data.orig_sizes[i])
            points[i] = (yx, arr[:, 2].to(torch.uint8))
        answers = SparseLabels(tuple(data.labels.shape[1:]), points)
        return answers if self.pool.regions is None else RegionLabels(answers, self.pool.regions)

    def training_labels(self, cycle: int) -> SparseLabels | RegionLabels | PseudoLabels:
        """What cycle ``cycle`` trains on: the answers, and with ``train.unlabeled: pseudo``
        the kept pseudo-labels of the previous cycle's pool pass (``PseudoLabels``)."""
        answers = self.sparse_labels(cycle)
        t = self.cfg.train
        if not t.pseudo or cycle == 0:
            return answers
        paths = self.rundir.pseudo_labels(cycle - 1)
        if not all(p.exists() for p in paths):
            raise MissingFileError(
                f"{paths[0]}: missing, and cycle {cycle} trains on the pseudo-labels of cycle"
                f" {cycle - 1}'s pool pass (train.unlabeled: {t.unlabeled}); restore it, or"
                " start a new run directory")
        data = self.pool.data
        queried = {}
        for iid, yx0 in self._queried_by_image(max_cycle=cycle).items():
            i = data.index_of(iid)
            queried[i] = to_work_coords(torch.from_numpy(yx0), data.valid_size(i),
                                        data.orig_sizes[i])
        return PseudoLabels.open(answers, paths, threshold=t.unlabeled_threshold,
                                 class_top=t.unlabeled_class_top, queried=queried)

    def answer_open(self, cycle: int) -> int:
        """The oracle answers every open query; returns how many remain open (people)."""
        open_q = self._db().open_queries(cycle=cycle)
        if self.oracle is not None and open_q:
            source = "initial" if cycle == 0 else "oracle"
            self.oracle.answer_all(self._db(), open_q, source=source)
            # a live oracle (Label Studio) answers what people answered so far
            return len(self._db().open_queries(cycle=cycle))
        return len(open_q)

    def train(self, cycle: int, labels: SparseLabels | DenseLabels | None
              ) -> tuple[torch.nn.Module, dict[str, float]]:
        """Train the cycle's model on rank 0's ``labels`` (sent to every rank)."""
        if not isinstance(labels, DenseLabels):  # dense labels are read by every rank
            labels = broadcast_object(labels, self.ctx, "send training labels")
        t = self.cfg.train
        warm = t.warm_start and cycle > 0
        if warm:
            previous = self.checkpoint_path(cycle - 1)
            if self.main and not previous.exists():
                raise MissingFileError(
                    f"{previous}: missing, and cycle {cycle} warm-starts from it; restore it "
                    f"or set train.warm_start: false")
            model = self._load_model(cycle - 1)
        else:
            model = self.models.fresh()
        steps = t.warm_steps if warm and t.warm_steps else t.steps
        if self.is_supervised and t.supervised_steps:
            steps = t.supervised_steps
        settings = TrainSettings.from_config(t, steps=steps,
                                             seed=seed_for(self.cfg.seed, Stream.TRAIN, cycle))
        if self.is_supervised:  # the reference labels every pixel: nothing is unlabelled
            settings = dataclasses.replace(settings, consistency=False)
        a = t.augment
        augment = SegAugment(hflip=a.hflip, scale=a.scale, color_jitter=a.color_jitter,
                             mean=self.mean, std=self.std)
        hook = self.on_train_step
        callback = None if hook is None else (lambda step, m: hook(cycle, step, m))
        if self.progress:  # "cycle 0: 300 steps, about 12 min on this machine (cpu, ...)"
            key = ("train.supervised_steps" if self.is_supervised and t.supervised_steps
                   else "train.warm_steps" if warm and t.warm_steps else "train.steps")
            callback = TrainEstimate(cycle, steps, self.device, run_dir=self.run_dir,
                                     key=key, then=callback)
        try:
            stats = train_cycle(model, self.pool.data.images, labels, settings,
                                mean=self.mean, std=self.std, augment=augment,
                                device=self.device, progress=self.progress, ctx=self.ctx,
                                callback=callback)
            extra = {"train_steps": stats.steps, "train_time_s": stats.seconds,
                     "train_images_per_s": stats.images_per_s, "final_loss": stats.final_loss}
            extra.update(self._label_accuracy(labels))
            if self.main:
                # timings first: a process killed between the two retrains the cycle and
                # overwrites them, while the other order could leave a trained cycle without
                assert self.clock is not None
                self.clock.record(cycle, **extra)
                self.models.save(model, self.checkpoint_path(cycle), cycle)
                self.rundir.prune_checkpoints()  # warm start of a resumed cycle needs c-1
        except TrainingDivergedError as err:
            raise TrainingDivergedError(self._diverged(cycle, err)) from None
        barrier(self.ctx, "save checkpoint")
        return model.eval(), extra

    def _label_accuracy(self, labels: object) -> dict[str, object]:
        """How the labels that no answer gave directly (pseudo-labels, filled regions) agree
        with the pool's masks, where they exist."""
        out: dict[str, object] = {}
        masks, c = self.pool.data.labels, self.info.num_classes
        if isinstance(labels, PseudoLabels):
            out.update(labels.accuracy(masks, c))
            labels = labels.answers
        if isinstance(labels, RegionLabels):
            found = agreement(labels, masks, len(self.pool), c)
            out.update({f"region_{k}": v for k, v in found.items()})
        return out

    def _diverged(self, cycle: int, err: TrainingDivergedError) -> str:
        """What went wrong in which cycle, and what this run can do about it."""
        what = str(err).removesuffix(TrainingDivergedError.ADVICE)
        lower = f"{self.cfg.train.lr / 10:g}"
        if cycle == 0:  # nothing trained yet: the run may still change its training
            how = (f"; no checkpoint was saved. Continue with a lower learning rate: balseg"
                   f" run {self.run_dir} --set train.lr={lower}")
        else:
            done = "cycle 0 was" if cycle == 1 else f"cycles 0-{cycle - 1} were"
            how = (f"; no checkpoint of cycle {cycle} was saved. This run's {done} trained"
                   f" with train.lr={self.cfg.train.lr:g}, so the run keeps that rate: start"
                   f" a new run directory with a lower one (--set train.lr={lower} --run-dir"
                   " NEW_DIR)")
        return f"cycle {cycle}: {what}{how}"

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, Any]:
        """mIoU on ``split``; each rank scores its share, confusion matrices are summed."""
        prepared = self.eval_sets[split]
        mine = shard(range(len(prepared)), self.ctx)
        cm = confusion_matrix(model, prepared, mine, mean=self.mean, std=self.std,
                              batch_size=self.cfg.train.eval_batch_size, device=self.device,
                              progress=self.progress)
        all_reduce_sum(cm, self.ctx, f"sum confusion matrices of {split}")
        miou, per_class = iou_from_confusion(cm)
        return {"miou": miou, "per_class_iou": per_class}

    def _queried_by_image(self, max_cycle: int | None = None) -> dict[str, np.ndarray]:
        by: dict[str, list[tuple[int, int]]] = {}
        for q in self._db().queries():
            if max_cycle is None or q.cycle <= max_cycle:
                by.setdefault(q.image_id, []).append((q.y, q.x))
        return {k: np.asarray(v, dtype=np.int64).reshape(-1, 2) for k, v in by.items()}

    def select(self, model: torch.nn.Module, cycle: int) -> float:
        """Score the pool with the cycle's model and add the next cycle's queries.

        Each rank scores its share batch by batch and turns each image's scores into picks
        at once; only the picks (and the few overlay maps) leave a batch. Rank 0 writes
        every pick in one transaction, so the cycle's queries appear all at once or not.
        """
        a = self.cfg.acquisition
        data = self.pool.data
        n = len(data)
        queried = self._queried_by_image() if self.main else None
        queried = broadcast_object(queried, self.ctx, "send queried pixels")
        mine = shard(range(n), self.ctx)
        hw = data.valid_hw
        start = time.perf_counter()
        picks: dict[int, list[tuple[str, int, int, float | None]]] = {}
        overlay_maps: dict[int, torch.Tensor] = {}
        score = self.score_at(cycle)
        needs_classes = bool(getattr(self.selection, "needs_classes", False))
        writer = (PseudoWriter(self.rundir.pseudo_labels(cycle), n, tuple(data.labels.shape[1:]),
                               self.info.num_classes)
                  if self.cfg.train.pseudo and self.main else None)
        batches = iter_pool_scores(
            model, data.images, mine, valid_hw=hw, strategy=score, samples=a.mc_samples,
            seed=self.cfg.seed, cycle=cycle, mean=self.mean, std=self.std,
            batch_size=a.score_batch_size, score_kwargs=score.kwargs(a),
            device=self.device, progress=self.progress, resolution=a.score_resolution,
            predictions=needs_classes or writer is not None or self.oracle is None)
        try:
            for batch in batches:
                self._pick(batch, cycle, queried, needs_classes, picks, overlay_maps, writer)
            if writer is not None:  # before the queries: a cycle with queries has them
                writer.commit()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        score_time = time.perf_counter() - start
        gathered = all_gather_objects((picks, overlay_maps), self.ctx, "gather selections")
        if self.main:
            merged: dict[int, list] = {}
            maps: dict[int, torch.Tensor] = {}
            for part, part_maps in gathered:
                merged.update(part)
                maps.update(part_maps)
            rows = [row for i in range(n) for row in merged[i]]
            assert self.clock is not None  # timings first, as in train()
            self.clock.record(cycle, score_time_s=score_time)
            self._db().add_queries(rows, cycle=cycle + 1, strategy=score.name)
            if maps:
                self._write_overlays(cycle, maps, score.name)
        barrier(self.ctx, "write queries")
        return score_time

    def _pick(self, batch: PoolBatch, cycle: int, queried: dict[str, np.ndarray],
              needs_classes: bool, picks: dict[int, list], overlay_maps: dict[int, torch.Tensor],
              writer: PseudoWriter | None) -> None:
        """The picks of one scored batch (and its pseudo-labels, overlay maps)."""
        data = self.pool.data
        hw = data.valid_hw
        empty = np.zeros((0, 2), dtype=np.int64)
        scores, preds = batch.scores, batch.predicted
        for j, i in enumerate(batch.indices):
            iid = data.image_ids[i]
            vh, vw = data.valid_size(i)
            candidates = torch.zeros(hw, dtype=torch.bool)
            candidates[:vh, :vw] = True
            done = torch.from_numpy(queried.get(iid, empty))
            if len(done):
                yx = to_work_coords(done, (vh, vw), data.orig_sizes[i])
                candidates[yx[:, 0], yx[:, 1]] = False
            g = torch_generator(self.cfg.seed, Stream.SELECT, cycle, i)
            if self.pool.regions is not None:
                picked, picked_scores = self._pick_regions(i, scores[j], candidates, g)
            else:
                extra = {}
                if needs_classes:  # asked for: even a model-free score has them
                    assert preds is not None
                    extra["classes"] = preds[j]
                picked = self.selection(scores[j], self.cfg.budget.pixels_per_cycle,
                                        candidates, g, **extra)
                picked_scores = scores[j][picked[:, 0], picked[:, 1]]
            picks[i] = self._to_rows(iid, i, picked, picked_scores, None if preds is None
                                     else preds[j][picked[:, 0], picked[:, 1]])
            if i < self.cfg.overlay_images:
                overlay_maps[i] = scores[j][:vh, :vw].clone()
            if writer is not None:
                assert preds is not None and batch.confidence is not None
                writer.write(i, preds[j][:vh, :vw], batch.confidence[j][:vh, :vw])

    def _pick_regions(self, i: int, scores: torch.Tensor, candidates: torch.Tensor,
                      g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """At most one query per region: regions ranked by their pixels' aggregate score
        (``acquisition.region_score``) under the selection rule, a region already queried
        never again, and each query at its region's highest-scored pixel: (picks, scores)."""
        data = self.pool.data
        vh, vw = data.valid_size(i)
        assert self.pool.regions is not None
        regions = self.pool.regions[i][:vh, :vw].long()
        s = scores[:vh, :vw]
        per_region = region_scores(regions, s, self.cfg.acquisition.region_score)
        open_region = torch.ones(len(per_region), dtype=torch.bool)
        asked = ~candidates[:vh, :vw]
        open_region[regions[asked].unique()] = False
        chosen = self.selection(per_region[None], self.cfg.budget.pixels_per_cycle,
                                open_region[None], g)[:, 1]
        yx = torch.tensor([best_pixel(regions, s, int(r)) for r in chosen.tolist()],
                          dtype=torch.long).reshape(-1, 2)
        return yx, per_region[chosen]  # working (y, x) of the picks, their regions' scores

    def score_at(self, cycle: int) -> ScoreSpec:
        """The score the model of ``cycle`` ranks the pool with: ``acquisition.first_strategy``
        for the first ``first_cycles`` acquisitions when set, else the loop's score."""
        name = self.cfg.acquisition.score_at(cycle)
        if name != self.cfg.acquisition.strategy:
            return as_score_spec(name)
        assert self.score is not None
        return self.score

    def _write_overlays(self, cycle: int, maps: dict[int, torch.Tensor], name: str) -> None:
        from balseg.loop.overlays import OverlayItem, write_overlays

        items = []
        for i in sorted(maps):
            iid = self.pool.data.image_ids[i]
            queries = [(q.y, q.x, q.cycle) for q in self._db().queries(image_id=iid)]
            items.append(OverlayItem(iid, self.pool.original_image(i), maps[i], queries))
        write_overlays(self.rundir, cycle, items, name)

    # -- the loop ---------------------------------------------------------------------------
    @property
    def is_supervised(self) -> bool:
        return self.cfg.acquisition.strategy == SUPERVISED

    def _plan(self, cycle: int, metrics: list[dict[str, Any]]) -> dict[str, Any]:
        """What cycle ``cycle`` still needs, decided by rank 0 from the run's artifacts."""
        plan = None
        if self.main:
            open_left = self.answer_open(cycle)
            done_splits = {r["split"] for r in metrics if r["cycle"] == cycle}
            evals = [s for s in self.eval_sets if s not in done_splits]
            last = cycle == self.cfg.budget.cycles
            select = not last and (cycle + 1) not in self._db().cycles()
            # a finished cycle needs no model: its checkpoint may be pruned (the loop keeps
            # the last two) or left behind (stored benchmark runs keep only their metrics
            # and labels), and retraining it would waste a whole cycle; the last cycle is
            # trained until it is recorded (its model is what the run hands over), with an
            # evaluation split or without
            trained = self.checkpoint_path(cycle).exists()
            recorded = cycle in {r["cycle"] for r in metrics}
            unrecorded = not self.eval_sets and not recorded
            plan = {
                "open_left": open_left,
                "train": not trained and bool(evals or select or (last and not recorded)),
                "eval": evals,
                "record": unrecorded,
                "select": select,
            }
        return broadcast_object(plan, self.ctx, f"plan cycle {cycle}")

    def run(self) -> RunResult:
        """Continue the run from its artifacts until the budget is spent or people's answers
        are needed. The time spent is saved (``progress.json``) however the run ends."""
        body = self._run_supervised if self.is_supervised else self._run_cycles
        try:
            result = body()
        except BaseException:
            if self.clock is not None:  # best effort: never hide why the run stopped
                with contextlib.suppress(Exception):
                    self.clock.save()
            raise
        if self.clock is not None:
            self.clock.save()
        return result

    def _run_cycles(self) -> RunResult:
        cycles = self.cfg.budget.cycles
        metrics = self.read_metrics() if self.main else []
        if self.main and 0 not in self._db().cycles():
            self.initial_queries()
        if self.main and hasattr(self.oracle, "sync"):  # Label Studio: changes since the
            self.oracle.sync(self._db())  # last process count before any cycle trains
        # counted as the config counts them: cycle 0 trains the first model, then
        # budget.cycles acquisition cycles ("cycle 2 of 4", "2/4")
        bar = tqdm(total=cycles, unit="cycle", disable=not self.progress)
        for cycle in range(cycles + 1):
            bar.set_description(f"{self.cfg.name}: cycle {cycle} of {cycles}")
            plan = self._plan(cycle, metrics)
            if plan["open_left"]:
                bar.close()
                return RunResult(self.run_dir, "waiting_for_answers", cycle,
                                 plan["open_left"])
            model = None
            if plan["train"]:
                model, _ = self.train(cycle, self.training_labels(cycle) if self.main
                                      else None)
            elif plan["eval"] or plan["select"]:
                model = self._load_model(cycle)
            if plan["select"]:
                self.select(model, cycle)
            if plan["eval"] or plan["record"]:
                assert model is not None or not plan["eval"]
                results = {s: self.evaluate(model, s) for s in plan["eval"]}
                if self.main:
                    if plan["record"]:
                        results = {"none": {"miou": None, "per_class_iou": None}}
                    metrics.extend(self._rows(cycle, results))
                    self.rundir.write_metrics(metrics)
                    last = metrics[-1]
                    bar.set_postfix(px=f"{last['pixels_per_image']:.0f}",
                                    miou="-" if last["miou"] is None
                                    else f"{last['miou']:.3f}")
            bar.update(1 if cycle else 0)
        bar.close()
        barrier(self.ctx, "finish")
        return RunResult(self.run_dir, "done", cycles + 1)

    def _rows(self, cycle: int, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Metrics rows of one cycle: every field filled whichever process trained it."""
        assert self.clock is not None
        counts = self._budget_counts(cycle)
        timings = {"train_steps": None, "train_time_s": None, "train_images_per_s": None,
                   "final_loss": None, "score_time_s": None, **self.clock.of(cycle)}
        return [{"cycle": cycle, "split": split, **counts, **res, **timings,
                 "wall_time_s": self.clock.wall(), "strategy": self.score.name
                 if not self.is_supervised else SUPERVISED, "seed": self.cfg.seed}
                for split, res in results.items()]

    def _budget_counts(self, cycle: int) -> dict[str, float]:
        if self.is_supervised:
            total = sum(h * w for h, w in self.pool.data.orig_sizes)
            n = len(self.pool)
            return {"queried_pixels": total, "labeled_pixels": total,
                    "pixels_per_image": total / n, "labeled_fraction": 1.0}
        queried = sum(1 for q in self._db().queries() if q.cycle <= cycle)
        labeled = len(self._db().resolved_labels(max_cycle=cycle))
        n = len(self.pool)
        total = sum(h * w for h, w in self.pool.data.orig_sizes)
        return {"queried_pixels": queried, "labeled_pixels": labeled,
                "pixels_per_image": queried / n, "labeled_fraction": queried / total}

    def _run_supervised(self) -> RunResult:
        metrics = self.read_metrics() if self.main else []
        plan = None
        if self.main:
            done = {r["split"] for r in metrics}
            plan = {"trained": self.checkpoint_path(0).exists(),
                    "eval": [s for s in self.eval_sets if s not in done],
                    "record": not self.eval_sets and not metrics}
        plan = broadcast_object(plan, self.ctx, "plan supervised run")
        if not plan["eval"] and not plan["record"]:  # finished: nothing to load, train, write
            barrier(self.ctx, "finish")
            return RunResult(self.run_dir, "done", 1)
        if plan["trained"]:
            model = self._load_model(0)
        else:
            model, _ = self.train(0, DenseLabels(self.pool.data.labels))
        results = {s: self.evaluate(model, s) for s in plan["eval"]}
        if self.main:
            if plan["record"]:
                results = {"none": {"miou": None, "per_class_iou": None}}
            metrics.extend(self._rows(0, results))
            self.rundir.write_metrics(metrics)
        barrier(self.ctx, "finish")
        return RunResult(self.run_dir, "done", 1)


__all__ = ["ActiveLearningLoop", "RunResult"]
