"""``make_report``: run directories in, a folder of PNGs, summary tables and index.html out.

The page references every file by a relative path, so the output folder can be zipped,
copied or served as it is.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

import balseg
from balseg.report import paired
from balseg.report.protocols import Grouping, group_runs, protocol_lines
from balseg.report.runs import (
    UNKNOWN,
    Overlay,
    ReportError,
    ReportWarning,
    RunResults,
    read_run,
)
from balseg.report.summary import (
    STD_NOTE,
    Reference,
    SummaryRow,
    fmt_duration,
    fmt_sig,
    markdown_cells,
    markdown_headers,
    per_class_tables,
    summarize,
    supervised_reference,
    to_markdown,
    write_answers_csv,
    write_csv,
    write_per_class_csv,
)
from balseg.rundir import OVERLAYS

TEMPLATES = Path(__file__).parent / "templates"
FIGURES = {
    "miou_vs_pixels_per_image.png": "mIoU versus queried pixels per image",
    "miou_vs_labeled_fraction.png": "mIoU versus queried pixels as a percentage of all pixels",
    "per_class_iou.png": "Per-class IoU at each strategy's last cycle",
    "per_class_iou_by_cycle.png": "Per-class IoU at every cycle, per strategy (mean over seeds)",
    "answer_histogram.png": "Class histogram of the answers, per cycle",
}
PAIRED_FIGURE = ("paired_difference.png",
                 "Paired difference to the baseline per budget, with 95% intervals (paired t)")


def default_out_dir(run_dirs: Sequence[Path]) -> Path:
    """RUN_DIR/report for one run; several runs have no natural home, so one must be named."""
    if len(run_dirs) != 1:
        raise ReportError("an output folder (--out) is required with several run directories")
    return Path(run_dirs[0]) / "report"


def _check_writable(out: Path, *, default: bool) -> None:
    """Refuse an output folder one cannot write to before any work (a read-only run
    directory's default ``report/``, say)."""
    probe = out / f".write-test-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        where = " (the default: inside the run directory)" if default else ""
        raise ReportError(f"cannot write the report to {out}{where}: {err.strerror or err};"
                          " choose a writable folder with --out DIR") from None


def _slugs(runs: Sequence[RunResults]) -> list[str]:
    """Unique folder-safe names for the runs' overlay copies."""
    seen: set[str] = set()
    out = []
    for run in runs:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", run.name).strip("._") or "run"
        slug, i = base, 2
        while slug in seen:
            slug, i = f"{base}-{i}", i + 1
        seen.add(slug)
        out.append(slug)
    return out


def _copy_overlays(overlays: Sequence[Overlay], dest: Path) -> dict[Path, Path]:
    """Copy into the report (a copy, not a link, so the report stays whole when moved).

    An unchanged file from an earlier report is not copied again: overlays can be many.
    """
    copied: dict[Path, Path] = {}
    if overlays:
        dest.mkdir(parents=True, exist_ok=True)
    for ov in overlays:
        target = dest / ov.path.name
        src_stat = ov.path.stat()
        if not (
            target.exists()
            and target.stat().st_size == src_stat.st_size
            and target.stat().st_mtime >= src_stat.st_mtime
        ):
            shutil.copy2(ov.path, target)
        copied[ov.path] = target
    return copied


def overlay_title(cycle: int | None) -> str:
    """What the overlays of ``cycle`` show: its model's wishes and the queries it chose,
    which are the next cycle's (the loop writes cycle c's pictures when it selects c+1)."""
    if cycle is None:
        return "other"
    return (f"cycle {cycle}'s model: what it wants labelled, and the queries it chose"
            f" (cycle {cycle + 1}, ringed)")


RARE_CLASSES_NOTE = (
    "Rare classes are asked once the model is unsure of them. On CamVid (367 pictures,"
    " 6 seeds, docs/benchmarks.md) BalEntAcq + PixelPick gave 15.8% of its queries to the"
    " five rarest classes (random 4.1%); spreading each image's queries over its predicted"
    " classes (acquisition.selection: classes) gave 14.6% and changed mIoU at 50 pixels per"
    " image by +0.5 points (95% interval -1.8 to +2.8): neither a cost nor a measured gain,"
    " so it is not the default. A class the model never predicts is not asked either way.")


def unasked_note(counts: dict[int, Any], names: Sequence[str]) -> str:
    """A note when an acquisition cycle asked nothing of some classes while one class took
    at least a quarter of its answers (issue 29: 106 Sky, 106 Building, 0 Bicyclist)."""
    found = []
    for cycle, by_class in counts.items():
        total = sum(by_class.values())
        named = {k: v for k, v in by_class.items() if k != UNKNOWN}
        if cycle == 0 or total < 20 or not named:
            continue
        top, top_n = max(named.items(), key=lambda kv: kv[1])
        missing = [n for i, n in enumerate(names) if not by_class.get(i)]
        if missing and top_n >= total / 4:
            top_name = names[top] if isinstance(top, int) and top < len(names) else str(top)
            found.append(f"cycle {cycle} asked nothing of {', '.join(missing)} while"
                         f" {top_name} took {100 * top_n / total:.0f}% of its {total} answers")
    if not found:
        return ""
    text = "; ".join(found)
    return text[0].upper() + text[1:] + ". " + RARE_CLASSES_NOTE


def suggestion_line(counts: dict[str, int] | None) -> str:
    """How people used the model's guesses on the page, or "" when it showed none."""
    if not counts or not counts.get("shown"):
        return ""
    shown, accepted, same = counts["shown"], counts["accepted"], counts["same_class"]
    return (f"The page showed the model's guess with {shown} of the people's answers:"
            f" {accepted} ({100 * accepted / shown:.0f}%) accepted it with Enter,"
            f" {same} ({100 * same / shown:.0f}%) named its class (accepted or typed); the"
            f" other {shown - same} chose another class or unknown.")


def _rel(path: Path, root: Path) -> str:
    return quote(path.relative_to(root).as_posix())


def _run_context(run: RunResults, slug: str, out_dir: Path) -> dict[str, Any]:
    """Per-run details, formatted for the template."""
    metrics = [
        {
            "cycle": r["cycle"],
            "split": r["split"],
            "pixels_per_image": fmt_sig(r.get("pixels_per_image"), 4),
            "queried": r.get("queried_pixels", "–"),
            "labeled": r.get("labeled_pixels", "–"),
            "labeled_percent": fmt_sig(100 * float(r["labeled_fraction"])),
            "miou": "–" if r.get("miou") is None else f"{100 * float(r['miou']):.2f}",
            "train": fmt_duration(r.get("train_time_s")),
            "score": fmt_duration(r.get("score_time_s")),
            "wall": fmt_duration(r.get("wall_time_s")),
        }
        for r in sorted([*run.metrics, *run.unevaluated], key=lambda r: int(r["cycle"]))
    ]
    names = run.class_names
    ids = sorted(
        {int(k) for c in run.answer_counts.values() for k in c if k != UNKNOWN} | set(
            range(len(names))
        )
    )
    columns: list[int | str] = [*ids, UNKNOWN]
    answers = {
        "columns": [names[i] if isinstance(i, int) and i < len(names) else str(i)
                    for i in columns],
        "rows": [
            {"cycle": cycle, "counts": [counts.get(k, 0) for k in columns],
             "total": sum(counts.values())}
            for cycle, counts in run.answer_counts.items()
        ],
    }
    copied = _copy_overlays(run.overlays, out_dir / OVERLAYS / slug)  # as in a run directory
    groups: dict[int | None, list[dict[str, str]]] = {}
    for ov in run.overlays:
        caption = f"{ov.image_id} ({ov.kind})" if ov.kind else ov.image_id
        groups.setdefault(ov.cycle, []).append(
            {"src": _rel(copied[ov.path], out_dir), "caption": caption}
        )
    return {
        "name": run.name,
        "slug": slug,
        "label": run.label,
        "seed": "–" if run.seed is None else run.seed,
        "path": str(run.path.resolve()),
        "dataset": run.dataset.dataset or "–",
        "pool_split": run.dataset.split or "–",
        "metrics": metrics,
        "answers": answers,
        "suggestions": suggestion_line(run.suggestions),
        "unasked": unasked_note(run.answer_counts, names),
        "overlay_groups": [
            {"title": overlay_title(cycle), "items": items} for cycle, items in groups.items()
        ],
    }


def _tables(rows: Sequence[SummaryRow]) -> list[dict[str, Any]]:
    return [
        {
            "split": split,
            "headers": markdown_headers(split),
            "rows": [markdown_cells(r) for r in rows if r.split == split],
        }
        for split in dict.fromkeys(r.split for r in rows)
    ]


def _reference_lines(reference: dict[tuple[str, str], Reference]) -> list[str]:
    """'val 50.5 (supervised)' per split and reference, for the page's note."""
    seen = dict.fromkeys((split, ref.source, ref.miou) for (_, split), ref in reference.items())
    return [f"{split} {100 * miou:.1f} ({source})" for split, source, miou in seen]


def _markdown(rows: Sequence[SummaryRow], protocols: list[str],
              comparison: paired.PairedComparison, baseline_note: str) -> str:
    parts = [to_markdown(rows).rstrip("\n")]
    if protocols:
        parts.append("## Protocols\n\nThese runs differ in their protocol; each protocol is"
                     " its own curve, never pooled with another:\n\n"
                     + "\n".join(f"- {line}" for line in protocols))
    if comparison.baseline is not None:
        parts.append(f"## Paired against {comparison.baseline}\n\n"
                     + paired.to_markdown(comparison).rstrip("\n"))
    elif baseline_note:
        parts.append(f"_{baseline_note}_")
    return "\n\n".join(parts) + "\n"


def make_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    supervised_miou: float | None = None,
    baseline: str | None = None,
) -> Path:
    """Write plots, summary.csv, summary.md, per_class.csv, paired.csv and index.html for
    the runs; returns index.html.

    ``supervised_miou`` (0..1) is the reference for the '% of supervised' column; without
    it each curve's reference is the matching supervised runs' mean, per split.
    ``baseline`` (a strategy such as ``margin+pixelpick``) is what every other strategy is
    paired with, seed by seed (``balseg.report.paired``); None: margin+pixelpick when the
    runs have it, else no paired table. Runs of different protocols are never pooled
    (``balseg.report.protocols``).
    """
    # matplotlib is imported here so that `import balseg.report` (run_label) stays light.
    from balseg.report.plots import (
        plot_answer_histogram,
        plot_curves,
        plot_paired,
        plot_per_class,
        plot_per_class_cycles,
    )

    if not run_dirs:
        raise ReportError("no run directories given")
    if supervised_miou is not None and not 0 < supervised_miou <= 1:
        raise ReportError(f"supervised mIoU must be in (0, 1], got {supervised_miou}")
    paths = list(dict.fromkeys(Path(p).resolve() for p in run_dirs))
    out = Path(out_dir) if out_dir is not None else default_out_dir(paths)
    runs = [read_run(p) for p in paths]
    notes = [n for n in (r.no_evaluation_note() for r in runs) if n]
    for note in notes:
        warnings.warn(note, ReportWarning, stacklevel=2)
    grouping: Grouping = group_runs(runs)
    chosen = paired.resolve_baseline(baseline, runs)
    _check_writable(out, default=out_dir is None)  # input checked; before any plot or table

    protocols = protocol_lines(grouping)
    if len(grouping.learning) > 1:
        curves = [
            (f"[{c.suffix}]" if c.suffix else "unmarked")
            + f" ({len(c.runs)} run{'s' if len(c.runs) != 1 else ''})"
            for c in grouping.learning
        ]
        warnings.warn(
            "these runs differ in " + ", ".join(grouping.differing) + ": each protocol is"
            " its own curve, never averaged with another: " + ", ".join(curves),
            ReportWarning, stacklevel=2)
    rows = summarize(runs, supervised_miou, grouping)
    reference = supervised_reference(runs, supervised_miou, grouping)
    comparison = paired.compare(runs, grouping, chosen)
    strategies = {r.label for r in runs if not r.is_supervised}
    baseline_note = "" if chosen is not None or len(strategies) < 2 else (
        f"No paired table: no {paired.DEFAULT_BASELINE} runs; choose a baseline with"
        " --baseline.")
    write_csv(rows, out / "summary.csv")
    write_answers_csv(runs, out / "answers.csv")
    write_per_class_csv(rows, grouping, out / "per_class.csv")
    (out / "summary.md").write_text(_markdown(rows, protocols, comparison, baseline_note),
                                    encoding="utf-8")
    plot_curves(rows, reference, out / "miou_vs_pixels_per_image.png",
                x="pixels_per_image", xlabel="queried pixels per image", grouping=grouping)
    plot_curves(rows, reference, out / "miou_vs_labeled_fraction.png",
                x="labeled_percent", xlabel="queried pixels (% of all pool pixels)",
                grouping=grouping)
    plot_per_class(rows, grouping, out / "per_class_iou.png")
    plot_per_class_cycles(rows, grouping, out / "per_class_iou_by_cycle.png")
    plot_answer_histogram(runs, out / "answer_histogram.png")
    figures = list(FIGURES.items())
    if comparison.baseline is not None:
        paired.write_csv(comparison.rows, out / "paired.csv")
        plot_paired(comparison.rows, out / PAIRED_FIGURE[0], grouping)
        figures.insert(2, PAIRED_FIGURE)
    else:  # a stale table from an earlier report in this folder would mislead
        (out / "paired.csv").unlink(missing_ok=True)
        (out / PAIRED_FIGURE[0]).unlink(missing_ok=True)

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    html = env.get_template("index.html.j2").render(
        title="balseg report" + (f": {runs[0].name}" if len(runs) == 1 else ""),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=balseg.__version__,
        figures=[{"src": quote(name), "title": title} for name, title in figures],
        tables=_tables(rows),
        std_note=STD_NOTE,
        reference=_reference_lines(reference),
        reference_source="--supervised-miou" if supervised_miou is not None else "supervised runs",
        protocols=protocols,
        notes=notes,
        paired={
            "baseline": comparison.baseline,
            "tables": paired.paired_tables(comparison.rows),
            "notes": comparison.notes,
            "note": paired.PAIRED_NOTE,
            "missing": baseline_note,
            "shown": chosen is not None or bool(baseline_note),  # one strategy: nothing to pair
        },
        per_class=per_class_tables(rows, grouping),
        runs=[_run_context(r, s, out) for r, s in zip(runs, _slugs(runs), strict=True)],
    )
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index
