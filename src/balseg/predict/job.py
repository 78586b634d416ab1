"""``balseg predict``: a checkpoint of a run applied to many images, written to a folder.

Images stream through in batches (at most two batches are in memory: the one the model
runs on and the next one being decoded), so any number of images of any size can be
predicted. Everything that can be wrong with the command (the run, its checkpoint, the
score, the output folder, the inputs) is checked before anything is written; an image that
cannot be read is reported, skipped, and the others go on (``PredictReport.failed``).
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from balseg.errors import BalsegWarning, ConfigError, DataError, RunDirError
from balseg.predict import outputs as O
from balseg.predict.inputs import Item, collect_files, split_items
from balseg.rundir import CONFIG, RunDir

POOL = "pool"
"""``--split pool``: the run's own pool split, whatever the dataset calls it."""


@dataclass
class PredictSettings:
    """The options of ``balseg predict`` (defaults: the run's own settings)."""

    cycle: int | None = None
    uncertainty: str | None = None
    mc_samples: int | None = None
    batch_size: int | None = None
    device: str | None = None  # None: the run's device
    overlay: bool = False
    split: str | None = None
    with_answers: bool = False
    overwrite: bool = False
    uncertainty_format: str = "png"
    data_root: Path | None = None
    progress: bool = True


@dataclass
class PredictReport:
    out: Path
    cycle: int
    total: int = 0
    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0  # the images' time: reading, model, writing (not loading the model)

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class RunInfo:
    """What a run directory says about its classes (no model, no torch)."""

    rundir: RunDir
    config: Any  # RunConfig
    class_names: list[str]
    palette: np.ndarray


def open_run_info(run_dir: str | Path) -> RunInfo:
    """The run's config and classes; a folder that is not a run is a RunDirError."""
    rd = RunDir(run_dir)
    rd.require(CONFIG)
    cfg = rd.load_config()
    meta = rd.read_dataset() if rd.dataset.is_file() else None
    if meta is not None and meta.class_names and meta.palette:
        names, palette = list(meta.class_names), np.asarray(meta.palette, np.uint8)
    else:
        from balseg.data import dataset_info

        info = dataset_info(cfg.data.dataset, cfg.data.root)
        names, palette = list(info.class_names), info.palette
    return RunInfo(rd, cfg, names, palette)


def resolve_device(name: str) -> Any:
    """``--device`` of predict and export (``balseg.devices``)."""
    from balseg.devices import resolve_device as resolve

    return resolve(name, what="--device")


def score_settings(cfg: Any, name: str | None, samples: int | None
                   ) -> tuple[Any, int, dict[str, Any]]:
    """(ScoreSpec or None, samples, score kwargs) of ``--uncertainty`` / ``--mc-samples``."""
    from balseg.acquisition.registry import get_spec

    if name is None:
        return None, 0, {}
    spec = get_spec(name)  # an unknown name is a ConfigError listing the valid ones
    t = cfg.acquisition.mc_samples if samples is None else int(samples)
    if t < spec.min_samples:
        raise ConfigError(f"--mc-samples {t}: score {name!r} needs at least {spec.min_samples}"
                          " MC samples")
    return spec, t, spec.kwargs(cfg.acquisition)


def load_predictor(info: RunInfo, *, cycle: int | None = None, device: str | None = None,
                   uncertainty: str | None = None, samples: int | None = None
                   ) -> tuple[Any, int, Path]:
    """(Predictor, cycle, checkpoint path) of a run's checkpoint (default: the latest)."""
    from balseg.data.prepare import Geometry
    from balseg.models import load_checkpoint
    from balseg.predict.engine import Predictor

    cycle, path = info.rundir.require_checkpoint(cycle)
    score, t, kwargs = score_settings(info.config, uncertainty, samples)
    dev = resolve_device(info.config.device if device is None else device)
    model, spec, _ = load_checkpoint(path, dev)
    if model.num_classes != len(info.class_names):
        raise RunDirError(f"{path}: the model predicts {model.num_classes} classes but the run"
                          f" has {len(info.class_names)}")
    predictor = Predictor(model, spec, Geometry.of(info.config.data), device=dev,
                          seed=info.config.seed, score=score, samples=t, score_kwargs=kwargs)
    return predictor, cycle, path


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def split_name(cfg: Any, split: str) -> str:
    return cfg.data.pool_split if split == POOL else split


