"""The run directory: its layout, its file formats and how to read and write them.

This module is the only place that spells a run directory's file names; every command
(``run``, ``evaluate``, ``predict``, ``report``, ``annotate``, ``export``, ``import``,
``backup``) reaches the files through ``RunDir``. ``docs/architecture.md``'s table of the
run directory is generated from ``LAYOUT`` (a test keeps the two equal).

Light on purpose: no torch import, so the annotation server and the report can use it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from balseg.errors import BalsegWarning, MissingFileError, RunDirError
from balseg.fsutil import atomic_write_bytes

CONFIG = "config.yaml"
DATASET = "dataset.json"
LABELS = "labels.sqlite"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
PROGRESS = "progress.json"
CHECKPOINTS = "checkpoints"
OVERLAYS = "overlays"
REPORT = "report"
CONTINUE_LOG = "continue.log"
BACKUPS = "backups"
PREDICTIONS = "predictions"
PSEUDO = "pseudo"
EVAL_PREFIX = "eval_"
KEEP_CHECKPOINTS = 2
"""The loop keeps the last two checkpoints: a resumed warm-started cycle needs the one before."""

# (name, written by, content): the table in docs/architecture.md
LAYOUT: tuple[tuple[str, str, str], ...] = (
    (CONFIG, "`balseg run`", "validated snapshot of the run's config; a resumed run must match"
     " it, but for what docs/config.md lists (more cycles, runtime keys)"),
    (DATASET, "`balseg run`", "`DatasetMeta`: dataset, root, split, options, class names, palette,"
     " ignore index, pool size: enough to open the pool and show classes without a model"),
    (LABELS, "loop, oracle, annotation app, import", "the `LabelStore` (queries, answers, leases),"
     " SQLite in WAL mode: recent answers may sit in `labels.sqlite-wal` while a process has"
     " it open, so copy it with `balseg backup`"),
    (METRICS, "loop", "one `MetricsRow` per cycle and evaluated split (JSON lines)"),
    (METRICS_CSV, "loop", "the same rows as CSV, the union of their columns"),
    (PROGRESS, "loop", "time spent by earlier processes of this run (wall, training, scoring),"
     " so that resumed runs report the whole run's time"),
    (f"{CHECKPOINTS}/", "loop", "`cycle_XXX.pt` (model weights, model spec, cycle); the last"
     f" {KEEP_CHECKPOINTS} kept; written atomically, never with non-finite weights"),
    (f"{OVERLAYS}/", "loop", "`cycle_XXX_<image>_<kind>.png`: what the model of cycle XXX"
     " wants labelled (0-1, the score's rank in the image) and the queries it chose, for a few"
     " pool images at original resolution; `cycle_XXX_<image>_scores.npy`: the raw scores"),
    (f"{EVAL_PREFIX}<split>.json", "`balseg evaluate`", "mIoU and per-class IoU of a checkpoint"
     " on any split"),
    (f"{REPORT}/", "`balseg report`", "the HTML report of this run (default output folder)"),
    (CONTINUE_LOG, "`balseg annotate --continue-run`, `balseg labelstudio-backend`", "output of"
     " the `balseg run` it started"),
    (f"{BACKUPS}/", "`balseg backup`", "consistent copies of the label database"),
    (f"{PSEUDO}/", "loop (`train.unlabeled: pseudo`)", "`cycle_XXX.npy`: each pool pixel's"
     " predicted class and confidence from cycle XXX's MC pass, `[N, 2, H, W]` uint8 at"
     " working resolution, read per image by the next cycle's training; `cycle_XXX.json`:"
     " the confidence histogram per class"),
    (f"{PREDICTIONS}/", "`balseg predict`", "`cycle_XXX_<split or images>/`: masks, colour"
     " masks, uncertainty maps and `manifest.csv` (default `--out`; docs/predict.md)"),
)

_CHECKPOINT = re.compile(r"^cycle_(\d{3,})\.pt$")
_OVERLAY = re.compile(r"^cycle_(?P<cycle>\d+)_(?P<image>.+)_(?P<kind>[A-Za-z]+)\.png$")


class DatasetMeta(BaseModel):
    """``dataset.json``: what opens the pool split and shows its classes without a model.

    ``images`` (optional, written by tools that build a run without a dataset adapter) maps
    image ids to paths relative to ``root``.
    """

    model_config = ConfigDict(extra="allow")

    dataset: str | None = None
    root: str | None = None
    split: str | None = None
    options: dict[str, Any] = {}
    class_names: list[str] | None = None
    palette: list[list[int]] | None = None
    ignore_index: int = 255
    num_images: int | None = None
    pixels_total: int | None = None
    images: dict[str, str] | None = None


class MetricsRow(BaseModel):
    """One evaluation of one cycle on one split. Every row carries every field, whichever
    process wrote it (timings of a cycle trained by an earlier process are carried over)."""

    model_config = ConfigDict(extra="allow")

    cycle: int
    split: str
    miou: float
    pixels_per_image: float
    labeled_fraction: float
    queried_pixels: int | None = None
    labeled_pixels: int | None = None
    per_class_iou: list[float | None] | None = None
    train_steps: int | None = None
    train_time_s: float | None = None
    train_images_per_s: float | None = None
    final_loss: float | None = None
    score_time_s: float | None = None
    wall_time_s: float | None = None
    strategy: str | None = None
    seed: int | None = None


REQUIRED_METRICS: tuple[str, ...] = tuple(
    name for name, field in MetricsRow.model_fields.items() if field.is_required()
)
_CSV_SKIP = ("per_class_iou", "pseudo_per_class_accuracy", "pseudo_per_class_pixels")


def safe_name(image_id: str) -> str:
    """An image id as a file-name part (letters, digits, '-', '_')."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in image_id)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Parse a ``metrics.jsonl``; the one reader every command uses.

    A partial last line (a process killed while appending, or a file copied mid-write) is
    skipped with a ``BalsegWarning``; a bad line anywhere else means the file is damaged,
    and dropping it would shift a curve, so that is a ``RunDirError`` naming file and line.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as err:
        raise RunDirError(f"cannot read {path}: {err}") from err
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    rows: list[dict[str, Any]] = []
    for pos, (lineno, line) in enumerate(numbered):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        except ValueError as err:
            if pos == len(numbered) - 1:
                warnings.warn(f"{path}:{lineno}: ignoring an unreadable last line (a run"
                              f" killed while writing?): {err}", BalsegWarning, stacklevel=2)
                break
            raise RunDirError(f"{path}:{lineno}: not a valid metrics row: {err}") from err
        missing = [k for k in REQUIRED_METRICS if k not in row]
        if missing:
            raise RunDirError(f"{path}:{lineno}: metrics row lacks {', '.join(missing)}")
        rows.append(row)
    return rows


