"""The report's figures, drawn with the Agg canvas.

Figures are built from ``matplotlib.figure.Figure`` directly rather than pyplot, so making a
report never switches the backend or leaks figures of a process that imported balseg.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from balseg.acquisition.registry import colour_of
from balseg.report.protocols import Grouping, score_of, strategy_of
from balseg.report.runs import UNKNOWN, RunResults
from balseg.report.summary import (
    Reference,
    SummaryRow,
    answer_class_names,
    class_names_for,
    label_order,
    mean_answer_counts,
)
from balseg.strategy import SUPERVISED

_SPARE = [
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#386cb0",
]
# Variants keep their strategy's colour and differ in line and marker.
_VARIANTS = {
    (): ("-", "o"),
    ("pixelpick",): ("--", "s"),
    ("compat",): (":", "^"),
    ("compat", "pixelpick"): ("-.", "D"),
    ("classes",): ((0, (5, 1)), "P"),
    ("contour",): ((0, (1, 1)), "X"),
}
# Curves of different protocols (``[...]`` suffixes) differ in marker.
_PROTOCOL_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")
DPI = 110


def is_supervised_label(label: str) -> bool:
    return score_of(label) == SUPERVISED


def style_for(label: str, protocol: int | None = None) -> dict[str, Any]:
    """Colour from the score (the registry's), line style and marker from the variant
    suffixes; ``protocol`` (the index of the curve's protocol when the report holds several)
    picks the marker instead, so curves of one strategy under two protocols stay apart."""
    base, *variants = strategy_of(label).split("+")
    colour = colour_of(base) or _SPARE[zlib.crc32(base.encode()) % len(_SPARE)]
    flags = tuple(sorted(v.rstrip("0123456789") for v in variants))  # pixelpick10: pixelpick
    linestyle, marker = _VARIANTS.get(flags, ("-", "v"))
    if protocol is not None:
        marker = _PROTOCOL_MARKERS[protocol % len(_PROTOCOL_MARKERS)]
    return {"color": colour, "linestyle": linestyle, "marker": marker}


def _protocol_index(label: str, grouping: Grouping | None) -> int | None:
    if grouping is None or len(grouping.learning) < 2:
        return None
    cohort = grouping.cohort_of(label)
    return next(i for i, c in enumerate(grouping.learning) if c is cohort) \
        if not cohort.supervised else None


def _legend(ax: Any) -> None:
    """Inside the axes for a few curves; beside them when many would hide the data."""
    if len(ax.get_legend_handles_labels()[1]) > 6:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        ax.legend(fontsize="small")


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _no_data(path: Path, title: str, message: str) -> Path:
    fig = Figure(figsize=(6, 2.5))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def plot_curves(
    rows: Sequence[SummaryRow],
    reference: dict[tuple[str, str], Reference],
    path: Path,
    *,
    x: str,
    xlabel: str,
    grouping: Grouping | None = None,
) -> Path:
    """mIoU against a budget measure: mean line, ±1 std band, markers at budgets; per split.

    Every supervised reference a curve of the panel uses is a horizontal line."""
    curve_rows = [r for r in rows if not is_supervised_label(r.label)]
    splits = list(dict.fromkeys(r.split for r in rows))
    if not splits:
        return _no_data(path, "mIoU", "no metrics rows in these runs")
    fig = Figure(figsize=(6.4 * len(splits), 4.6))
    axes = fig.subplots(1, len(splits), squeeze=False, sharey=True)[0]
    for ax, split in zip(axes, splits, strict=True):
        mine = [r for r in curve_rows if r.split == split]
        refs: dict[str, float] = {}
        for label in label_order(r.label for r in mine):
            pts = sorted((r for r in mine if r.label == label), key=lambda r: r.cycle)
            xs = np.array([getattr(r, x) for r in pts])
            mean = 100 * np.array([r.miou_mean for r in pts])
            std = 100 * np.array([r.miou_std for r in pts])
            style = style_for(label, _protocol_index(label, grouping))
            n = max(r.n for r in pts)
            ax.plot(xs, mean, label=f"{label} (n={n})", markersize=5, **style)
            ax.fill_between(xs, mean - std, mean + std, color=style["color"], alpha=0.18, lw=0)
            ref = reference.get((label, split))
            if ref is not None:
                refs[ref.source] = ref.miou
        for i, (source, value) in enumerate(sorted(refs.items())):
            ax.axhline(100 * value, color="black", lw=1, ls=("--", ":", "-.")[i % 3],
                       label=f"{source} ({100 * value:.1f})")
        xs_all = [getattr(r, x) for r in mine]
        if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 100:
            ax.set_xscale("log")
        ax.set_title(f"split: {split}")
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        _legend(ax)
    axes[0].set_ylabel("mIoU (%)")
    return _save(fig, path)


def last_rows(rows: Sequence[SummaryRow]) -> list[SummaryRow]:
    """The last cycle of each (split, label): where each strategy ended."""
    last: dict[tuple[str, str], SummaryRow] = {}
    for r in rows:
        key = (r.split, r.label)
        if key not in last or r.cycle > last[key].cycle:
            last[key] = r
    return list(last.values())


def plot_per_class(rows: Sequence[SummaryRow], grouping: Grouping, path: Path) -> Path:
    """Grouped bars of per-class IoU at each strategy's last cycle, mean (±std) over seeds;
    one panel per split and class list (curves of other datasets get their own panel)."""
    final = [r for r in last_rows(rows) if r.per_class_mean]
    if not final:
        return _no_data(path, "per-class IoU", "no per-class IoU in these runs")
    panels: dict[tuple[str, tuple[str, ...]], list[SummaryRow]] = {}
    for r in final:
        names = class_names_for(grouping.class_names(r.label), len(r.per_class_mean))
        panels.setdefault((r.split, tuple(names)), []).append(r)
    width_max = max(len(r.per_class_mean) for r in final)
    bars = max(1 + len(mine) for mine in panels.values())
    fig_w = min(max(8.0, 1.0 + 0.12 * width_max * bars), 24.0)
    fig = Figure(figsize=(fig_w, 4.2 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, ((split, _), mine) in zip(axes, panels.items(), strict=True):
        width = max(len(r.per_class_mean) for r in mine)
        names = class_names_for(grouping.class_names(mine[0].label), width)
        centres = np.arange(width)
        labels = label_order(r.label for r in mine)
        bar_w = 0.8 / len(labels)
        for i, label in enumerate(labels):
            r = next(r for r in mine if r.label == label)
            mean = np.full(width, np.nan)
            std = np.full(width, np.nan)
            mean[: len(r.per_class_mean)] = r.per_class_mean
            std[: len(r.per_class_std)] = r.per_class_std
            ax.bar(
                centres - 0.4 + bar_w * (i + 0.5), 100 * np.nan_to_num(mean), bar_w,
                yerr=100 * np.nan_to_num(std), color=style_for(label)["color"],
                error_kw={"elinewidth": 0.7, "capsize": 0},
                label=f"{label} (cycle {r.cycle}, {r.pixels_per_image:.4g} px/img, n={r.n})",
            )
        ax.set_xticks(centres, names, rotation=60, ha="right", fontsize="small")
        ax.set_xlim(-0.6, width - 0.4)
        ax.set_ylabel("IoU (%)")
        ax.set_title(f"per-class IoU at the last cycle, split: {split}")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return _save(fig, path)


def plot_per_class_cycles(rows: Sequence[SummaryRow], grouping: Grouping, path: Path) -> Path:
    """Per-class IoU at every cycle: one heatmap per curve and split (classes down, cycles
    across, mean over seeds in each cell; grey where the class was absent), one colour bar.
    The supervised reference has one cycle and is left to the last-cycle bars."""
    panels: dict[tuple[str, str], list[SummaryRow]] = {}
    for r in rows:
        if r.per_class_mean and not is_supervised_label(r.label):
            panels.setdefault((r.split, r.label), []).append(r)
    if not panels:
        return _no_data(path, "per-class IoU per cycle", "no per-class IoU in these runs")
    keys = sorted(panels, key=lambda k: (list(dict.fromkeys(r.split for r in rows)).index(k[0]),
                                         label_order(lab for _, lab in panels).index(k[1])))
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    n_classes = max(len(r.per_class_mean) for mine in panels.values() for r in mine)
    n_cycles = max(len(mine) for mine in panels.values())
    cell_w, cell_h = 0.55, 0.28
    fig = Figure(figsize=(ncols * (2.2 + cell_w * n_cycles) + 1.0,
                          nrows * (1.2 + cell_h * n_classes)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgray")
    image = None
    for ax, key in zip(axes.flat, keys, strict=False):
        split, label = key
        mine = sorted(panels[key], key=lambda r: r.cycle)
        width = max(len(r.per_class_mean) for r in mine)
        grid = np.full((width, len(mine)), np.nan)
        for j, r in enumerate(mine):
            grid[: len(r.per_class_mean), j] = r.per_class_mean
        values = np.ma.masked_invalid(100 * grid)
        image = ax.imshow(values, cmap=cmap, vmin=0, vmax=100, aspect="auto",
                          interpolation="nearest")
        if width * len(mine) <= 600:
            for (i, j), v in np.ndenumerate(100 * grid):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6.5,
                            color="white" if v < 55 else "black")
        ax.set_xticks(range(len(mine)), [f"{r.cycle}\n{r.pixels_per_image:.3g}" for r in mine],
                      fontsize="x-small")
        ax.set_yticks(range(width), class_names_for(grouping.class_names(label), width),
                      fontsize="x-small")
        ax.set_xlabel("cycle / pixels per image", fontsize="small")
        n = max(r.n for r in mine)
        ax.set_title(f"{label} (n={n})" + (f", {split}" if len(
            {k[0] for k in keys}) > 1 else ""), fontsize="small")
    for ax in list(axes.flat)[len(keys):]:
        ax.set_axis_off()
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label="IoU (%), mean over seeds",
                     shrink=0.9)
    return _save(fig, path)


def _class_colours(runs: Sequence[RunResults], width: int) -> list[Any]:
    palette = next((r.dataset.palette for r in runs if r.dataset.palette), None)
    spare = [f"C{i % 10}" for i in range(width)]
    if not palette:
        return spare
    return [
        tuple(c / 255 for c in palette[i][:3]) if i < len(palette) else spare[i]
        for i in range(width)
    ]


def plot_answer_histogram(runs: Sequence[RunResults], path: Path) -> Path:
    """Answers per cycle stacked by class (dataset colours), one panel per strategy."""
    with_answers = [r for r in runs if r.answer_counts]
    labels = label_order(r.label for r in with_answers)
    if not labels:
        return _no_data(path, "answers per class", "no answers in these runs")
    fig = Figure(figsize=(7.5, 3.6 * len(labels)))
    axes = fig.subplots(len(labels), 1, squeeze=False)[:, 0]
    for ax, label in zip(axes, labels, strict=True):
        mine = [r for r in with_answers if r.label == label]
        names = answer_class_names(mine)
        width = len(names)
        colours = _class_colours(mine, width)
        counts = mean_answer_counts(mine)
        cycles = list(counts)
        bottom = np.zeros(len(cycles))
        keys: list[int | str] = [*range(width), UNKNOWN]
        for key in keys:
            heights = np.array([counts[c].get(key, 0.0) for c in cycles])
            if not heights.any():
                continue
            is_unknown = key == UNKNOWN
            ax.bar(
                cycles, heights, 0.7, bottom=bottom,
                color="lightgray" if is_unknown else colours[int(key)],
                hatch="//" if is_unknown else None, edgecolor="white", linewidth=0.4,
                label=UNKNOWN if is_unknown else names[int(key)],
            )
            bottom += heights
        runs_text = "1 run" if len(mine) == 1 else f"mean over {len(mine)} runs"
        ax.set_title(f"{label}: answers per class ({runs_text})")
        ax.set_xlabel("cycle")
        ax.set_ylabel("answers")
        ax.set_xticks(cycles)
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1),
                  ncol=1 + width // 25)
    fig.tight_layout()
    return _save(fig, path)


def plot_paired(rows: Sequence[Any], path: Path, grouping: Grouping | None = None) -> Path:
    """Paired difference to the baseline against pixels per image, with the 95% interval
    as error bars; one panel per split and baseline."""
    panels = list(dict.fromkeys((r.split, r.baseline) for r in rows))
    if not panels:
        return _no_data(path, "paired differences", "no strategy paired with a baseline")
    fig = Figure(figsize=(6.4 * len(panels), 4.6))
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (split, baseline) in zip(axes, panels, strict=True):
        mine = [r for r in rows if (r.split, r.baseline) == (split, baseline)]
        labels = label_order(r.label for r in mine)
        offsets = np.linspace(-0.12, 0.12, len(labels)) if len(labels) > 1 else [0.0]
        for label, offset in zip(labels, offsets, strict=True):
            pts = sorted((r for r in mine if r.label == label), key=lambda r: r.cycle)
            xs = np.array([r.pixels_per_image for r in pts])
            # nudge the markers apart so the intervals do not hide each other
            step = float(np.min(np.diff(np.unique(xs)))) if len(np.unique(xs)) > 1 else 1.0
            xs = xs + offset * step
            mean = 100 * np.array([r.diff_mean for r in pts])
            low = np.array([100 * r.ci_low if r.ci_low is not None else np.nan for r in pts])
            high = np.array([100 * r.ci_high if r.ci_high is not None else np.nan for r in pts])
            err = np.nan_to_num(np.vstack([mean - low, high - mean]))
            style = style_for(label, _protocol_index(label, grouping))
            n = max(r.n for r in pts)
            ax.errorbar(xs, mean, yerr=err, capsize=3, markersize=5,
                        label=f"{label} (n={n})", **style)
        ax.axhline(0, color="black", lw=1)
        ax.set_title(f"minus {baseline}, split: {split}", fontsize="medium")
        ax.set_xlabel("queried pixels per image")
        ax.grid(True, alpha=0.3)
        _legend(ax)
    axes[0].set_ylabel("paired Δ mIoU (points), 95% CI")
    return _save(fig, path)