def open_split(cfg: Any, split: str, data_root: Path | None) -> Any:
    from balseg.data import open_source

    d = cfg.data
    return open_source(d.dataset, str(data_root) if data_root else d.root,
                       split_name(cfg, split), **d.options)


def answers_by_image(rundir: RunDir) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """image id -> (ys, xs, classes) of every resolved answer (original coordinates):
    answers that agree; 'unknown' and conflicting answers give none."""
    from balseg.labels import LabelStore

    if not rundir.labels.is_file():
        raise RunDirError(f"{rundir.labels} is missing: --with-answers needs the run's label"
                          " database")
    with LabelStore(rundir.labels, readonly=True) as store:
        rows = store.resolved_labels()
    grouped: dict[str, list[tuple[int, int, int]]] = {}
    for image_id, y, x, c in rows:
        grouped.setdefault(image_id, []).append((y, x, c))
    out = {}
    for image_id, items in grouped.items():
        arr = np.asarray(items, dtype=np.int64)
        out[image_id] = (arr[:, 0], arr[:, 1], arr[:, 2])
    return out


def apply_answers(classes: np.ndarray, answers: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                  item: Item) -> tuple[np.ndarray, int]:
    """The mask with every answered pixel set to its answer; (mask, answered pixels)."""
    if answers is None:
        return classes, 0
    ys, xs, cs = answers
    h, w = classes.shape
    bad = (ys < 0) | (ys >= h) | (xs < 0) | (xs >= w)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise DataError(f"{item.path}: an answer of image {item.image_id!r} lies at (y={ys[j]},"
                        f" x={xs[j]}), outside its {w}x{h} pixels: the image changed since the"
                        " run asked about it")
    out = classes.copy()
    out[ys, xs] = cs.astype(np.uint8)
    return out, len(ys)


def _read(batch: Sequence[Item]) -> list[tuple[Item, np.ndarray | None, str | None]]:
    from balseg.data.base import read_rgb

    out = []
    for item in batch:
        try:
            out.append((item, read_rgb(item.path), None))
        except DataError as err:
            out.append((item, None, str(err)))
    return out


