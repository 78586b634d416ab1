"""Reading run directories for the report: config, dataset, metrics, answers, overlays.

The report only reads what the run-directory contract (``balseg.rundir``) promises, so it
works on a finished run, a killed one and one that is still being written by the loop.
Files are reached through ``RunDir`` only; a ``RunDirError`` becomes a ``ReportError`` here,
at the report's boundary.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balseg.errors import BalsegWarning as ReportWarning
from balseg.errors import ConfigError, ReportError, RunDirError
from balseg.rundir import DatasetMeta, RunDir
from balseg.rundir import read_metrics as _read_metrics
from balseg.strategy import SUPERVISED, Strategy, run_label

UNKNOWN = "unknown"

__all__ = [
    "SUPERVISED",
    "UNKNOWN",
    "Overlay",
    "ReportError",
    "ReportWarning",
    "RunResults",
    "find_overlays",
    "is_run_dir",
    "read_answer_counts",
    "read_metrics",
    "read_run",
    "run_label",
]


@dataclass(frozen=True)
class Overlay:
    """One image the loop wrote into ``overlays/``; ``cycle`` is None for unrecognised names."""

    path: Path
    cycle: int | None
    image_id: str
    kind: str


@dataclass
class RunResults:
    """Everything the report uses from one run directory.

    ``strategy_label`` is the run's strategy spec (``balseg.strategy``); ``label`` is the
    curve it is drawn on, which is the same unless the report holds runs of several
    protocols (``balseg.report.protocols``), when a suffix such as ``[camvid]`` tells the
    curves apart.
    """

    path: Path
    config: dict[str, Any]
    dataset: DatasetMeta
    metrics: list[dict[str, Any]]
    strategy_label: str
    name: str
    seed: int | None
    strategy: str
    answer_counts: dict[int, Counter[int | str]] = field(default_factory=dict)
    overlays: list[Overlay] = field(default_factory=list)
    label: str = ""
    suggestions: dict[str, int] | None = None
    """People's answers given while the page showed the model's guess (``shown``), those
    that accepted it with one key and those that named its class (``LabelStore``)."""
    unevaluated: list[dict[str, Any]] = field(default_factory=list)
    """Rows of cycles trained without an evaluation split (``split`` "none", mIoU null):
    shown in the run's table, never on a curve."""

    def __post_init__(self) -> None:
        if not self.label:
            self.label = self.strategy_label

    @property
    def is_supervised(self) -> bool:
        return self.strategy == SUPERVISED

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.dataset.class_names or []]

    def no_evaluation_note(self) -> str | None:
        """A line saying the run was trained without an evaluation split, or None."""
        if self.metrics or not self.unevaluated:
            return None
        cycles = sorted({int(r["cycle"]) for r in self.unevaluated})
        span = f"{cycles[0]}-{cycles[-1]}" if len(cycles) > 1 else f"{cycles[0]}"
        return (f"{self.name}: no evaluation split (data.eval_splits is empty), so no mIoU;"
                f" cycles {span} trained")

    def splits(self) -> list[str]:
        """Evaluated splits in order of first appearance."""
        return list(dict.fromkeys(str(r["split"]) for r in self.metrics))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """``balseg.rundir.read_metrics`` (a partial last line is skipped with a warning), with
    a damaged file reported as a ``ReportError``."""
    try:
        return _read_metrics(path)
    except RunDirError as err:
        raise ReportError(str(err)) from err


def _read_labels(path: Path) -> tuple[dict[int, int], list[Any], dict[str, int] | None]:
    """(query id -> cycle, answers, the suggestion counts) of a label database, read
    without writing to it.

    SQLite opens a WAL database read-only only where it can create the ``-shm`` file next
    to it; in a read-only run directory (a read-only mount, another user's folder) it
    cannot, so the database (and its ``-wal``, which may hold the latest answers) is read
    from a copy in a temporary folder instead.
    """
    from balseg.labels import LabelStore, LabelStoreError

    def read(db: Path) -> tuple[dict[int, int], list[Any], dict[str, int] | None]:
        with LabelStore(db, readonly=True) as store:
            return ({q.id: q.cycle for q in store.queries()}, store.answers(),
                    store.suggestion_counts())

    try:
        return read(path)
    except (LabelStoreError, sqlite3.Error) as err:
        if _probe_writable(path.parent):
            raise  # not a read-only folder: a real problem, reported by the caller
        first = err
    with tempfile.TemporaryDirectory(prefix="balseg-report-") as tmp:
        copy = Path(tmp) / path.name
        for suffix in ("", "-wal"):
            src = path.with_name(path.name + suffix)
            if src.is_file():
                shutil.copyfile(src, copy.with_name(copy.name + suffix))
        try:
            return read(copy)
        except (LabelStoreError, sqlite3.Error):
            raise first from None


