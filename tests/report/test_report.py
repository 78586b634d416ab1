from __future__ import annotations

import csv
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from matplotlib.image import imread
from typer.testing import CliRunner

from balseg.cli import register
from balseg.report import ReportError, ReportWarning, make_report, read_run, run_label
from balseg.report.runs import read_metrics

from .fabricate import (
    CYCLES,
    POOL_PIXELS,
    SEEDS,
    STRATEGIES,
    SUPERVISED_MIOU,
    metrics_row,
    miou_of,
    ppi_of,
)

PNGS = (
    "miou_vs_pixels_per_image.png",
    "miou_vs_labeled_fraction.png",
    "per_class_iou.png",
    "per_class_iou_by_cycle.png",
    "answer_histogram.png",
)
LABELS = {"balentacq": "balentacq", "random": "random+pixelpick"}


@pytest.fixture(scope="module")
def report(run_dirs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_report(run_dirs, tmp_path_factory.mktemp("report"))


def read_summary(index: Path) -> list[dict[str, str]]:
    with (index.parent / "summary.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_label() -> None:
    acq = {"strategy": "entropy", "selection": "topk", "official_compat": False}
    assert run_label({"acquisition": acq}) == "entropy"
    assert run_label({"acquisition": {**acq, "selection": "pixelpick"}}) == "entropy+pixelpick"
    assert run_label({"acquisition": {**acq, "strategy": "balentacq", "selection": "pixelpick",
                                      "official_compat": True}}) == "balentacq+pixelpick+compat"
    # the config accepts official_compat with any score, but it changes balent* only
    assert run_label({"acquisition": {**acq, "selection": "pixelpick",
                                      "official_compat": True}}) == "entropy+pixelpick"
    # a wider pool is another method: its runs must not pool with PixelPick's 5% ones
    assert run_label({"acquisition": {**acq, "selection": "pixelpick",
                                      "top_fraction": 0.1}}) == "entropy+pixelpick10"
    assert run_label({"acquisition": {**acq, "selection": "pixelpick",
                                      "top_fraction": 0.025}}) == "entropy+pixelpick2.5"
    assert run_label({"acquisition": {**acq, "selection": "topk",
                                      "top_fraction": 0.1}}) == "entropy"


def test_summary_matches_hand_computation(report: Path) -> None:
    rows = read_summary(report)
    assert len(rows) == len(STRATEGIES) * len(CYCLES) + 1  # + the supervised row
    for strategy, label in LABELS.items():
        for cycle in CYCLES:
            (row,) = [r for r in rows if r["strategy"] == label and r["cycle"] == str(cycle)]
            mious = [miou_of(strategy, s, cycle) for s in SEEDS]
            mean, std = statistics.mean(mious), statistics.stdev(mious)
            assert row["split"] == "val"
            assert int(row["n_seeds"]) == len(SEEDS)
            assert row["seeds"] == "0 1 2"
            assert float(row["miou_mean"]) == pytest.approx(mean, rel=1e-5)
            assert float(row["miou_std"]) == pytest.approx(std, rel=1e-5)
            assert float(row["pixels_per_image"]) == pytest.approx(ppi_of(cycle))
            queried = ppi_of(cycle) * 20
            assert float(row["queried_pixels"]) == pytest.approx(queried)
            assert float(row["labeled_pixels"]) == pytest.approx(queried - 3)
            assert float(row["labeled_percent"]) == pytest.approx(
                100 * queried / POOL_PIXELS, rel=1e-5)
            assert float(row["percent_of_supervised"]) == pytest.approx(
                100 * mean / SUPERVISED_MIOU, rel=1e-5)
            assert float(row["wall_time_s"]) == pytest.approx(100 * (cycle + 1) + 1)
    (sup,) = [r for r in rows if r["strategy"] == "supervised"]
    assert float(sup["labeled_percent"]) == pytest.approx(100)
    assert float(sup["percent_of_supervised"]) == pytest.approx(100)
    assert float(sup["miou_std"]) == 0


def test_option_overrides_supervised_reference(run_dirs: list[Path], tmp_path: Path) -> None:
    without_sup = [p for p in run_dirs if not p.name.startswith("supervised")]
    plain = read_summary(make_report(without_sup, tmp_path / "a"))
    assert {r["percent_of_supervised"] for r in plain} == {""}
    index = make_report(run_dirs, tmp_path / "b", supervised_miou=0.5)
    row = next(r for r in read_summary(index) if r["strategy"] == "balentacq")
    mean = statistics.mean(miou_of("balentacq", s, 0) for s in SEEDS)
    assert float(row["percent_of_supervised"]) == pytest.approx(100 * mean / 0.5, rel=1e-5)
    with pytest.raises(ReportError, match="supervised mIoU"):
        make_report(run_dirs, tmp_path / "c", supervised_miou=62.0)


def test_markdown_table(report: Path) -> None:
    md = (report.parent / "summary.md").read_text()
    assert ("| strategy | pixels/image | labeled % | val mIoU % mean ± std (n) | % of supervised"
            " | wall time |") in md
    mean = statistics.mean(miou_of("balentacq", s, 3) for s in SEEDS)
    std = statistics.stdev(miou_of("balentacq", s, 3) for s in SEEDS)
    pct = 100 * 40 * 20 / POOL_PIXELS
    expected = (f"| balentacq | 40 | {pct:.3g} | {100 * mean:.1f} ± {100 * std:.1f} (3)"
                f" | {100 * mean / SUPERVISED_MIOU:.1f} | 6.7 min |")  # (400 + 401 + 402) s / 3
    assert expected in md
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[-1].startswith("| supervised | 1024 | 100 | 80.0 ± 0.0 (1) | 100.0 |")


def test_pngs_and_html(report: Path) -> None:
    assert report.name == "index.html"
    html = report.read_text()
    for name in PNGS:
        png = report.parent / name
        assert png.stat().st_size > 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert imread(png).ndim == 3
        assert f'src="{name}"' in html
    assert '<table class="summary">' in html
    assert "val mIoU % mean ± std (n)" in html
    assert "random+pixelpick" in html
    assert 'href="summary.csv"' in html


def test_per_class_iou_for_every_cycle(report: Path) -> None:
    """per_class.csv and the page's tables hold every cycle, not only the last."""
    with (report.parent / "per_class.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for strategy, label in LABELS.items():
        for cycle in CYCLES:
            mine = [r for r in rows if (r["strategy"], r["cycle"]) == (label, str(cycle))]
            assert [r["class"] for r in mine] == ["road", "car", "sky"]
            mious = [miou_of(strategy, s, cycle) for s in SEEDS]
            road, car, sky = mine
            assert float(road["iou_mean"]) == pytest.approx(statistics.mean(mious) + 0.1)
            assert float(sky["iou_mean"]) == pytest.approx(statistics.mean(mious) - 0.1)
            assert float(sky["iou_std"]) == pytest.approx(statistics.stdev(mious), abs=1e-6)
            assert car["iou_mean"] == car["iou_std"] == ""  # absent in every seed
            assert road["n_seeds"] == "3"
            assert float(road["pixels_per_image"]) == pytest.approx(ppi_of(cycle))
    html = report.read_text()
    assert html.count('<table class="per-class">') == len(STRATEGIES) + 1  # + supervised
    mean = statistics.mean(miou_of("random", s, 2) for s in SEEDS)
    std = statistics.stdev(miou_of("random", s, 2) for s in SEEDS)
    cells = (f'<td class="num">{100 * (mean + 0.1):.1f} ± {100 * std:.1f}</td>'
             '<td class="num">–</td>'
             f'<td class="num">{100 * (mean - 0.1):.1f} ± {100 * std:.1f}</td>')
    assert '<tr><td>2</td><td class="num">30</td><td class="num">3</td>' in html
    assert cells in html


def test_overlays_copied_and_newest_cycle_first(report: Path) -> None:
    html = report.read_text()
    out = report.parent
    for cycle in (1, 2):
        for kind in ("uncertainty", "queries"):
            rel = f"overlays/balentacq-s0/cycle_{cycle:03d}_img0_{kind}.png"
            assert (out / rel).is_file()
            assert f'src="{rel}"' in html
    assert html.index("cycle_002_img0") < html.index("cycle_001_img0")
    # each group says what it shows: cycle 2's model chose cycle 3's queries (issue 29:
    # the section "cycle 2" showed "cycle 3 new" points without saying why)
    title = ("<h5>cycle {}&#39;s model: what it wants labelled, and the queries it chose"
             " (cycle {}, ringed)</h5>")
    assert html.index(title.format(2, 3)) < html.index(title.format(1, 2))


def test_answer_histogram_counts(run_dirs: list[Path], report: Path) -> None:
    run = read_run(next(p for p in run_dirs if p.name == "balentacq-s0"))
    assert run.answer_counts == {0: {0: 2, 1: 1, "unknown": 1}, 1: {2: 1, "unknown": 1}}
    html = report.read_text()
    cells = "".join(f'<td class="num">{n}</td>' for n in (2, 1, 0, 1, 4))
    assert f"<tr><td>0</td>{cells}</tr>" in html  # road car sky unknown total


def test_answers_csv_has_the_histograms_numbers(report: Path) -> None:
    """answers.csv: per strategy, cycle and class the mean answers over the runs that have
    answers (one here) and their share; 'unknown' (a void pixel's answer) is a row too."""
    with (report.parent / "answers.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    got = {(r["strategy"], r["cycle"], r["class"]): (r["runs"], float(r["answers_mean"]),
                                                     float(r["share"])) for r in rows}
    assert got[("balentacq", "0", "road")] == ("1", 2.0, 0.5)
    assert got[("balentacq", "0", "car")] == ("1", 1.0, 0.25)
    assert got[("balentacq", "0", "sky")] == ("1", 0.0, 0.0)  # every class, asked or not
    assert got[("balentacq", "0", "unknown")] == ("1", 1.0, 0.25)
    assert got[("balentacq", "1", "sky")] == ("1", 1.0, 0.5)
    assert {r["class_id"] for r in rows if r["class"] == "unknown"} == {""}
    assert {r["strategy"] for r in rows} == {"balentacq"}  # the random runs have no answers


def test_several_splits_give_one_curve_set_each(make_run: Callable[..., Path],
                                                tmp_path: Path) -> None:
    rows = [metrics_row("balentacq", 0, c, split) for c in CYCLES for split in ("val", "test")]
    index = make_report([make_run(rows=rows)], tmp_path / "out")
    summary = read_summary(index)
    assert [r["split"] for r in summary] == ["val"] * 4 + ["test"] * 4
    assert "test mIoU % mean ± std (n)" in (index.parent / "summary.md").read_text()
    assert "split: test" in index.read_text()


def test_truncated_last_line_is_tolerated(make_run: Callable[..., Path]) -> None:
    run_dir = make_run()
    with (run_dir / "metrics.jsonl").open("a") as fh:
        fh.write('{"cycle": 4, "split": "va')
    with pytest.warns(ReportWarning, match=r"metrics\.jsonl:5"):
        rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["cycle"] for r in rows] == list(CYCLES)


def test_corrupt_middle_line_names_file_and_line(make_run: Callable[..., Path]) -> None:
    run_dir = make_run()
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:20]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match=rf"{path}:2: not a valid metrics row"):
        read_run(run_dir)


