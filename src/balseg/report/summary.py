"""Mean and spread over seeds per strategy and budget, and the summary table (CSV, Markdown).

Runs of one label that reached the same cycle spent the same budget, so rows are grouped by
(label, split, cycle); the budget shown is the mean pixels per image of the group.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from balseg.report.protocols import Grouping, group_runs, score_of
from balseg.report.runs import SUPERVISED, UNKNOWN, ReportWarning, RunResults

PER_CLASS_COLUMNS = (
    "split", "strategy", "cycle", "pixels_per_image", "n_seeds", "class_id", "class",
    "iou_mean", "iou_std",
)
CSV_COLUMNS = (
    "split", "strategy", "cycle", "n_seeds", "seeds", "pixels_per_image", "queried_pixels",
    "labeled_pixels", "labeled_percent", "miou_mean", "miou_std", "percent_of_supervised",
    "wall_time_s",
)
STD_NOTE = "sample standard deviation over seeds (n - 1 in the denominator; 0 for one seed)"


@dataclass(frozen=True)
class SummaryRow:
    """One point of a curve: a label at one cycle of one split, over its seeds."""

    split: str
    label: str
    cycle: int
    seeds: tuple[int | None, ...]
    pixels_per_image: float
    queried_pixels: float | None
    labeled_pixels: float | None
    labeled_percent: float
    miou_mean: float
    miou_std: float
    percent_of_supervised: float | None
    wall_time_s: float | None
    per_class_mean: tuple[float, ...]  # NaN where the class was absent in every seed
    per_class_std: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.seeds)


def sample_std(values: Sequence[float]) -> float:
    """Spread over seeds; one seed has no spread rather than an undefined one."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _mean_of(rows: Iterable[dict[str, Any]], key: str) -> float | None:
    vals = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return float(np.mean(vals)) if vals else None


