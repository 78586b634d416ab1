"""Paired statistics against a baseline: exact numbers from fabricated runs."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from scipy import stats
from typer.testing import CliRunner

from balseg.cli import register
from balseg.errors import ReportError
from balseg.report import make_report
from balseg.report.paired import check_baseline, paired_stats

from .fabricate import metrics_row, write_run

# strategy spec -> seed -> mIoU per cycle (cycles 0, 1, 2)
BASELINE = {0: (0.40, 0.50, 0.60), 1: (0.42, 0.47, 0.61), 2: (0.38, 0.52, 0.58),
            3: (0.41, 0.49, 0.57)}  # seed 3: the baseline only
BALENT = {0: (0.40, 0.53, 0.66), 1: (0.42, 0.46, 0.65), 2: (0.38, 0.56, 0.59),
          4: (0.45, 0.55, 0.65)}  # seed 4: this strategy only
RANDOM = {1: (0.42, 0.44, 0.63)}  # one seed, shared with the baseline
SPECS = {
    "margin+pixelpick": ("margin", "pixelpick", BASELINE),
    "balentacq+pixelpick": ("balentacq", "pixelpick", BALENT),
    "random": ("random", "topk", RANDOM),
}


def rows_for(mious: tuple[float, ...]) -> list[dict[str, Any]]:
    out = []
    for cycle, miou in enumerate(mious):
        row = metrics_row("balentacq", 0, cycle)
        row["miou"] = miou
        out.append(row)
    return out


@pytest.fixture(scope="module")
def paired_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("paired")
    dirs = []
    for spec, (score, selection, table) in SPECS.items():
        for seed, mious in table.items():
            dirs.append(write_run(root / f"{spec}-s{seed}", strategy=score, seed=seed,
                                  selection=selection, rows=rows_for(mious)))
    return dirs


@pytest.fixture(scope="module")
def report(paired_runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    # no --baseline: margin+pixelpick is among the runs, so it is the default
    return make_report(paired_runs, tmp_path_factory.mktemp("report"))


def paired_csv(index: Path) -> list[dict[str, str]]:
    with (index.parent / "paired.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_mean_difference_interval_p_and_seeds_ahead_are_exact(report: Path) -> None:
    rows = {(r["strategy"], int(r["cycle"])): r for r in paired_csv(report)}
    assert {r["baseline"] for r in rows.values()} == {"margin+pixelpick"}
    for cycle in (0, 1, 2):
        row = rows[("balentacq+pixelpick", cycle)]
        mine = [BALENT[s][cycle] for s in (0, 1, 2)]
        base = [BASELINE[s][cycle] for s in (0, 1, 2)]
        diffs = [a - b for a, b in zip(mine, base, strict=True)]
        assert row["seeds"] == "0 1 2" and row["n_seeds"] == "3"
        assert row["unpaired_seeds"] == "4" and row["unpaired_baseline_seeds"] == "3"
        assert float(row["diff_mean"]) == pytest.approx(statistics.mean(diffs), abs=1e-6)
        assert float(row["miou_mean"]) == pytest.approx(statistics.mean(mine), abs=1e-6)
        assert float(row["baseline_miou_mean"]) == pytest.approx(statistics.mean(base),
                                                                 abs=1e-6)
        assert int(row["ahead"]) == sum(d > 0 for d in diffs)
        sd = statistics.stdev(diffs)
        if sd == 0:  # cycle 0: both start from the same model in every seed
            assert (float(row["ci_low"]), float(row["ci_high"])) == (0, 0)
            assert float(row["p_value"]) == 1
            continue
        half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
        assert float(row["ci_low"]) == pytest.approx(statistics.mean(diffs) - half, abs=1e-6)
        assert float(row["ci_high"]) == pytest.approx(statistics.mean(diffs) + half, abs=1e-6)
        assert float(row["p_value"]) == pytest.approx(stats.ttest_rel(mine, base).pvalue,
                                                      rel=1e-4)
    # cycle 1: +0.03, -0.01, +0.04 -> mean +0.02, ahead in 2 of 3
    assert float(rows[("balentacq+pixelpick", 1)]["diff_mean"]) == pytest.approx(0.02)
    assert rows[("balentacq+pixelpick", 1)]["ahead"] == "2"


def test_one_shared_seed_gives_a_difference_but_no_interval(report: Path) -> None:
    row = next(r for r in paired_csv(report)
               if r["strategy"] == "random" and r["cycle"] == "1")
    assert row["n_seeds"] == "1" and row["seeds"] == "1"
    assert float(row["diff_mean"]) == pytest.approx(0.44 - 0.47)
    assert row["ci_low"] == row["ci_high"] == row["p_value"] == row["diff_std"] == ""
    assert row["ahead"] == "0"
    assert row["unpaired_baseline_seeds"] == "0 2 3"


def test_markdown_and_html_show_the_paired_table(report: Path) -> None:
    md = (report.parent / "summary.md").read_text()
    assert "## Paired against margin+pixelpick" in md
    assert ("| strategy | pixels/image | n | Δ mIoU (points) | 95% CI (paired t) |"
            " p (paired t) | ahead |") in md
    diffs = [BALENT[s][2] - BASELINE[s][2] for s in (0, 1, 2)]
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    p = stats.ttest_rel([BALENT[s][2] for s in (0, 1, 2)],
                        [BASELINE[s][2] for s in (0, 1, 2)]).pvalue
    expected = (f"| balentacq+pixelpick | 30 | 3 | {100 * mean:+.2f} |"
                f" [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}] | {p:.3f} |"
                " 3 of 3 |")
    assert expected in md
    assert "| random | 20 | 1 | -3.00 | – | – | 0 of 1 |" in md
    assert ("balentacq+pixelpick: unpaired, left out: seed 4 of balentacq+pixelpick"
            " (no margin+pixelpick result); seed 3 of margin+pixelpick") in md
    assert "paired t-test" in md
    html = report.read_text()
    assert '<table class="paired">' in html
    assert "against margin+pixelpick, split: val" in html
    assert 'href="paired.csv"' in html and 'src="paired_difference.png"' in html
    assert (report.parent / "paired_difference.png").read_bytes()[:4] == b"\x89PNG"


def test_paired_stats_edge_cases() -> None:
    one = paired_stats([0.05])
    assert one["mean"] == pytest.approx(0.05)
    assert one["ci_low"] is None and one["p"] is None and one["std"] is None
    same = paired_stats([0.02, 0.02, 0.02])
    assert same["ci_low"] == pytest.approx(0.02) and same["p"] == 0.0
    assert paired_stats([0.0, 0.0])["p"] == 1.0
    with pytest.raises(ValueError):
        paired_stats([])


def test_explicit_baseline_and_unknown_baseline(paired_runs: list[Path],
                                                tmp_path: Path) -> None:
    index = make_report(paired_runs, tmp_path / "a", baseline="random")
    rows = paired_csv(index)
    assert {r["baseline"] for r in rows} == {"random"}
    assert {r["strategy"] for r in rows} == {"balentacq+pixelpick", "margin+pixelpick"}
    assert {r["seeds"] for r in rows} == {"1"}
    with pytest.raises(ReportError, match=r"--baseline 'bald': no run has this strategy;"
                       r" the runs' strategies are balentacq\+pixelpick, margin\+pixelpick,"
                       r" random"):
        make_report(paired_runs, tmp_path / "b", baseline="bald")
    assert not (tmp_path / "b").exists()  # refused before anything is written
    with pytest.raises(ReportError, match="supervised is the reference"):
        make_report(paired_runs, tmp_path / "c", baseline="supervised")
    with pytest.raises(ReportError, match=r"unknown flag .fast."):
        make_report(paired_runs, tmp_path / "c", baseline="margin+fast")


def test_no_margin_runs_no_paired_table(run_dirs: list[Path], tmp_path: Path,
                                        paired_runs: list[Path]) -> None:
    out = tmp_path / "out"
    make_report(paired_runs, out)
    assert (out / "paired.csv").is_file()
    index = make_report(run_dirs, out)  # the session's runs: balentacq and random only
    assert not (out / "paired.csv").exists()  # the earlier table is gone, not left stale
    assert not (out / "paired_difference.png").exists()
    assert "No paired table: no margin+pixelpick runs" in (out / "summary.md").read_text()
    assert "choose a baseline with --baseline" in index.read_text()


def test_a_protocol_without_the_baseline_pairs_with_the_closest(tmp_path: Path) -> None:
    def run(name: str, score: str, seed: int, mious: tuple[float, ...], **config: Any) -> Path:
        return write_run(tmp_path / name, strategy=score, seed=seed, selection="pixelpick",
                         rows=rows_for(mious), config=config)

    dirs = [
        run("m0", "margin", 0, (0.4, 0.5)), run("m1", "margin", 1, (0.4, 0.6)),
        run("e0", "margin", 0, (0.4, 0.7), model={"dropout_kind": "element"}),
        run("w0", "margin", 0, (0.4, 0.7), train={"warm_start": True}),
        run("t0", "balentacq", 0, (0.4, 0.55), acquisition={"mc_samples": 40}),
        run("t1", "balentacq", 1, (0.4, 0.75), acquisition={"mc_samples": 40}),
        # one key from the element and the warm-start margin curves: a tie, so no pairing
        run("x0", "balentacq", 0, (0.4, 0.5), model={"dropout_kind": "element"},
            train={"warm_start": True}),
        # another budget per image: never paired by cycle
        run("b0", "balentacq", 0, (0.4, 0.5), budget={"pixels_per_cycle": 20}),
    ]
    with pytest.warns(Warning):
        index = make_report(dirs, tmp_path / "out")
    rows = {(r["strategy"], r["cycle"]): r for r in paired_csv(index)}
    row = rows[("balentacq+pixelpick [mc_samples=40]", "1")]
    assert row["baseline"] == "margin+pixelpick"
    assert float(row["diff_mean"]) == pytest.approx(0.1)  # (0.05 + 0.15) / 2
    assert row["protocol_differences"] == "mc_samples 40 vs 20"
    assert not [k for k in rows if k[0].startswith("balentacq+pixelpick [dropout_kind")]
    md = (index.parent / "summary.md").read_text()
    assert ("balentacq+pixelpick [dropout_kind=element, warm_start=true]: not paired: several"
            " baseline curves are equally close (margin+pixelpick [dropout_kind=element],"
            " margin+pixelpick [warm_start=true]); name one with --baseline") in md
    assert ("balentacq+pixelpick [pixels_per_cycle=20]: not paired: no baseline run with the"
            " same dataset, classes, data and budget settings") in md
    # naming one curve makes it the baseline of every curve it can be paired with
    with pytest.warns(Warning):
        index = make_report(dirs, tmp_path / "out2",
                            baseline="margin+pixelpick [warm_start=true]")
    rows = {(r["strategy"], r["cycle"]): r for r in paired_csv(index)}
    row = rows[("balentacq+pixelpick [dropout_kind=element, warm_start=true]", "1")]
    assert row["baseline"] == "margin+pixelpick [warm_start=true]"
    assert row["protocol_differences"] == "dropout_kind element vs channel"
    assert float(row["diff_mean"]) == pytest.approx(0.5 - 0.7)


# -- the CLI options ----------------------------------------------------------------------------
@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    register(app, "balseg.report.cli")
    register(app, "balseg.experiments.cli")
    return app


def test_cli_baseline_option(app: typer.Typer, paired_runs: list[Path], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(app, ["report", *map(str, paired_runs), "--out", str(out),
                                 "--baseline", "random"])
    assert result.exit_code == 0, result.output
    assert {r["baseline"] for r in paired_csv(out / "index.html")} == {"random"}
    result = runner.invoke(app, ["report", *map(str, paired_runs), "--out", str(out),
                                 "--baseline", "entropy"])
    assert result.exit_code == 2
    assert "error: --baseline 'entropy': no run has this strategy" in result.output
    assert "balentacq+pixelpick, margin+pixelpick, random" in result.output


def test_bench_refuses_a_baseline_it_does_not_run_before_running(
        app: typer.Typer, tmp_path: Path, make_run: Callable[..., Path]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("name: b\n")
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["bench", str(config), "--out", str(out), "--strategy",
                                      "random", "--strategy", "margin+pixelpick@1",
                                      "--baseline", "bald"])
    assert result.exit_code == 2
    assert ("error: --baseline 'bald' is not one of the bench's strategies: random,"
            " margin+pixelpick") in result.output
    assert not out.exists()
    check_baseline("margin+pixelpick", ["random", "margin+pixelpick@1"])
    check_baseline(None, ["random"])


def test_one_strategy_has_no_paired_section(make_run: Callable[..., Path], tmp_path: Path
                                            ) -> None:
    """A single run (the quick start's) has nothing to pair: no section, no note (issue 29:
    the page said "No paired table: no margin+pixelpick runs" to a newcomer)."""
    index = make_report([make_run("mine")], tmp_path / "out")
    html = index.read_text()
    assert 'id="paired"' not in html and "No paired table" not in html
    assert "No paired table" not in (tmp_path / "out" / "summary.md").read_text()