def _batches(items: Sequence[Item], size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _prefetched(items: Sequence[Item], size: int
                ) -> Iterator[list[tuple[Item, np.ndarray | None, str | None]]]:
    """Batches decoded one ahead in a thread (PIL releases the GIL while decoding)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for batch in _batches(items, size):
            nxt = pool.submit(_read, batch)
            if pending is not None:
                yield pending.result()
            pending = nxt
        if pending is not None:
            yield pending.result()


def predict_to_folder(run_dir: str | Path, inputs: Sequence[Path], out: Path | None,
                      settings: PredictSettings | None = None) -> PredictReport:
    """Predict ``inputs`` (files and folders) or ``settings.split`` into ``out``.

    Everything is checked before the first file is written: a bad run, checkpoint, cycle,
    score, output folder or input is an error and leaves nothing behind.
    """
    s = settings or PredictSettings()
    info = open_run_info(run_dir)
    cfg = info.config
    # -- check everything ----------------------------------------------------------------------
    if s.split is not None and inputs:
        raise ConfigError("give INPUT files/folders or --split, not both")
    if s.with_answers and (s.split is None
                           or split_name(cfg, s.split) != cfg.data.pool_split):
        raise ConfigError(f"--with-answers needs --split pool (the run's pool split"
                          f" {cfg.data.pool_split!r}): answers exist for pool images only")
    if s.batch_size is not None and s.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {s.batch_size}")
    cycle, ckpt = info.rundir.require_checkpoint(s.cycle)
    score_settings(cfg, s.uncertainty, s.mc_samples)  # fails before the model loads
    layout_out = Path(out) if out is not None else info.rundir.default_predictions(
        cycle, split_name(cfg, s.split) if s.split else "images")
    if layout_out.exists() and not layout_out.is_dir():
        raise DataError(f"--out {layout_out} is a file, not a folder: choose a folder")
    if s.split is not None:
        items = split_items(open_split(cfg, s.split, s.data_root))
    else:
        items = collect_files(inputs)
    answers = answers_by_image(info.rundir) if s.with_answers else None
    predictor, cycle, ckpt = load_predictor(info, cycle=cycle, device=s.device,
                                            uncertainty=s.uncertainty, samples=s.mc_samples)
    layout = O.Layout(layout_out, overlay=s.overlay, uncertainty=s.uncertainty,
                      uncertainty_format=s.uncertainty_format, class_names=info.class_names)
    state = {"run": str(info.rundir.path.resolve()), "cycle": cycle,
             "checkpoint": _file_hash(ckpt), "uncertainty": s.uncertainty,
             "mc_samples": predictor.samples if s.uncertainty else None,
             "with_answers": bool(s.with_answers), "class_names": info.class_names}
    old_state = O.read_state(layout_out) if layout_out.is_dir() else None
    same_settings = old_state is not None and all(
        old_state.get(k) == state.get(k) for k in O.SETTINGS)
    if not s.overwrite:
        O.check_state(layout_out, old_state, state)
    # -- write ---------------------------------------------------------------------------------
    try:
        layout_out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"--out {layout_out}: cannot create it ({err})") from None
    manifest = O.Manifest(layout_out, O.manifest_columns(info.class_names, s.with_answers))
    manifest.load()
    keys = {it.key for it in items}
    if s.overwrite and old_state is not None and not same_settings and manifest.rows:
        stale = [k for k in manifest.rows if k not in keys]
        if stale:
            warnings.warn(f"{layout_out}: dropping {len(stale)} manifest rows made with other"
                          " settings (their files stay on disk)", BalsegWarning, stacklevel=2)
        manifest.discard(stale)
    O.write_state(layout_out, state)
    O.write_classes(layout_out, info.class_names, info.palette)
    todo = [it for it in items if s.overwrite or it.key not in manifest.rows
            or not layout.complete(it.key)]
    manifest.discard([it.key for it in todo])
    report = PredictReport(layout_out, cycle, total=len(items), skipped=len(items) - len(todo))
    sidecar = {"score": s.uncertainty, "mc_samples": predictor.samples, "cycle": cycle}
    batch_size = s.batch_size or cfg.train.eval_batch_size
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=f"predicting (cycle {cycle})", unit="img",
               disable=not s.progress)
    started = time.perf_counter()
    try:
        for batch in _prefetched(todo, batch_size):
            for item, _, err in batch:
                if err is not None:
                    report.failed.append((str(item.path), err))
            ok = [(item, img) for item, img, err in batch if img is not None]
            if ok:
                results = predictor.predict([img for _, img in ok],
                                            [_seed_key(it.key) for it, _ in ok])
                for (item, img), res in zip(ok, results, strict=True):
                    try:
                        classes, answered = res.classes, None
                        if answers is not None:
                            classes, answered = apply_answers(
                                classes, answers.get(item.image_id or ""), item)
                        layout.write(item.key, img, classes, res.uncertainty, info.palette,
                                     sidecar)
                    except DataError as err:
                        report.failed.append((str(item.path), str(err)))
                        continue
                    manifest.add(O.manifest_row(item.key, str(item.path), classes,
                                                res.confidence, res.uncertainty,
                                                info.class_names, answered))
                    report.written += 1
            bar.update(len(batch))
            manifest.write_if_due()
    finally:
        bar.close()
        manifest.write()  # also after Ctrl-C: the finished images are kept
    report.seconds = time.perf_counter() - started
    return report


def _seed_key(key: str) -> int:
    from balseg.predict.engine import seed_key

    return seed_key(key)
