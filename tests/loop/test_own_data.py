"""A newcomer's own data through the CLI: friendly defaults and a way back from every mistake
(issue 18, "Friendly defaults")."""

import json

import pytest
import yaml

from balseg.labels import LabelStore

from .conftest import invoke, tiny_config
from .own_folder import fast, make_folder, set_args


def write_config(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


def folder_config(tmp_path, root, **more):
    raw = {"name": "mine", "data": {"dataset": "folder", "root": str(root)}}
    return write_config(tmp_path / "mine.yaml", raw), set_args(fast(**more))


def last_line(result):
    return result.output.strip().splitlines()[-1]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_flat_folder_pools_every_image_trains_every_cycle_and_reports(cli, tmp_path):
    """images/ + masks/ without train/ or val/: pool `all`, no evaluation, said once; every
    cycle trained and recorded (split "none", mIoU null); report and run both say so."""
    root = make_folder(tmp_path / "photos", masks=True)
    cfg, args = folder_config(tmp_path, root)
    run_dir = tmp_path / "run"
    result = invoke(cli, "run", cfg, "--run-dir", run_dir, "--quiet", *args)
    assert result.exit_code == 0, result.output
    assert (f"Warning: {root} has no train/ folder: using every image of {root / 'images'} as"
            " the pool (data.pool_split: all); " in result.output)
    assert f"{root} has no val/ folder: evaluating nothing (data.eval_splits: [])" in result.output
    assert f"done: {run_dir} (no evaluation split; the model of the last cycle is" \
           f" {run_dir / 'checkpoints' / 'cycle_001.pt'})" in result.output
    rows = metrics(run_dir)
    assert [(r["cycle"], r["split"], r["miou"]) for r in rows] == [(0, "none", None),
                                                                 (1, "none", None)]
    assert all(r["train_steps"] == 3 and r["final_loss"] is not None for r in rows)
    assert rows[0]["score_time_s"] > 0 and rows[1]["score_time_s"] is None  # last: no scoring
    snapshot = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert snapshot["data"]["pool_split"] == "all" and snapshot["data"]["eval_splits"] == []
    with LabelStore(run_dir / "labels.sqlite") as store:
        assert len(store.queries()) == 6 * (4 + 3)

    again = invoke(cli, "run", run_dir, "--quiet")  # resuming a finished run: nothing to do
    assert again.exit_code == 0, again.output
    assert metrics(run_dir) == rows

    report = invoke(cli, "report", run_dir)
    assert report.exit_code == 0, report.output
    assert "no evaluation split" in report.output
    page = (run_dir / "report" / "index.html").read_text()
    assert "no evaluation split" in page and "cycles 0-1 trained" in page
    assert (run_dir / "report" / "summary.csv").is_file()


def test_split_folder_without_val_evaluates_nothing_and_named_splits_are_kept(cli, tmp_path):
    root = make_folder(tmp_path / "photos", layout="split", masks=True)
    for f in (root / "val").rglob("*"):
        f.unlink() if f.is_file() else None
    for d in sorted((root / "val").rglob("*"), reverse=True):
        d.rmdir()
    (root / "val").rmdir()
    cfg, args = folder_config(tmp_path, root, **{"budget.cycles": 0})
    result = invoke(cli, "run", cfg, "--run-dir", tmp_path / "a", "--quiet", *args)
    assert result.exit_code == 0, result.output
    assert "has no train/ folder" not in result.output
    assert f"{root} has no val/ folder: evaluating nothing" in result.output
    # a split the config names itself is not dropped: its absence is an error naming it
    named = invoke(cli, "run", cfg, "--run-dir", tmp_path / "b", "--quiet", *args,
                   "--set", "data.eval_splits=[val]")
    assert named.exit_code == 2
    assert last_line(named) == (
        f"error: folder split 'val' not found: no folder {root / 'val' / 'images'} (a split is"
        " <root>/<split>/images, its masks in <root>/<split>/masks)")


@pytest.mark.parametrize("with_eval", [True, False])
def test_every_run_trains_and_records_its_last_cycle(cli, tmp_path, with_eval):
    raw = tiny_config(tmp_path / "synth", **{"budget.cycles": 2})
    if not with_eval:
        raw["data"]["eval_splits"] = []
    cfg = write_config(tmp_path / "tiny.yaml", raw)
    run_dir = tmp_path / "run"
    result = invoke(cli, "run", cfg, "--run-dir", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    rows = metrics(run_dir)
    split = "val" if with_eval else "none"
    assert [(r["cycle"], r["split"]) for r in rows] == [(c, split) for c in range(3)]
    assert all((r["miou"] is not None) == with_eval for r in rows)
    assert all(r["train_steps"] == 3 for r in rows)
    assert (run_dir / "checkpoints" / "cycle_002.pt").is_file()  # the last cycle's model
    csv_header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_steps", "train_time_s", "final_loss", "score_time_s",
            "wall_time_s"} <= set(csv_header)


def test_supervised_run_without_evaluation_records_its_model(cli, tmp_path):
    raw = tiny_config(tmp_path / "synth", **{"acquisition.strategy": "supervised"})
    raw["data"]["eval_splits"] = []
    result = invoke(cli, "run", write_config(tmp_path / "s.yaml", raw), "--run-dir",
                    tmp_path / "sup", "--quiet")
    assert result.exit_code == 0, result.output
    assert [(r["cycle"], r["split"], r["miou"]) for r in metrics(tmp_path / "sup")] == [
        (0, "none", None)]
    assert (tmp_path / "sup" / "checkpoints" / "cycle_000.pt").is_file()


def test_a_failed_first_start_leaves_no_folder_behind(cli, tmp_path):
    """Issue 29: a missing data.root left runs/<name>/ with a config and empty folders."""
    cfg, args = folder_config(tmp_path, tmp_path / "fotos")  # a typo in the data root
    run_dir = tmp_path / "runs" / "mine"
    failed = invoke(cli, "run", cfg, "--run-dir", run_dir, "--quiet", *args)
    assert failed.exit_code == 2
    assert failed.output.strip().splitlines()[-1] == (
        f"error: folder dataset root not found: {tmp_path / 'fotos'}")
    assert not run_dir.exists()


def test_a_failed_first_start_takes_the_corrected_config(cli, tmp_path):
    """A run folder the user made beforehand is theirs: it stays, with the config the
    failed start wrote, and the corrected start replaces that config."""
    root = make_folder(tmp_path / "photos", masks=True)
    cfg, args = folder_config(tmp_path, tmp_path / "fotos")  # a typo in the data root
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    failed = invoke(cli, "run", cfg, "--run-dir", run_dir, "--quiet", *args)
    assert failed.exit_code == 2
    assert failed.output.strip().splitlines()[-1] == (
        f"error: folder dataset root not found: {tmp_path / 'fotos'}")
    assert (run_dir / "config.yaml").is_file()  # the first start got that far
    cfg, args = folder_config(tmp_path, root)
    fixed = invoke(cli, "run", cfg, "--run-dir", run_dir, "--quiet", *args)
    assert fixed.exit_code == 0, fixed.output
    assert f"{run_dir / 'config.yaml'}: replacing the config of a run that never started" \
           in fixed.output
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["root"] == str(root)


def test_budget_cycles_extends_a_finished_run_and_nothing_else_changes(cli, tmp_path):
    raw = tiny_config(tmp_path / "synth", **{"budget.cycles": 1})
    cfg = write_config(tmp_path / "tiny.yaml", raw)
    run_dir = tmp_path / "run"
    assert invoke(cli, "run", cfg, "--run-dir", run_dir, "--quiet").exit_code == 0
    longer = invoke(cli, "run", run_dir, "--quiet", "--set", "budget.cycles=2")
    assert longer.exit_code == 0, longer.output
    assert f"Warning: extending {run_dir} from 1 to 2 cycles" in longer.output
    assert [r["cycle"] for r in metrics(run_dir)] == [0, 1, 2]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["budget"]["cycles"] == 2

    # the same queries and answers as a run that was asked for 2 cycles from the start
    raw2 = tiny_config(tmp_path / "synth", **{"budget.cycles": 2})
    ref = tmp_path / "ref"
    assert invoke(cli, "run", write_config(tmp_path / "t2.yaml", raw2), "--run-dir", ref,
                  "--quiet").exit_code == 0

    def labels(d):
        with LabelStore(d / "labels.sqlite") as s:
            return sorted((q.image_id, q.y, q.x, q.cycle) for q in s.queries())

    assert labels(run_dir) == labels(ref)
    assert [r["miou"] for r in metrics(run_dir)] == pytest.approx(
        [r["miou"] for r in metrics(ref)])

    shrink = invoke(cli, "run", run_dir, "--quiet", "--set", "budget.cycles=1")
    assert shrink.exit_code == 2
    assert "budget.cycles can grow (2 so far), not shrink to 1" in shrink.output
    other = invoke(cli, "run", run_dir, "--quiet", "--set", "train.steps=5")
    assert other.exit_code == 2
    assert "differs in train.steps" in other.output
    typo = invoke(cli, "run", run_dir, "--quiet", "--set", "budget.cycle=3")
    assert typo.exit_code == 2
    assert "budget.cycle: unknown key; did you mean budget.cycles? (from --set)" in typo.output
    assert [r["cycle"] for r in metrics(run_dir)] == [0, 1, 2]  # nothing was touched


def test_forgetting_dataset_folder_says_what_to_set(cli, tmp_path):
    root = make_folder(tmp_path / "photos")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    cfg = write_config(tmp_path / "c.yaml", {"data": {"root": str(root)}})  # no dataset:
    result = invoke(cli, "run", cfg, "--run-dir", tmp_path / "run", "--quiet")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"error: {root} holds a classes.txt and looks like a folder dataset (your own images):"
        " set data.dataset: folder (configs/folder.yaml is an example); the default dataset"
        " is the built-in synthetic one")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # left alone


