"""Paired comparison of every strategy with a baseline, seed by seed, at every budget.

Two strategies run with the same seed start from the same cycle-0 model and the same
data, so the seed-to-seed spread they share cancels in their difference. For each curve,
split and cycle, over the seeds that both the curve and its baseline have:

- d_s = mIoU(strategy, seed s) - mIoU(baseline, seed s);
- the mean of d and its 95% interval from the paired t-test: mean ± t_{0.975, n-1} · sd/√n
  (scipy's t quantile), with the two-sided p-value of t = mean / (sd/√n), n - 1 degrees
  of freedom; one seed gives a difference but no interval or p-value;
- "ahead in k of n": the seeds in which the strategy's mIoU is strictly higher.

Seeds that only one of the two has are left out (and listed). Runs that share a seed
within one curve are averaged first. The baseline of a curve is found by
``Grouping.baseline_for``: the baseline strategy's curve of the same protocol, else the
closest protocol with the same dataset, classes, data and budget settings.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from balseg.errors import ConfigError, ReportError
from balseg.report.protocols import Grouping, strategy_of
from balseg.report.runs import RunResults
from balseg.report.summary import csv_value, label_order, latest_rows, split_order
from balseg.strategy import SUPERVISED, parse_strategy

DEFAULT_BASELINE = "margin+pixelpick"
CONFIDENCE = 0.95
PAIRED_NOTE = (
    "difference in mIoU points (strategy − baseline) over the seeds both have, mean and"
    " 95% interval of a paired t-test (t quantile with n − 1 degrees of freedom); p is the"
    " test's two-sided p-value; ahead = seeds in which the strategy is higher"
)
CSV_COLUMNS = (
    "split", "strategy", "baseline", "cycle", "pixels_per_image", "n_seeds", "seeds",
    "miou_mean", "baseline_miou_mean", "diff_mean", "diff_std", "ci_low", "ci_high",
    "p_value", "ahead", "unpaired_seeds", "unpaired_baseline_seeds", "protocol_differences",
)


@dataclass(frozen=True)
class PairedRow:
    """One strategy against its baseline at one cycle of one split (mIoU in 0..1)."""

    split: str
    label: str
    baseline: str
    cycle: int
    pixels_per_image: float
    seeds: tuple[int, ...]
    miou_mean: float  # the strategy's, over the paired seeds
    baseline_miou_mean: float
    diff_mean: float
    diff_std: float | None  # None for one seed
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    ahead: int
    unpaired: tuple[int, ...]  # seeds only the strategy has at this cycle
    unpaired_baseline: tuple[int, ...]
    protocol_differences: str  # "" when both curves ran the same protocol

    @property
    def n(self) -> int:
        return len(self.seeds)


def paired_stats(diffs: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean, sample std, two-sided interval and p-value of a paired t-test on ``diffs``."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n == 0:
        raise ValueError("no paired differences")
    mean = float(d.mean())
    if n == 1:
        return {"mean": mean, "std": None, "ci_low": None, "ci_high": None, "p": None}
    std = float(d.std(ddof=1))
    se = std / math.sqrt(n)
    q = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
    if se > 0:
        p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    else:  # every seed moved by exactly the same amount
        p = 1.0 if mean == 0 else 0.0
    return {"mean": mean, "std": std, "ci_low": mean - q * se, "ci_high": mean + q * se,
            "p": p}


def resolve_baseline(requested: str | None, runs: Sequence[RunResults]) -> str | None:
    """The baseline strategy: the one asked for (a clear error when no run has it), else
    margin+pixelpick when present, else None (no paired table)."""
    present = label_order(r.strategy_label for r in runs if not r.is_supervised)
    if requested is None:
        return DEFAULT_BASELINE if DEFAULT_BASELINE in present else None
    curves = {r.label for r in runs if not r.is_supervised}
    if requested in curves:  # a curve label with its protocol suffix: that curve only
        return requested
    try:
        spec = parse_strategy(requested)
    except ConfigError as err:
        raise ReportError(f"--baseline: {err}") from None
    if spec.is_supervised:
        raise ReportError("--baseline: supervised is the reference, not a baseline; choose"
                          f" one of {', '.join(present)}")
    if spec.seeds is not None:
        raise ReportError(f"--baseline {requested!r}: takes no '@n' (every seed both"
                          " strategies have is paired)")
    if spec.label not in present:
        raise ReportError(f"--baseline {requested!r}: no run has this strategy; the runs'"
                          f" strategies are {', '.join(present) or 'none'}")
    return spec.label


def check_baseline(requested: str | None, strategies: Sequence[str]) -> None:
    """For ``bench``: refuse a baseline that none of the requested strategies is, before
    hours of runs."""
    if requested is None:
        return
    labels = [parse_strategy(s).label for s in strategies]
    try:
        label = parse_strategy(requested).label
    except ConfigError as err:
        raise ReportError(f"--baseline: {err}") from None
    if label == SUPERVISED or label not in labels:
        choices = ", ".join(dict.fromkeys(lab for lab in labels if lab != SUPERVISED))
        raise ReportError(f"--baseline {requested!r} is not one of the bench's strategies:"
                          f" {choices}")


def _seed_mious(runs: Sequence[RunResults], split: str) -> dict[int, dict[int, float]]:
    """cycle -> seed -> mIoU (runs of one seed averaged); runs without a seed are left out."""
    values: dict[int, dict[int, list[float]]] = {}
    for run in runs:
        if run.seed is None:
            continue
        for (s, cycle), row in latest_rows(run).items():
            if s == split:
                values.setdefault(cycle, {}).setdefault(run.seed, []).append(float(row["miou"]))
    return {c: {seed: float(np.mean(v)) for seed, v in by_seed.items()}
            for c, by_seed in values.items()}


def _budgets(runs: Sequence[RunResults], split: str) -> dict[tuple[int, int], float]:
    out: dict[tuple[int, int], float] = {}
    for run in runs:
        if run.seed is None:
            continue
        for (s, cycle), row in latest_rows(run).items():
            if s == split:
                out[(cycle, run.seed)] = float(row["pixels_per_image"])
    return out


@dataclass
class PairedComparison:
    """The paired table and what it could not pair."""

    baseline: str | None
    rows: list[PairedRow]
    notes: list[str]


def compare(runs: Sequence[RunResults], grouping: Grouping, baseline: str | None
            ) -> PairedComparison:
    """Every non-supervised curve against ``baseline`` (a strategy spec or a curve label,
    as ``resolve_baseline`` returns), per split and cycle."""
    if baseline is None:
        return PairedComparison(None, [], [])
    curves = label_order(r.label for r in runs if not r.is_supervised)
    baselines = [c for c in curves if baseline in (c, strategy_of(c))]
    rows: list[PairedRow] = []
    notes: list[str] = []
    by_label = {c: [r for r in runs if r.label == c] for c in curves}
    for label in curves:
        if label in baselines:
            continue
        base, diff = grouping.baseline_for(label, baselines)
        if base is None:
            notes.append(f"{label}: not paired: {diff}")
            continue
        only_mine: set[int] = set()
        only_base: set[int] = set()
        for split in split_order(runs):
            mine = _seed_mious(by_label[label], split)
            theirs = _seed_mious(by_label[base], split)
            budget = _budgets(by_label[label], split)
            for cycle in sorted(set(mine) | set(theirs)):
                a, b = mine.get(cycle, {}), theirs.get(cycle, {})
                seeds = tuple(sorted(set(a) & set(b)))
                unpaired = tuple(sorted(set(a) - set(b)))
                unpaired_base = tuple(sorted(set(b) - set(a)))
                only_mine.update(unpaired)
                only_base.update(unpaired_base)
                if not seeds:
                    continue
                st = paired_stats([a[s] - b[s] for s in seeds])
                rows.append(PairedRow(
                    split=split, label=label, baseline=base, cycle=cycle,
                    pixels_per_image=float(np.mean([budget[(cycle, s)] for s in seeds])),
                    seeds=seeds,
                    miou_mean=float(np.mean([a[s] for s in seeds])),
                    baseline_miou_mean=float(np.mean([b[s] for s in seeds])),
                    diff_mean=st["mean"], diff_std=st["std"], ci_low=st["ci_low"],
                    ci_high=st["ci_high"], p_value=st["p"],
                    ahead=sum(a[s] > b[s] for s in seeds),
                    unpaired=unpaired, unpaired_baseline=unpaired_base,
                    protocol_differences=diff,
                ))
        if diff:
            notes.append(f"{label} is paired with {base}, whose protocol differs: {diff}")
        if only_mine or only_base:
            parts = []
            if only_mine:
                parts.append(f"{_seeds(only_mine)} of {label} (no {base} result)")
            if only_base:
                parts.append(f"{_seeds(only_base)} of {base} (no {label} result)")
            notes.append(f"{label}: unpaired, left out: " + "; ".join(parts))
    return PairedComparison(baseline, rows, notes)


def _seeds(seeds: set[int] | Sequence[int]) -> str:
    values = sorted(seeds)
    return ("seed " if len(values) == 1 else "seeds ") + ", ".join(map(str, values))


# -- formatting ---------------------------------------------------------------------------------
def fmt_points(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.2f}"


def fmt_p(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def paired_headers() -> list[str]:
    return ["strategy", "pixels/image", "n", "Δ mIoU (points)", "95% CI (paired t)",
            "p (paired t)", "ahead"]


def paired_cells(row: PairedRow) -> list[str]:
    """One row as text; shared by the Markdown file and the HTML page."""
    ci = ("–" if row.ci_low is None or row.ci_high is None
          else f"[{fmt_points(row.ci_low)}, {fmt_points(row.ci_high)}]")
    return [
        row.label,
        f"{row.pixels_per_image:.4g}",
        str(row.n),
        fmt_points(row.diff_mean),
        ci,
        fmt_p(row.p_value),
        f"{row.ahead} of {row.n}",
    ]


def paired_tables(rows: Sequence[PairedRow]) -> list[dict[str, Any]]:
    """One table per (split, baseline curve), in the order the rows come."""
    keys = list(dict.fromkeys((r.split, r.baseline) for r in rows))
    return [
        {"split": split, "baseline": base, "headers": paired_headers(),
         "rows": [paired_cells(r) for r in rows if (r.split, r.baseline) == (split, base)]}
        for split, base in keys
    ]


def to_markdown(comparison: PairedComparison) -> str:
    if comparison.baseline is None:
        return ""
    parts = []
    for table in paired_tables(comparison.rows):
        header = table["headers"]
        lines = [
            f"Paired against {table['baseline']}, split {table['split']}:",
            "",
            "| " + " | ".join(header) + " |",
            "| --- | " + " | ".join("---:" for _ in header[1:]) + " |",
        ]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
                  for cells in table["rows"]]
        parts.append("\n".join(lines))
    if not parts:
        parts.append(f"No strategy could be paired with {comparison.baseline}.")
    if comparison.notes:
        parts.append("\n".join(f"- {note}" for note in comparison.notes))
    parts.append(f"_Δ mIoU: {PAIRED_NOTE}._")
    return "\n\n".join(parts) + "\n"


def write_csv(rows: Sequence[PairedRow], path: Path) -> None:
    """The paired table for other tools (mIoU and differences in 0..1)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow(csv_value(v) for v in (
                r.split, r.label, r.baseline, r.cycle, r.pixels_per_image, r.n,
                " ".join(map(str, r.seeds)), r.miou_mean, r.baseline_miou_mean, r.diff_mean,
                r.diff_std, r.ci_low, r.ci_high, r.p_value, r.ahead,
                " ".join(map(str, r.unpaired)), " ".join(map(str, r.unpaired_baseline)),
                r.protocol_differences,
            ))
