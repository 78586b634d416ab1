"""balseg.rundir: the one home of the run directory's layout and formats."""

import json

import pytest

from balseg.errors import BalsegWarning, MissingFileError, RunDirError
from balseg.rundir import DatasetMeta, RunDir, metrics_csv, read_metrics


def row(cycle, **extra):
    return {"cycle": cycle, "split": "val", "miou": 0.5, "pixels_per_image": 10.0 * cycle,
            "labeled_fraction": 0.01, **extra}


def test_metrics_round_trip_and_csv_has_the_union_of_columns(tmp_path):
    rd = RunDir(tmp_path)
    rows = [row(0, per_class_iou=[0.1, None]), row(1, train_steps=80, final_loss=0.3)]
    rd.write_metrics(rows)
    assert rd.read_metrics() == rows
    header, *lines = rd.metrics_csv.read_text().splitlines()
    assert header.split(",") == ["cycle", "split", "miou", "pixels_per_image",
                                 "labeled_fraction", "train_steps", "final_loss"]
    assert lines[0].endswith(",,") and lines[1].endswith(",80,0.3")
    assert metrics_csv([]) == "\n"


def test_a_partial_last_line_is_skipped_a_bad_middle_line_is_an_error(tmp_path):
    rd = RunDir(tmp_path)
    rd.write_metrics([row(0), row(1)])
    with rd.metrics.open("a") as f:
        f.write('{"cycle": 2, "spl')
    with pytest.warns(BalsegWarning, match=r"metrics\.jsonl:3: ignoring"):
        assert [r["cycle"] for r in rd.read_metrics()] == [0, 1]
    lines = rd.metrics.read_text().splitlines()
    rd.metrics.write_text("\n".join([lines[0], "{oops", lines[1]]) + "\n")
    with pytest.raises(RunDirError, match=r"metrics\.jsonl:2: not a valid metrics row"):
        read_metrics(rd.metrics)
    rd.metrics.write_text(json.dumps({"cycle": 0, "split": "val"}) + "\n")
    with pytest.raises(RunDirError, match="lacks miou, pixels_per_image"):
        read_metrics(rd.metrics)
    assert read_metrics(tmp_path / "absent.jsonl") == []


def test_checkpoints_latest_pruning_and_clear_errors(tmp_path):
    rd = RunDir(tmp_path / "run")
    with pytest.raises(MissingFileError, match="has no checkpoint yet"):
        rd.require_checkpoint()
    rd.make()
    for c in (0, 1, 2, 10):
        rd.checkpoint(c).write_bytes(b"x")
    (rd.checkpoints_dir / "notes.txt").write_text("")
    assert rd.checkpoint_cycles() == [0, 1, 2, 10]
    assert rd.latest_checkpoint() == (10, rd.checkpoint(10))
    rd.prune_checkpoints()
    assert rd.checkpoint_cycles() == [2, 10]
    assert rd.require_checkpoint(2) == (2, rd.checkpoint(2))
    with pytest.raises(MissingFileError, match=r"cycle_001\.pt: no checkpoint of cycle 1 "
                                               r"\(this run keeps 2, 10"):
        rd.require_checkpoint(1)


def test_dataset_meta_and_config_errors_name_the_file(tmp_path):
    rd = RunDir(tmp_path)
    meta = DatasetMeta(dataset="folder", root="/data", split="all", class_names=["a", "b"],
                       palette=[[1, 2, 3], [4, 5, 6]], num_images=3)
    rd.write_dataset(meta)
    assert rd.read_dataset() == meta
    rd.dataset.write_text("[1, 2]")
    with pytest.raises(RunDirError, match=r"dataset\.json must hold a JSON object"):
        rd.read_dataset()
    rd.dataset.write_text(json.dumps({"class_names": "abc"}))
    with pytest.raises(RunDirError, match="class_names"):
        rd.read_dataset()
    with pytest.raises(RunDirError, match=r"without config\.yaml: not a run directory"):
        rd.read_config_raw()
    rd.config.write_text("a: [")
    with pytest.raises(RunDirError, match=r"config\.yaml: cannot read"):
        rd.read_config_raw()


def test_stale_temp_files_are_removed_and_overlay_names_parse(tmp_path):
    rd = RunDir(tmp_path / "r")
    rd.make()
    stale = [rd.path / ".metrics.jsonl.abc.tmp", rd.checkpoints_dir / ".cycle_001.pt.x.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    keep = rd.path / "metrics.jsonl"
    keep.write_text("")
    assert sorted(rd.remove_stale_temp_files()) == sorted(stale)
    assert keep.exists() and not any(p.exists() for p in stale)
    path = rd.overlay(3, "seq/0001 TP", "queries")
    assert path.name == "cycle_003_seq_0001_TP_queries.png"
    assert RunDir.parse_overlay(path.name) == (3, "seq_0001_TP", "queries")
    assert RunDir.parse_overlay("notes.png") is None