def test_row_without_required_field_is_an_error(make_run: Callable[..., Path]) -> None:
    row = metrics_row("balentacq", 0, 0)
    del row["miou"]
    run_dir = make_run(rows=[row, metrics_row("balentacq", 0, 1)])
    with pytest.raises(ReportError, match=r"metrics\.jsonl:1: metrics row lacks miou"):
        read_run(run_dir)


def test_missing_config_is_an_error(make_run: Callable[..., Path], tmp_path: Path) -> None:
    run_dir = make_run()
    (run_dir / "config.yaml").unlink()
    with pytest.raises(ReportError, match=rf"{run_dir} is not a run directory \(no config"):
        make_report([run_dir], tmp_path / "out")


def test_run_without_labels_or_dataset_json(make_run: Callable[..., Path],
                                            tmp_path: Path) -> None:
    run_dir = make_run()
    (run_dir / "dataset.json").unlink()
    with pytest.warns(ReportWarning, match="dataset.json is missing"):
        index = make_report([run_dir], tmp_path / "out")
    assert "class 1" not in index.read_text()  # no answers table without labels.sqlite
    assert (index.parent / "per_class_iou.png").stat().st_size > 0


# -- CLI --------------------------------------------------------------------------------------
@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    register(app, "balseg.report.cli")

    @app.command("noop")
    def noop() -> None:  # a second command keeps `report` a subcommand, as in balseg.cli
        """Nothing."""

    return app