def _per_class(rows: Sequence[dict[str, Any]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std over seeds per class, ignoring seeds where the class was absent (null)."""
    lists = [r.get("per_class_iou") or [] for r in rows]
    width = max((len(v) for v in lists), default=0)
    if width == 0:
        return (), ()
    arr = np.full((len(lists), width), np.nan)
    for i, values in enumerate(lists):
        arr[i, : len(values)] = [np.nan if v is None else float(v) for v in values]
    present = ~np.isnan(arr)
    count = present.sum(axis=0)
    total = np.where(present, arr, 0.0).sum(axis=0)
    mean = np.divide(total, count, out=np.full(width, np.nan), where=count > 0)
    sq = np.where(present, (arr - mean) ** 2, 0.0).sum(axis=0)
    std = np.divide(sq, count - 1, out=np.zeros(width), where=count > 1) ** 0.5
    std[count == 0] = np.nan
    return tuple(mean.tolist()), tuple(std.tolist())


def label_order(labels: Iterable[str]) -> list[str]:
    """Alphabetical, the supervised reference last, so tables and legends read the same."""
    return sorted(set(labels), key=lambda lab: (score_of(lab) == SUPERVISED, lab))


def split_order(runs: Sequence[RunResults]) -> list[str]:
    return list(dict.fromkeys(s for run in runs for s in run.splits()))


def latest_rows(run: RunResults) -> dict[tuple[str, int], dict[str, Any]]:
    """One row per (split, cycle): a resumed run may evaluate a cycle again; the last counts."""
    return {(str(r["split"]), int(r["cycle"])): r for r in run.metrics}


@dataclass(frozen=True)
class Reference:
    """The mIoU a curve's '% of supervised' divides by, and where it comes from."""

    miou: float
    source: str  # the supervised curve's label, or "--supervised-miou"


def supervised_means(runs: Sequence[RunResults]) -> dict[tuple[str, str], float]:
    """(supervised curve, split) -> mean over its runs of their last evaluation."""
    values: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        if not run.is_supervised:
            continue
        last: dict[str, dict[str, Any]] = {}
        for (split, _), row in sorted(latest_rows(run).items(), key=lambda kv: kv[0][1]):
            last[split] = row
        for split, row in last.items():
            values.setdefault((run.label, split), []).append(float(row["miou"]))
    return {key: float(np.mean(v)) for key, v in values.items()}


def supervised_reference(
    runs: Sequence[RunResults],
    override: float | None = None,
    grouping: Grouping | None = None,
) -> dict[tuple[str, str], Reference]:
    """(curve, split) -> its reference: the option when given, else the best matching
    supervised curve (``Grouping.reference_candidates``) on that split."""
    grouping = grouping or group_runs(runs)
    splits = split_order(runs)
    labels = label_order(r.label for r in runs)
    if override is not None:
        return {(label, split): Reference(float(override), "--supervised-miou")
                for label in labels for split in splits}
    means = supervised_means(runs)
    out: dict[tuple[str, str], Reference] = {}
    for label in labels:
        candidates = [lab for c in grouping.reference_candidates(label) for lab in c.labels]
        for split in splits:
            found = [(means[(lab, split)], lab) for lab in candidates if (lab, split) in means]
            if found:
                out[(label, split)] = Reference(*max(found))
    return out


def summarize(
    runs: Sequence[RunResults],
    supervised_miou: float | None = None,
    grouping: Grouping | None = None,
) -> list[SummaryRow]:
    """The summary table: ordered by split, curve, cycle (curves as ``group_runs`` names
    them: runs of different protocols are never pooled)."""
    grouping = grouping or group_runs(runs)
    groups: dict[tuple[str, str, int], list[tuple[RunResults, dict[str, Any]]]] = {}
    for run in runs:
        for (split, cycle), row in latest_rows(run).items():
            groups.setdefault((run.label, split, cycle), []).append((run, row))
    reference = supervised_reference(runs, supervised_miou, grouping)
    labels = label_order(k[0] for k in groups)
    splits = split_order(runs)
    out: list[SummaryRow] = []
    for key in sorted(groups, key=lambda k: (splits.index(k[1]), labels.index(k[0]), k[2])):
        label, split, cycle = key
        members = groups[key]
        rows = [r for _, r in members]
        seeds = tuple(run.seed for run, _ in members)
        if len(set(seeds)) < len(seeds):
            warnings.warn(
                f"{label} cycle {cycle} ({split}): several runs share a seed {seeds};"
                " each counts as one seed",
                ReportWarning,
                stacklevel=2,
            )
        budgets = [float(r["pixels_per_image"]) for r in rows]
        if max(budgets) - min(budgets) > 0.01 * max(abs(float(np.mean(budgets))), 1e-9):
            warnings.warn(
                f"{label} cycle {cycle} ({split}): runs spent different budgets"
                f" {budgets} pixels per image; they are averaged",
                ReportWarning,
                stacklevel=2,
            )
        mious = [float(r["miou"]) for r in rows]
        mean = float(np.mean(mious))
        ref = reference.get((label, split))
        pc_mean, pc_std = _per_class(rows)
        out.append(
            SummaryRow(
                split=split,
                label=label,
                cycle=cycle,
                seeds=seeds,
                pixels_per_image=float(np.mean(budgets)),
                queried_pixels=_mean_of(rows, "queried_pixels"),
                labeled_pixels=_mean_of(rows, "labeled_pixels"),
                labeled_percent=100.0 * float(np.mean([r["labeled_fraction"] for r in rows])),
                miou_mean=mean,
                miou_std=sample_std(mious),
                percent_of_supervised=100.0 * mean / ref.miou if ref and ref.miou else None,
                wall_time_s=_mean_of(rows, "wall_time_s"),
                per_class_mean=pc_mean,
                per_class_std=pc_std,
            )
        )
    return out


def fmt_sig(value: float | None, digits: int = 3) -> str:
    """Few significant digits: labeled fractions of pixel-level runs are tiny percentages."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}g}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_miou(row: SummaryRow) -> str:
    return f"{100 * row.miou_mean:.1f} ± {100 * row.miou_std:.1f} ({row.n})"


def csv_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_csv(rows: Sequence[SummaryRow], path: Path) -> None:
    """Machine-readable table for the benchmark and for plotting elsewhere (mIoU in 0..1)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            seeds = " ".join("?" if s is None else str(s) for s in r.seeds)
            writer.writerow(
                csv_value(v)
                for v in (
                    r.split, r.label, r.cycle, r.n, seeds, r.pixels_per_image, r.queried_pixels,
                    r.labeled_pixels, r.labeled_percent, r.miou_mean, r.miou_std,
                    r.percent_of_supervised, r.wall_time_s,
                )
            )


def markdown_headers(split: str) -> list[str]:
    return [
        "strategy", "pixels/image", "labeled %", f"{split} mIoU % mean ± std (n)",
        "% of supervised", "wall time",
    ]


def markdown_cells(row: SummaryRow) -> list[str]:
    """One table row as text; shared by the Markdown file and the HTML page."""
    return [
        row.label,
        fmt_sig(row.pixels_per_image, 4),
        fmt_sig(row.labeled_percent),
        fmt_miou(row),
        "–" if row.percent_of_supervised is None else f"{row.percent_of_supervised:.1f}",
        fmt_duration(row.wall_time_s),
    ]


def to_markdown(rows: Sequence[SummaryRow]) -> str:
    """One table per split, ready to paste into docs."""
    parts: list[str] = []
    for split in dict.fromkeys(r.split for r in rows):
        header = markdown_headers(split)
        lines = [
            "| " + " | ".join(header) + " |",
            "| --- | " + " | ".join("---:" for _ in header[1:]) + " |",
        ]
        for r in rows:
            if r.split == split:
                cells = [c.replace("|", "\\|") for c in markdown_cells(r)]
                lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    note = (
        "_mIoU in %, mean ± " + STD_NOTE + "; labeled % = queried pixels / all pool pixels;"
        " wall time = mean time since the run started._"
    )
    return "\n\n".join([*parts, note]) + "\n"


def class_names_for(names: Sequence[str], width: int) -> list[str]:
    """The dataset's names, ids where it names fewer classes than the rows have."""
    return [names[i] if i < len(names) else f"class {i}" for i in range(width)]


ANSWERS_COLUMNS = ("strategy", "runs", "cycle", "class_id", "class", "answers_mean", "share")


def mean_answer_counts(runs: Sequence[RunResults]) -> dict[int, dict[int | str, float]]:
    """Per cycle, mean answers per class over the runs that reached that cycle."""
    per_cycle: dict[int, list[dict[int | str, int]]] = {}
    for run in runs:
        for cycle, counts in run.answer_counts.items():
            per_cycle.setdefault(cycle, []).append(dict(counts))
    out: dict[int, dict[int | str, float]] = {}
    for cycle, dicts in sorted(per_cycle.items()):
        keys = {k for d in dicts for k in d}
        out[cycle] = {k: sum(d.get(k, 0) for d in dicts) / len(dicts) for k in keys}
    return out


def answer_class_names(runs: Sequence[RunResults]) -> list[str]:
    """Class names of the answers of ``runs``: the first named list, widened by id for any
    answered class it does not name."""
    ids = {int(k) for r in runs for c in r.answer_counts.values() for k in c if k != UNKNOWN}
    known = next((r.class_names for r in runs if r.class_names), [])
    return class_names_for(known, max(len(known), max(ids, default=-1) + 1))


def write_answers_csv(runs: Sequence[RunResults], path: Path) -> None:
    """What each strategy was answered, per query cycle and class: the mean answers over
    its runs that reached the cycle, and their share of the cycle's answers ('unknown':
    no class, e.g. a void pixel, which still cost a query). The numbers behind
    ``answer_histogram.png``; a strategy that asks about void or about the big classes
    shows here."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(ANSWERS_COLUMNS)
        for label in label_order(r.label for r in runs if r.answer_counts):
            mine = [r for r in runs if r.label == label and r.answer_counts]
            names = answer_class_names(mine)
            for cycle, counts in mean_answer_counts(mine).items():
                n_runs = sum(cycle in r.answer_counts for r in mine)
                total = sum(counts.values())
                for key in [*range(len(names)), UNKNOWN]:
                    mean = counts.get(key, 0.0)
                    if key == UNKNOWN and not mean:
                        continue
                    name = UNKNOWN if key == UNKNOWN else names[int(key)]
                    writer.writerow(csv_value(v) for v in (
                        label, n_runs, cycle, None if key == UNKNOWN else key, name, mean,
                        mean / total if total else None))


def write_per_class_csv(rows: Sequence[SummaryRow], grouping: Grouping, path: Path) -> None:
    """Per-class IoU of every curve at every cycle, one line per class (IoU in 0..1; empty
    where the class was absent from the evaluated images in every seed)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(PER_CLASS_COLUMNS)
        for r in rows:
            names = class_names_for(grouping.class_names(r.label), len(r.per_class_mean))
            for i, (mean, std) in enumerate(zip(r.per_class_mean, r.per_class_std,
                                                strict=True)):
                writer.writerow(csv_value(v) for v in (
                    r.split, r.label, r.cycle, r.pixels_per_image, r.n, i, names[i],
                    None if math.isnan(mean) else mean, None if math.isnan(std) else std,
                ))


def per_class_tables(rows: Sequence[SummaryRow], grouping: Grouping) -> list[dict[str, Any]]:
    """Per (split, curve): one line per cycle, one column per class, IoU % mean ± std."""
    tables = []
    for split in dict.fromkeys(r.split for r in rows):
        for label in label_order(r.label for r in rows if r.split == split):
            mine = sorted((r for r in rows if (r.split, r.label) == (split, label)
                           and r.per_class_mean), key=lambda r: r.cycle)
            if not mine:
                continue
            width = max(len(r.per_class_mean) for r in mine)
            known = grouping.class_names(label)  # unnamed classes by id, as the answers table
            names = [known[i] if i < len(known) else str(i) for i in range(width)]
            lines = []
            for r in mine:
                cells = []
                for i in range(width):
                    mean = r.per_class_mean[i] if i < len(r.per_class_mean) else math.nan
                    std = r.per_class_std[i] if i < len(r.per_class_std) else math.nan
                    cells.append("–" if math.isnan(mean) else (
                        f"{100 * mean:.1f}" if r.n == 1 or math.isnan(std)
                        else f"{100 * mean:.1f} ± {100 * std:.1f}"))
                lines.append({"cycle": r.cycle, "pixels_per_image": fmt_sig(r.pixels_per_image, 4),
                              "n": r.n, "miou": f"{100 * r.miou_mean:.1f}", "cells": cells})
            tables.append({"split": split, "label": label, "classes": names, "rows": lines})
    return tables