def test_mistakes_with_the_folder_dataset_are_one_line_each(cli, tmp_path):
    root = make_folder(tmp_path / "photos")  # no masks: people must answer
    cfg, args = folder_config(tmp_path, root)
    result = invoke(cli, "run", cfg, "--run-dir", tmp_path / "r0", "--quiet", *args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"error: folder split 'all' mask folder not found: {root / 'masks'}; for images"
        " without masks set data.options.require_masks: false and oracle.kind: person (you"
        " answer the queries; configs/folder.yaml)")
    result = invoke(cli, "run", cfg, "--run-dir", tmp_path / "r1", "--quiet", *args,
                    "--set", "data.options={require_masks: false}")
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: oracle.kind: simulated answers from the masks, but 6 of 6"
                           " pool images have none (e.g. ")
    assert last.endswith("set oracle.kind: person to answer them yourself (balseg annotate),"
                         " or add their masks")
    assert "(rank" not in result.output  # one process: no rank prefix
    synth = write_config(tmp_path / "s.yaml", tiny_config(tmp_path / "synth", **{
        "data.options": {"require_masks": False}}))
    result = invoke(cli, "run", synth, "--run-dir", tmp_path / "r2", "--quiet")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: data.options: unknown synthetic options ['require_masks']; valid: ['num_train',"
        " 'num_val', 'seed', 'size'] (require_masks is an option of data.dataset: folder)")