def metrics_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV of the rows: the union of their scalar columns, in order of first appearance."""
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in _CSV_SKIP))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for r in rows:
        writer.writerow(["" if r.get(k) is None else r.get(k) for k in keys])
    return buf.getvalue()


class RunDir:
    """A run directory and every file in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    # -- paths --------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def dataset(self) -> Path:
        return self.path / DATASET

    @property
    def labels(self) -> Path:
        return self.path / LABELS

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def metrics_csv(self) -> Path:
        return self.path / METRICS_CSV

    @property
    def progress(self) -> Path:
        return self.path / PROGRESS

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def overlays_dir(self) -> Path:
        return self.path / OVERLAYS

    @property
    def report_dir(self) -> Path:
        return self.path / REPORT

    @property
    def continue_log(self) -> Path:
        return self.path / CONTINUE_LOG

    @property
    def backups_dir(self) -> Path:
        return self.path / BACKUPS

    def backup_file(self, stamp: str) -> Path:
        """``backups/labels-<stamp>.sqlite``: one consistent copy of the label database."""
        return self.backups_dir / f"{Path(LABELS).stem}-{stamp}{Path(LABELS).suffix}"

    @property
    def predictions_dir(self) -> Path:
        return self.path / PREDICTIONS

    def default_predictions(self, cycle: int, what: str) -> Path:
        """``balseg predict``'s output folder when no ``--out`` is given: one per cycle and
        input (a split's name, or ``images`` for files), so predictions of different
        checkpoints never mix."""
        return self.predictions_dir / f"cycle_{cycle:03d}_{safe_name(what)}"

    def eval_file(self, split: str) -> Path:
        return self.path / f"{EVAL_PREFIX}{split}.json"

    def overlay(self, cycle: int, image_id: str, kind: str) -> Path:
        return self.overlays_dir / f"cycle_{cycle:03d}_{safe_name(image_id)}_{kind}.png"

    def overlay_scores(self, cycle: int, image_id: str) -> Path:
        """The raw score map beside the ``uncertainty`` picture (float32 ``.npy``)."""
        return self.overlays_dir / f"cycle_{cycle:03d}_{safe_name(image_id)}_scores.npy"

    @staticmethod
    def parse_overlay(name: str) -> tuple[int, str, str] | None:
        """(cycle, image part, kind) of an overlay file name, or None."""
        m = _OVERLAY.match(name)
        return (int(m["cycle"]), m["image"], m["kind"]) if m else None

    def checkpoint(self, cycle: int) -> Path:
        return self.checkpoints_dir / f"cycle_{cycle:03d}.pt"

    @property
    def pseudo_dir(self) -> Path:
        return self.path / PSEUDO

    def pseudo_labels(self, cycle: int) -> tuple[Path, Path]:
        """(array, histogram) of the pseudo-labels from cycle ``cycle``'s pool pass."""
        base = self.pseudo_dir / f"cycle_{cycle:03d}"
        return base.with_suffix(".npy"), base.with_suffix(".json")

    # -- what the directory holds -------------------------------------------------------------
    def exists(self) -> bool:
        return self.config.is_file()

    def is_started(self) -> bool:
        """A run has started once its label database exists (queries were written)."""
        return self.labels.is_file()

    def require(self, *names: str) -> None:
        """Refuse a folder that is not a run directory, naming the missing files."""
        if not self.path.is_dir():
            raise RunDirError(f"{self.path} is not a run directory (no such folder)")
        missing = [n for n in names if not (self.path / n).is_file()]
        if missing:
            raise RunDirError(f"{self.path} is not a run directory (no {' or '.join(missing)})")

    def make(self) -> None:
        """Create the folder and its subfolders; a folder one cannot write to is refused
        before any work is done."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.checkpoints_dir.mkdir(exist_ok=True)
            self.overlays_dir.mkdir(exist_ok=True)
        except OSError as err:
            raise RunDirError(f"run directory {self.path} is not writable: {err}") from None
        self.check_writable()

    def check_writable(self, folder: Path | None = None, *, advice: str = "") -> None:
        """Refuse, before any work, a folder one cannot create a file in (a read-only mount,
        another user's folder); ``advice`` says what to do instead."""
        folder = folder or self.path
        probe = folder / f".write-test-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            reason = err.strerror or str(err)
            raise RunDirError(f"run directory {folder} is not writable ({reason})"
                              + (f"; {advice}" if advice else "")) from None

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete the ``.<name>.*.tmp`` files that an atomic write killed mid-way left."""
        removed = []
        for folder in (self.path, self.checkpoints_dir, self.overlays_dir, self.pseudo_dir):
            if not folder.is_dir():
                continue
            for tmp in folder.glob(".*.tmp"):
                try:
                    tmp.unlink()
                    removed.append(tmp)
                except OSError:
                    pass
        return removed

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint_cycles(self) -> list[int]:
        if not self.checkpoints_dir.is_dir():
            return []
        found = (_CHECKPOINT.match(p.name) for p in self.checkpoints_dir.iterdir())
        return sorted(int(m[1]) for m in found if m)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        cycles = self.checkpoint_cycles()
        return (cycles[-1], self.checkpoint(cycles[-1])) if cycles else None

    def require_checkpoint(self, cycle: int | None = None) -> tuple[int, Path]:
        """(cycle, path) of the given or latest checkpoint, or a clear error."""
        cycles = self.checkpoint_cycles()
        if not cycles:
            raise MissingFileError(f"{self.path} has no checkpoint yet: run it first"
                                   f" (balseg run {self.path})")
        if cycle is None:
            cycle = cycles[-1]
        if cycle not in cycles:
            raise MissingFileError(
                f"{self.checkpoint(cycle)}: no checkpoint of cycle {cycle} (this run keeps"
                f" {', '.join(map(str, cycles))}; the loop keeps the last {KEEP_CHECKPOINTS})")
        return cycle, self.checkpoint(cycle)

    def prune_checkpoints(self, keep: int = KEEP_CHECKPOINTS) -> None:
        for cycle in self.checkpoint_cycles()[:-keep]:
            self.checkpoint(cycle).unlink(missing_ok=True)

    # -- config snapshot ----------------------------------------------------------------------
    def read_config_raw(self) -> dict[str, Any]:
        import yaml

        try:
            raw = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{self.path} is a folder without {CONFIG}: not a run"
                              " directory") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise RunDirError(f"{self.config}: cannot read: {err}") from err
        if not isinstance(raw, dict):
            raise RunDirError(f"{self.config}: expected a YAML mapping")
        return raw

    def load_config(self) -> Any:
        """The validated ``RunConfig`` snapshot."""
        from balseg.config import parse_config

        return parse_config(self.read_config_raw(), source=str(self.config))

    def write_config(self, cfg: Any) -> None:
        atomic_write_bytes(self.config, cfg.to_yaml().encode())

    # -- dataset.json -------------------------------------------------------------------------
    def read_dataset(self) -> DatasetMeta:
        try:
            raw = json.loads(self.dataset.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MissingFileError(f"{self.dataset} is missing: is {self.path} a balseg run"
                                   " directory?") from None
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise RunDirError(f"cannot read {self.dataset}: {err}") from err
        if not isinstance(raw, dict):
            raise RunDirError(f"{self.dataset} must hold a JSON object")
        try:
            return DatasetMeta.model_validate(raw)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise RunDirError(f"{self.dataset}: {where}: {first['msg']}") from None

    def write_dataset(self, meta: DatasetMeta) -> None:
        atomic_write_bytes(self.dataset, meta.model_dump_json(exclude_none=True).encode())

    # -- metrics ------------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics)

    def write_metrics(self, rows: Iterable[dict[str, Any]]) -> None:
        """Both files, each atomically: the JSON lines (the record) and the CSV."""
        rows = list(rows)
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write_bytes(self.metrics, text.encode())
        atomic_write_bytes(self.metrics_csv, metrics_csv(rows).encode())

    # -- time spent by earlier processes ------------------------------------------------------
    def read_progress(self) -> dict[str, Any]:
        """What earlier processes recorded (``{"wall_time_s": ..., "cycles": {...}}``)."""
        try:
            raw = json.loads(self.progress.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            warnings.warn(f"{self.progress}: unreadable ({err}); timings restart from 0",
                          BalsegWarning, stacklevel=2)
            return {}
        return raw

    def write_progress(self, values: dict[str, Any]) -> None:
        atomic_write_bytes(self.progress, json.dumps(values, sort_keys=True).encode())

    # -- overlays -----------------------------------------------------------------------------
    def overlay_files(self) -> list[tuple[Path, int | None, str, str]]:
        """(path, cycle or None, image part, kind) of every PNG in ``overlays/``."""
        if not self.overlays_dir.is_dir():
            return []
        out = []
        for png in self.overlays_dir.glob("*.png"):
            parsed = self.parse_overlay(png.name)
            out.append((png, *parsed) if parsed else (png, None, png.stem, ""))
        return out


def layout_markdown() -> str:
    """The run-directory table of docs/architecture.md."""
    lines = ["| file | written by | content |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | {who} | {what} |" for name, who, what in LAYOUT]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m balseg.rundir: the table for docs/architecture.md
    print(layout_markdown())
