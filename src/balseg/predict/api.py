"""``balseg.load_run(path)``: a finished (or running) run from Python.

    run = balseg.load_run("runs/camvid-balentacq")
    run.class_names, run.palette, run.config, run.store, run.cycles
    preds = run.predict(["street.png"])          # masks at the images' original size
    maps = run.scores(["street.png"], "entropy", samples=10)

Predictions are those of ``balseg predict`` (the same preparation, the same upsampling to
the original size; ``balseg.predict.engine``). Nothing here is loaded before it is used:
the model on the first ``model()``/``predict()``, the label store on the first ``store``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from balseg.errors import DataError
from balseg.predict.job import load_predictor, open_run_info, resolve_device

ImageLike = Any  # an HxWx3 uint8 array, or the path of an image file


@dataclass
class Prediction:
    """One image's prediction at its original size."""

    classes: np.ndarray
    """[H, W] uint8: the run's class ids (``Run.class_names[id]``)."""
    confidence: np.ndarray
    """[H, W] float32: the largest softmax probability of each pixel."""
    probabilities: np.ndarray | None = None
    """[C, H, W] float32 softmax, when ``predict(..., probabilities=True)``."""
    cycle: int = -1


class Run:
    """A run directory: its config, classes, label store and checkpoints' models."""

    def __init__(self, path: str | Path) -> None:
        info = open_run_info(path)
        self._info = info
        self.path = info.rundir.path
        self.rundir = info.rundir
        self.config = info.config
        self.class_names: list[str] = info.class_names
        self.palette: np.ndarray = info.palette  # [C, 3] uint8 RGB
        self._store: Any = None
        self._predictors: dict[tuple[int, str, str | None, int], Any] = {}
        self.device: str = info.config.device  # the run's; a call's device= wins

    def __repr__(self) -> str:
        return f"balseg.Run({str(self.path)!r}, cycles={self.cycles})"

    # -- what the run holds ---------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def cycles(self) -> list[int]:
        """Cycles whose checkpoint is on disk (the loop keeps the last two)."""
        return self.rundir.checkpoint_cycles()

    @property
    def store(self) -> Any:
        """The run's ``LabelStore``, read-only (every query and answer)."""
        if self._store is None:
            from balseg.errors import MissingFileError
            from balseg.labels import LabelStore

            if not self.rundir.labels.is_file():
                raise MissingFileError(f"{self.rundir.labels} is missing: the run has no label"
                                       " database yet")
            self._store = LabelStore(self.rundir.labels, readonly=True)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- models ---------------------------------------------------------------------------------
    def _predictor(self, cycle: int | None, device: str | None, score: str | None = None,
                   samples: int | None = None) -> Any:
        device = device or self.device
        resolved, _ = self.rundir.require_checkpoint(cycle)
        key = (resolved, str(resolve_device(device)), score, samples or 0)
        if key not in self._predictors:
            self._predictors[key] = load_predictor(self._info, cycle=resolved, device=device,
                                                   uncertainty=score, samples=samples)[0]
        return self._predictors[key]

    def model(self, cycle: int | None = None, *, device: str | None = None) -> Any:
        """The ``MCDropoutSegmenter`` of ``cycle``'s checkpoint (default: the latest), in
        eval mode. It takes normalised float images (``balseg.models.input_mean_std``);
        ``predict`` does all of that for you."""
        return self._predictor(cycle, device).model

    # -- prediction -----------------------------------------------------------------------------
    def predict(self, images: ImageLike | Iterable[ImageLike], *, cycle: int | None = None,
                batch_size: int | None = None, device: str | None = None,
                probabilities: bool = False) -> list[Prediction]:
        """Class maps of ``images`` (arrays HxWx3 uint8 RGB or file paths; one image or a
        list) at their original size, one ``Prediction`` per image, in order."""
        pred = self._predictor(cycle, device)
        resolved = self.rundir.require_checkpoint(cycle)[0]
        out: list[Prediction] = []
        for chunk in self._chunks(images, batch_size):
            for res in pred.predict(chunk, uncertainty=False, probabilities=probabilities):
                out.append(Prediction(res.classes, res.confidence, res.probabilities,
                                      resolved))
        return out

    def scores(self, images: ImageLike | Iterable[ImageLike], name: str,
               samples: int | None = None, *, cycle: int | None = None,
               batch_size: int | None = None, device: str | None = None) -> list[np.ndarray]:
        """Per-pixel uncertainty (float32 [H, W] at the original size, higher = more
        uncertain) of a registered score (``balseg.acquisition.registry.score_names()``)
        from ``samples`` MC-dropout samples (default: the run's ``acquisition.mc_samples``).
        Image i of the call draws its dropout masks from the run seed and i: the same call
        gives the same maps."""
        pred = self._predictor(cycle, device, name, samples)
        out: list[np.ndarray] = []
        for chunk in self._chunks(images, batch_size):
            keys = range(len(out), len(out) + len(chunk))
            for res in pred.predict(chunk, list(keys), uncertainty=True):
                out.append(res.uncertainty)
        return out

    def colorize(self, classes: np.ndarray) -> np.ndarray:
        """A class map in the run's palette (HxWx3 uint8)."""
        from balseg.predict.outputs import colorize

        return colorize(np.asarray(classes), self.palette)

    def _chunks(self, images: ImageLike | Iterable[ImageLike], batch_size: int | None
                ) -> Iterable[list[np.ndarray]]:
        size = batch_size or self.config.train.eval_batch_size
        items = _as_list(images)
        for start in range(0, len(items), size):
            yield [_load(img, start + j) for j, img in enumerate(items[start : start + size])]


def _as_list(images: Any) -> Sequence[Any]:
    if isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim in
                                           (2, 3) and images.dtype == np.uint8):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    try:
        return list(images)
    except TypeError:
        raise DataError(f"images: expected an image, a path or a list of them, got"
                        f" {type(images).__name__}") from None


def _load(image: Any, index: int) -> np.ndarray:
    from balseg.data.base import read_rgb
    from balseg.predict.engine import check_image

    if isinstance(image, (str, Path)):
        return read_rgb(Path(image))
    return check_image(image, f"image {index}")


def load_run(path: str | Path) -> Run:
    """Open a run directory (``balseg run``'s output) for prediction and inspection."""
    return Run(path)
