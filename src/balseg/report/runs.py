"""Reading run directories for the report: config, dataset, metrics, answers, overlays.

The report only reads what the run-directory contract (docs/architecture.md) promises, so it
works on a finished run, a killed one and one that is still being written by the loop.
"""

from __future__ import annotations

import json
import re
import sqlite3
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from balseg.errors import BalsegWarning as ReportWarning
from balseg.errors import ReportError

CONFIG_FILE = "config.yaml"
DATASET_FILE = "dataset.json"
METRICS_FILE = "metrics.jsonl"
LABELS_FILE = "labels.sqlite"
OVERLAYS_DIR = "overlays"
SUPERVISED = "supervised"
UNKNOWN = "unknown"

# The fields every curve and table needs; the rest of a metrics row is optional here.
_REQUIRED_METRICS = ("cycle", "split", "miou", "pixels_per_image", "labeled_fraction")
_OVERLAY_NAME = re.compile(r"^cycle_(?P<cycle>\d+)_(?P<image>.+)_(?P<kind>[A-Za-z]+)\.png$")


def run_label(config: dict[str, Any]) -> str:
    """Curve label of a run: its strategy, plus the variants that change what is compared.

    One function so that the report, the benchmark and docs name runs the same way.
    """
    acq = config.get("acquisition") or {}
    strategy = str(acq.get("strategy") or "?")
    label = strategy
    if acq.get("selection") == "pixelpick":
        label += "+pixelpick"
        pool = 100 * float(acq.get("top_fraction", 0.05))
        if abs(pool - 5) > 1e-9:  # not PixelPick's own 5%: the bench's +pixelpickN spelling
            label += f"{pool:g}"
    if acq.get("official_compat"):
        label += "+compat"
    return label


@dataclass(frozen=True)
class Overlay:
    """One image the loop wrote into ``overlays/``; ``cycle`` is None for unrecognised names."""

    path: Path
    cycle: int | None
    image_id: str
    kind: str


@dataclass
class RunData:
    """Everything the report uses from one run directory."""

    path: Path
    config: dict[str, Any]
    dataset: dict[str, Any]
    metrics: list[dict[str, Any]]
    label: str
    name: str
    seed: int | None
    strategy: str
    answer_counts: dict[int, Counter[int | str]] = field(default_factory=dict)
    overlays: list[Overlay] = field(default_factory=list)

    @property
    def is_supervised(self) -> bool:
        return self.strategy == SUPERVISED

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.dataset.get("class_names") or []]

    def splits(self) -> list[str]:
        """Evaluated splits in order of first appearance."""
        return list(dict.fromkeys(str(r["split"]) for r in self.metrics))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Parse ``metrics.jsonl``; a killed run may leave a partial last line, which is skipped.

    A bad line anywhere else means the file is corrupt, and silently dropping it would shift
    a curve, so that is an error naming the file and line.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    rows: list[dict[str, Any]] = []
    for pos, (lineno, line) in enumerate(numbered):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        except ValueError as err:
            if pos == len(numbered) - 1:
                warnings.warn(
                    f"{path}:{lineno}: ignoring an unreadable last line (a run killed while"
                    f" writing?): {err}",
                    ReportWarning,
                    stacklevel=2,
                )
                break
            raise ReportError(f"{path}:{lineno}: not a valid metrics row: {err}") from err
        missing = [k for k in _REQUIRED_METRICS if k not in row]
        if missing:
            raise ReportError(f"{path}:{lineno}: metrics row lacks {', '.join(missing)}")
        rows.append(row)
    return rows


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ReportError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(config, dict):
        raise ReportError(f"{path}: expected a YAML mapping")
    strategy = (config.get("acquisition") or {}).get("strategy")
    if not strategy:
        raise ReportError(f"{path}: acquisition.strategy is missing")
    return config


def _read_dataset(path: Path) -> dict[str, Any]:
    if not path.is_file():
        warnings.warn(f"{path} is missing; classes are shown by id", ReportWarning, stacklevel=3)
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ReportError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return data


def read_answer_counts(path: Path) -> dict[int, Counter[int | str]]:
    """Answers per query cycle: class id -> count, with 'unknown' for ``None`` answers.

    Every answer counts (two annotators on one pixel give two), since this shows what the
    annotators were asked and said, not the resolved training labels.
    """
    from balseg.labels import LabelStore, LabelStoreError

    try:
        with LabelStore(path, readonly=True) as store:
            cycle_of = {q.id: q.cycle for q in store.queries()}
            answers = store.answers()
    except (LabelStoreError, OSError, sqlite3.Error) as err:
        # A damaged or read-only database costs only the histogram, not the whole report.
        warnings.warn(f"{path}: cannot read answers: {err}", ReportWarning, stacklevel=3)
        return {}
    counts: dict[int, Counter[int | str]] = {}
    for answer in answers:
        cycle = cycle_of.get(answer.query_id)
        if cycle is None:
            continue
        key: int | str = UNKNOWN if answer.label is None else int(answer.label)
        counts.setdefault(cycle, Counter())[key] += 1
    return dict(sorted(counts.items()))


def find_overlays(run_dir: Path) -> list[Overlay]:
    """PNGs in ``overlays/``, newest cycle first, then by image so that pairs stay together."""
    folder = run_dir / OVERLAYS_DIR
    if not folder.is_dir():
        return []
    found = []
    for png in folder.glob("*.png"):
        m = _OVERLAY_NAME.match(png.name)
        if m:
            found.append(Overlay(png, int(m["cycle"]), m["image"], m["kind"]))
        else:
            found.append(Overlay(png, None, png.stem, ""))
    # Within an image, the uncertainty map first: what the model saw, then what it asked.
    kind_rank = {"uncertainty": 0, "queries": 1}
    return sorted(found, key=lambda o: (o.cycle is None, -(o.cycle or 0), o.image_id,
                                        kind_rank.get(o.kind, 2), o.kind))


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / METRICS_FILE).is_file()


def load_run(path: str | Path) -> RunData:
    """Read one run directory; raises ReportError naming the path when it is not one."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is not a run directory (no such folder)")
    missing = [f for f in (CONFIG_FILE, METRICS_FILE) if not (run_dir / f).is_file()]
    if missing:
        raise ReportError(f"{run_dir} is not a run directory (no {' or '.join(missing)})")
    config = _read_config(run_dir / CONFIG_FILE)
    metrics = read_metrics(run_dir / METRICS_FILE)
    if not metrics:
        warnings.warn(f"{run_dir / METRICS_FILE} has no rows yet", ReportWarning, stacklevel=2)
    labels = run_dir / LABELS_FILE
    seed = config.get("seed")
    return RunData(
        path=run_dir,
        config=config,
        dataset=_read_dataset(run_dir / DATASET_FILE),
        metrics=metrics,
        label=run_label(config),
        name=str(config.get("name") or run_dir.name),
        seed=int(seed) if seed is not None else None,
        strategy=str(config["acquisition"]["strategy"]),
        answer_counts=read_answer_counts(labels) if labels.is_file() else {},
        overlays=find_overlays(run_dir),
    )