def test_cli_report(app: typer.Typer, run_dirs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["report", *map(str, run_dirs), "--out", str(out), "--supervised-miou", "0.5"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(out / "index.html")
    row = next(r for r in read_summary(out / "index.html") if r["strategy"] == "balentacq")
    assert float(row["percent_of_supervised"]) == pytest.approx(
        100 * statistics.mean(miou_of("balentacq", s, 0) for s in SEEDS) / 0.5, rel=1e-5)


def test_cli_single_run_defaults_to_run_dir_report(app: typer.Typer,
                                                   make_run: Callable[..., Path]) -> None:
    run_dir = make_run()
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report" / "index.html").is_file()
    assert str(run_dir / "report" / "index.html") in result.output


def test_cli_errors_exit_2(app: typer.Typer, run_dirs: list[Path], tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["report", *map(str, run_dirs[:2])])
    assert result.exit_code == 2
    assert "--out" in result.output
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    result = runner.invoke(app, ["report", str(not_a_run), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"{not_a_run} is not a run directory" in result.output



def test_cli_prints_warnings_as_lines(app: typer.Typer, make_run: Callable[..., Path]) -> None:
    run_dir = make_run()
    with (run_dir / "metrics.jsonl").open("a") as fh:
        fh.write('{"cycle": 4')
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "Warning: " in result.output
    assert "metrics.jsonl:5: ignoring an unreadable last line" in result.output


def test_selection_variants_of_one_score_are_told_apart_by_line_and_marker() -> None:
    from balseg.report.plots import style_for

    labels = ["balentacq", "balentacq+pixelpick", "balentacq+pixelpick10", "balentacq+classes",
              "balentacq+contour", "balentacq+pixelpick+compat"]
    styles = [style_for(label) for label in labels]
    assert {s["color"] for s in styles} == {styles[0]["color"]}  # the score's colour
    looks = [(str(s["linestyle"]), s["marker"]) for s in styles]
    assert looks[1] == looks[2]  # a pool size is the same selection rule
    assert len(set(looks)) == len(labels) - 1


def test_a_cycle_that_asks_nothing_of_some_classes_says_so(make_run: Callable[..., Path],
                                                            tmp_path: Path) -> None:
    """Issue 29: cycle 1's 400 queries were 106 Sky, 106 Building and no Bicyclist; the
    run's report says which classes went unasked and what is known about spreading."""
    from balseg.labels import LabelStore
    from balseg.report import make_report

    run_dir = make_run("few", class_names=["sky", "building", "bicyclist"])
    with LabelStore(run_dir / "labels.sqlite", num_classes=3) as store:
        ids = store.add_queries([("img0", 0, i, None) for i in range(30)], cycle=1,
                                strategy="balentacq")
        store.add_answers([(q, 0 if k < 20 else 1) for k, q in enumerate(ids)],
                          source="person", annotator="p")
    html = make_report([run_dir], tmp_path / "out").read_text()
    assert "Cycle 1 asked nothing of bicyclist while sky took 67% of its 30 answers." in html
    assert "acquisition.selection: classes" in html
    even = make_run("even")
    with LabelStore(even / "labels.sqlite", num_classes=3) as store:
        ids = store.add_queries([("img0", 0, i, None) for i in range(30)], cycle=1,
                                strategy="balentacq")
        store.add_answers([(q, k % 3) for k, q in enumerate(ids)], source="person")
    assert "asked nothing" not in make_report([even], tmp_path / "out2").read_text()