def _probe_writable(folder: Path) -> bool:
    probe = folder / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def read_answer_counts(path: Path) -> dict[int, Counter[int | str]]:
    """Answers per query cycle (``read_answers``'s first part)."""
    return read_answers(path)[0]


def read_answers(path: Path) -> tuple[dict[int, Counter[int | str]], dict[str, int] | None]:
    """Answers per query cycle: class id -> count, with 'unknown' for ``None`` answers.

    Every answer counts (two annotators on one pixel give two), since this shows what the
    annotators were asked and said, not the resolved training labels. A read-only run
    directory is read from a copy of its database (``_read_labels``).
    """
    from balseg.labels import LabelStoreError

    try:
        cycle_of, answers, suggestions = _read_labels(path)
    except (LabelStoreError, OSError, sqlite3.Error) as err:
        # A damaged database costs only the histogram, not the whole report.
        warnings.warn(f"{path}: cannot read answers: {err}", ReportWarning, stacklevel=3)
        return {}, None
    counts: dict[int, Counter[int | str]] = {}
    for answer in answers:
        cycle = cycle_of.get(answer.query_id)
        if cycle is None:
            continue
        key: int | str = UNKNOWN if answer.label is None else int(answer.label)
        counts.setdefault(cycle, Counter())[key] += 1
    return dict(sorted(counts.items())), suggestions


def find_overlays(run_dir: Path) -> list[Overlay]:
    """PNGs in ``overlays/``, newest cycle first, then by image so that pairs stay together."""
    found = [Overlay(*entry) for entry in RunDir(run_dir).overlay_files()]
    # Within an image, the uncertainty map first: what the model saw, then what it asked.
    kind_rank = {"uncertainty": 0, "queries": 1}
    return sorted(found, key=lambda o: (o.cycle is None, -(o.cycle or 0), o.image_id,
                                        kind_rank.get(o.kind, 2), o.kind))


def is_run_dir(path: Path) -> bool:
    rd = RunDir(path)
    return rd.config.is_file() and rd.metrics.is_file()


def _read_dataset(rd: RunDir) -> DatasetMeta:
    if not rd.dataset.is_file():
        warnings.warn(f"{rd.dataset} is missing; classes are shown by id", ReportWarning,
                      stacklevel=3)
        return DatasetMeta()
    try:
        return rd.read_dataset()
    except RunDirError as err:
        raise ReportError(str(err)) from err


def require_run_dir(path: str | Path) -> None:
    """A ReportError naming the path unless it holds a run's config and metrics."""
    rd = RunDir(path)
    try:
        rd.require(rd.config.name, rd.metrics.name)
    except RunDirError as err:
        raise ReportError(str(err)) from err


def read_run(path: str | Path) -> RunResults:
    """Read one run directory; raises ReportError naming the path when it is not one."""
    rd = RunDir(path)
    require_run_dir(rd.path)
    try:
        config = rd.read_config_raw()
    except RunDirError as err:
        raise ReportError(str(err)) from err
    acquisition = config.get("acquisition")
    if not isinstance(acquisition, dict) or not acquisition.get("strategy"):
        raise ReportError(f"{rd.config}: acquisition.strategy is missing")
    try:
        strategy = Strategy.from_acquisition(acquisition)
    except ConfigError as err:  # a strategy name or pool the grammar refuses
        raise ReportError(f"{rd.config}: acquisition: {err}") from err
    rows = read_metrics(rd.metrics)
    metrics = [r for r in rows if r.get("miou") is not None]
    if not rows:
        warnings.warn(f"{rd.metrics} has no rows yet", ReportWarning, stacklevel=2)
    answer_counts, suggestions = read_answers(rd.labels) if rd.labels.is_file() else ({}, None)
    seed = config.get("seed")
    try:
        seed = int(seed) if seed is not None else None
    except (TypeError, ValueError):
        raise ReportError(f"{rd.config}: seed: expected an integer, got {seed!r}") from None
    return RunResults(
        path=rd.path,
        config=config,
        dataset=_read_dataset(rd),
        metrics=metrics,
        strategy_label=strategy.label,
        name=str(config.get("name") or rd.path.name),
        seed=seed,
        strategy=strategy.score,
        answer_counts=answer_counts,
        suggestions=suggestions,
        overlays=find_overlays(rd.path),
        unevaluated=[r for r in rows if r.get("miou") is None],
    )
