"""Runs of different datasets, class lists or protocols are never pooled into one curve."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import pytest

from balseg.report import ReportWarning, make_report, read_run
from balseg.report.protocols import group_runs

from .fabricate import CYCLES, metrics_row, write_run

SIX = ["road", "car", "sky", "tree", "sign", "person"]


def rows_of(mious: dict[int, float], per_class: int = 3) -> list[dict[str, Any]]:
    """Metrics rows with the given mIoU per cycle (per-class IoU: mIoU + 0.01 * class)."""
    out = []
    for cycle, miou in mious.items():
        row = metrics_row("balentacq", 0, cycle)
        row.update(miou=miou, per_class_iou=[miou + 0.01 * i for i in range(per_class)])
        out.append(row)
    return out


def summary(index: Path) -> list[dict[str, str]]:
    with (index.parent / "summary.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def curve(index: Path, label: str) -> dict[int, dict[str, str]]:
    return {int(r["cycle"]): r for r in summary(index) if r["strategy"] == label}


def test_three_and_six_class_runs_are_two_curves_not_one_mean(tmp_path: Path) -> None:
    """The issue's case: same dataset name, same strategy and seed, 3 and 6 classes. They
    used to be averaged into one curve with only a 'several runs share a seed' warning."""
    three = write_run(tmp_path / "three", strategy="balentacq", seed=0,
                      rows=rows_of({0: 0.60, 1: 0.70}))
    six = write_run(tmp_path / "six", strategy="balentacq", seed=0, class_names=SIX,
                    rows=rows_of({0: 0.20, 1: 0.30}, per_class=6),
                    config={"data": {"options": {"num_classes": 6}}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = make_report([three, six], tmp_path / "out")
    messages = [str(w.message) for w in caught if issubclass(w.category, ReportWarning)]
    assert not [m for m in messages if "share a seed" in m]
    assert any("each protocol is its own curve" in m for m in messages)
    assert {r["strategy"] for r in summary(index)} == {"balentacq [3 classes]",
                                                        "balentacq [6 classes]"}
    for label, mious in (("balentacq [3 classes]", (0.60, 0.70)),
                         ("balentacq [6 classes]", (0.20, 0.30))):
        rows = curve(index, label)
        assert [float(rows[c]["miou_mean"]) for c in (0, 1)] == pytest.approx(mious)
        assert {rows[c]["n_seeds"] for c in (0, 1)} == {"1"}
    md = (index.parent / "summary.md").read_text()
    assert "## Protocols" in md
    assert "- [3 classes]: 3 classes, num_classes=unset; balentacq (1 run)" in md
    assert "- [6 classes]: 6 classes, num_classes=6; balentacq (1 run)" in md
    html = index.read_text()
    assert "balentacq [6 classes]" in html and 'id="protocols"' in html
    # each curve's per-class table names its own classes
    with (index.parent / "per_class.csv").open(newline="") as fh:
        per_class = list(csv.DictReader(fh))
    six_classes = [r["class"] for r in per_class
                   if r["strategy"] == "balentacq [6 classes]" and r["cycle"] == "0"]
    assert six_classes == SIX


def test_datasets_are_named_in_the_labels(tmp_path: Path) -> None:
    runs = [
        write_run(tmp_path / f"{ds}-s{seed}", strategy="balentacq", seed=seed, dataset=ds,
                  rows=rows_of({0: base + 0.01 * seed}))
        for ds, base in (("camvid", 0.5), ("synthetic", 0.8)) for seed in (0, 1)
    ]
    with pytest.warns(ReportWarning, match="differ in dataset"):
        index = make_report(runs, tmp_path / "out")
    assert float(curve(index, "balentacq [camvid]")[0]["miou_mean"]) == pytest.approx(0.505)
    assert float(curve(index, "balentacq [synthetic]")[0]["miou_mean"]) == pytest.approx(0.805)


def test_the_main_protocol_is_unmarked_and_the_others_name_what_differs(
        tmp_path: Path) -> None:
    def run(name: str, seed: int, miou: float, **config: Any) -> Path:
        return write_run(tmp_path / name, strategy="balentacq", seed=seed,
                         rows=rows_of({0: miou}), config=config)

    dirs = [
        # differ only in what names, places or speeds up a run, or in its length: pooled
        run("a", 0, 0.40, device="cpu", threads=2, data={"root": "/x", "cache_dir": "/c"},
            budget={"cycles": 4}, train={"eval_batch_size": 4}),
        run("b", 1, 0.42, device="cuda", data={"root": "/y"}, budget={"cycles": 8},
            acquisition={"score_batch_size": 32}),
        # an older snapshot without a key equals one that spells out its default
        run("c", 2, 0.44, model={"dropout_kind": "channel"}),
        run("elem", 0, 0.50, model={"dropout_kind": "element"}),
        run("budget", 0, 0.60, budget={"pixels_per_cycle": 20}),
    ]
    with pytest.warns(ReportWarning, match="differ in"):
        index = make_report(dirs, tmp_path / "out")
    main = curve(index, "balentacq")[0]
    assert main["seeds"] == "0 1 2"
    assert float(main["miou_mean"]) == pytest.approx(0.42)
    assert curve(index, "balentacq [dropout_kind=element]")[0]["seeds"] == "0"
    assert curve(index, "balentacq [pixels_per_cycle=20]")[0]["seeds"] == "0"
    assert len(summary(index)) == 3


def test_supervised_reference_is_per_dataset_and_the_best_of_several(tmp_path: Path) -> None:
    def sup(name: str, dataset: str, miou: float, steps: int) -> Path:
        row = metrics_row("balentacq", 0, 0)
        row.update(miou=miou, labeled_fraction=1.0, pixels_per_image=1024.0,
                   strategy="supervised")
        return write_run(tmp_path / name, strategy="supervised", seed=0, rows=[row],
                         dataset=dataset, config={"train": {"steps": steps}})

    dirs = [
        write_run(tmp_path / "cam", strategy="balentacq", seed=0, dataset="camvid",
                  rows=rows_of({0: 0.40})),
        write_run(tmp_path / "syn", strategy="balentacq", seed=0, dataset="synthetic",
                  rows=rows_of({0: 0.60})),
        sup("cam-sup-short", "camvid", 0.50, 550),
        sup("cam-sup-long", "camvid", 0.80, 3000),
        sup("syn-sup", "synthetic", 0.75, 300),
    ]
    with pytest.warns(ReportWarning):
        index = make_report(dirs, tmp_path / "out")
    pct = {r["strategy"]: float(r["percent_of_supervised"]) for r in summary(index)}
    # the reference of camvid is the better-trained camvid run, never the synthetic one
    assert pct["balentacq [camvid]"] == pytest.approx(100 * 0.40 / 0.80)
    assert pct["balentacq [synthetic]"] == pytest.approx(100 * 0.60 / 0.75)
    # the two camvid references stay two rows (the first given is unmarked); the shorter
    # one is measured against the longer
    assert pct["supervised [camvid]"] == pytest.approx(100 * 0.50 / 0.80)
    assert pct["supervised [camvid, steps=3000]"] == pytest.approx(100.0)
    assert pct["supervised [synthetic]"] == pytest.approx(100.0)
    assert "val 80.0 (supervised [camvid, steps=3000])" in index.read_text()


def test_grouping_is_stable_for_the_runs_it_is_given(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", strategy="margin", selection="pixelpick", seed=0,
                  rows=[metrics_row("balentacq", 0, c) for c in CYCLES])
    b = write_run(tmp_path / "b", strategy="margin", selection="pixelpick", seed=0,
                  rows=[metrics_row("balentacq", 0, c) for c in CYCLES],
                  config={"train": {"warm_start": True}})
    runs = [read_run(a), read_run(a), read_run(b)]
    grouping = group_runs(runs)
    assert [r.label for r in runs] == ["margin+pixelpick", "margin+pixelpick",
                                       "margin+pixelpick [warm_start=true]"]
    assert grouping.differing == ["train.warm_start"]
    group_runs(runs)  # again: same labels, not suffixed twice
    assert runs[2].label == "margin+pixelpick [warm_start=true]"
