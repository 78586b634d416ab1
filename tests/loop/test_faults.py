"""Every fault of issue 18's table: one line naming the file or step, what went wrong and
what to do, exit status 2 (130 for Ctrl-C), nothing half-written, and a way back."""

import contextlib
import errno
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from balseg.errors import TrainingDivergedError
from balseg.labels import LabelStore
from balseg.loop import ActiveLearningLoop, parse_config

from .conftest import invoke, tiny_config


def last_line(result):
    return result.output.strip().splitlines()[-1]


def start(cli, tmp_path, name="run", *extra, **overrides):
    """A tiny run through the CLI (own prepared-data cache); returns (result, run_dir)."""
    raw = tiny_config(tmp_path / "synth", **{"budget.cycles": 1,
                                             "data.cache_dir": str(tmp_path / "cache"),
                                             **overrides})
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / name
    return invoke(cli, "run", cfg, "--run-dir", run_dir, "--quiet", *extra), run_dir


def rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def temp_files(folder):
    return sorted(p.name for p in Path(folder).rglob("*.tmp"))


# -- training diverges ---------------------------------------------------------------------------
def test_divergence_names_the_step_saves_nothing_and_a_lower_lr_continues(cli, tmp_path):
    result, run_dir = start(cli, tmp_path, "run", "--set", "train.lr=1e30")
    assert result.exit_code == 2
    assert last_line(result) == (
        "error: cycle 0: training diverged at step 2 of 3: the loss is nan (learning rate"
        f" 1e+30); no checkpoint was saved. Continue with a lower learning rate: balseg run"
        f" {run_dir} --set train.lr=1e+29")
    assert list((run_dir / "checkpoints").iterdir()) == []  # no NaN checkpoint, no temp
    assert not (run_dir / "metrics.jsonl").exists()
    # what cycle 0's queries were drawn with is fixed from now on
    seed = invoke(cli, "run", run_dir, "--quiet", "--set", "seed=5")
    assert seed.exit_code == 2
    assert "(differs in seed: the run's first queries depend on it)" in last_line(seed)
    # the advice works: the run has not trained, so its learning rate may still change
    fixed = invoke(cli, "run", run_dir, "--quiet", "--set", "train.lr=5e-4")
    assert fixed.exit_code == 0, fixed.output
    assert "no cycle was trained yet, so the run continues with the new train.lr" in fixed.output
    assert [r["cycle"] for r in rows(run_dir)] == [0, 1]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"] == 5e-4
    # once a cycle is trained the rate is part of the run: another one is refused
    again = invoke(cli, "run", run_dir, "--quiet", "--set", "train.lr=1e-4")
    assert again.exit_code == 2 and "differs in train.lr" in again.output


def test_divergence_in_a_later_cycle_says_to_start_a_new_run(cli, tmp_path, monkeypatch):
    from balseg.loop import runner

    real = runner.train_cycle
    calls = []

    def diverge_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise TrainingDivergedError("training diverged at step 1 of 3: the loss is inf"
                                        " (learning rate 0.0005)" + TrainingDivergedError.ADVICE)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "train_cycle", diverge_second)
    result, run_dir = start(cli, tmp_path)
    assert result.exit_code == 2
    assert last_line(result) == (
        "error: cycle 1: training diverged at step 1 of 3: the loss is inf (learning rate"
        " 0.0005); no checkpoint of cycle 1 was saved. This run's cycle 0 was trained with"
        " train.lr=0.0005, so the run keeps that rate: start a new run directory with a lower"
        " one (--set train.lr=5e-05 --run-dir NEW_DIR)")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["cycle_000.pt"]


def test_a_model_with_non_finite_weights_is_never_saved(tmp_path):
    from balseg.models import ModelFactory, ModelSpec

    factory = ModelFactory(ModelSpec(num_classes=3, encoder_weights=None))
    model = factory.fresh()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    path = tmp_path / "cycle_000.pt"
    with pytest.raises(TrainingDivergedError, match=rf"non-finite weights \(.+\), so no"
                                                    rf" checkpoint was written to {path}"):
        factory.save(model, path, 0)
    assert list(tmp_path.iterdir()) == []


# -- disk full while writing a checkpoint; stale temp files --------------------------------------
@contextlib.contextmanager
def full_disk_for(monkeypatch, pattern):
    """Writes of files whose name matches ``pattern`` fail as on a full disk (ENOSPC)."""
    import balseg.fsutil as fsutil

    names = {}
    real_mkstemp, real_fsync = tempfile.mkstemp, os.fsync

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        names[fd] = name
        return fd, name

    def fsync(fd):
        if Path(names.get(fd, "")).match(pattern):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    yield
    monkeypatch.undo()


def test_disk_full_while_writing_a_checkpoint_names_file_and_space(cli, tmp_path, monkeypatch):
    with full_disk_for(monkeypatch, ".cycle_*.pt.*.tmp"):
        result, run_dir = start(cli, tmp_path)
    assert result.exit_code == 2
    line = last_line(result)
    ckpt = run_dir / "checkpoints" / "cycle_000.pt"
    assert line.startswith(f"error: disk full while writing {ckpt}: it needs ")
    needed = float(line.split("it needs ")[1].split(" MB")[0])
    assert needed > 1.0  # the checkpoint's size, in MB
    assert line.endswith("; free some space and run the command again (the previous version"
                         " of the file is intact)")
    assert list((run_dir / "checkpoints").iterdir()) == []  # no partial file
    assert temp_files(run_dir) == []
    resumed = invoke(cli, "run", run_dir, "--quiet")  # space freed: the run continues
    assert resumed.exit_code == 0, resumed.output
    assert [r["cycle"] for r in rows(run_dir)] == [0, 1]


def test_stale_temp_files_of_killed_writes_are_removed_at_start(cli, tmp_path):
    result, run_dir = start(cli, tmp_path)
    assert result.exit_code == 0, result.output
    stale = [run_dir / "checkpoints" / ".cycle_001.pt.k2j3h4.tmp",
             run_dir / ".metrics.jsonl.abc123.tmp",
             run_dir / "overlays" / ".cycle_000_train_0000_queries.png.x1.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    kept = run_dir / "notes.txt"
    kept.write_text("mine")
    again = invoke(cli, "run", run_dir, "--quiet")
    assert again.exit_code == 0, again.output
    for p in stale:
        assert f"Warning: removed {p}, left by a write that was interrupted" in again.output
        assert not p.exists()
    assert kept.read_text() == "mine"


# -- a corrupt prepared-data cache -----------------------------------------------------------------
def _damage(folder: Path, how: str) -> None:
    images = folder / "images.npy"
    st = images.stat()
    if how == "truncate":
        with open(images, "r+b") as f:
            f.truncate(st.st_size - 100)
    else:  # garbage over the header, same size and time: only reading it can tell
        with open(images, "r+b") as f:
            f.write(b"\x00garbage" * 8)
        os.utime(images, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("how", ["truncate", "header"])
def test_corrupt_cache_is_deleted_and_rebuilt_by_run_and_evaluate(cli, tmp_path, how):
    result, run_dir = start(cli, tmp_path)
    assert result.exit_code == 0, result.output
    cache = tmp_path / "cache"
    (pool,) = [d for d in cache.iterdir() if "-train-" in d.name]
    (val,) = [d for d in cache.iterdir() if "-val-" in d.name]
    _damage(pool, how)
    resumed = invoke(cli, "run", run_dir, "--quiet", "--set", "budget.cycles=2")
    assert resumed.exit_code == 0, resumed.output
    assert f"Warning: prepared-data cache {pool} is unusable (" in resumed.output
    assert "deleting and rebuilding it" in resumed.output
    assert [r["cycle"] for r in rows(run_dir)] == [0, 1, 2]

    _damage(val, how)
    ev = invoke(cli, "evaluate", run_dir, "--split", "val", "--quiet")
    assert ev.exit_code == 0, ev.output
    assert f"Warning: prepared-data cache {val} is unusable (" in ev.output
    saved = json.loads((run_dir / "eval_val.json").read_text())
    assert saved["miou"] == pytest.approx(rows(run_dir)[-1]["miou"])  # the same pixels
    again = invoke(cli, "evaluate", run_dir, "--split", "val", "--quiet")
    assert again.exit_code == 0 and "Warning" not in again.output  # rebuilt for good


# -- a read-only run directory ---------------------------------------------------------------------
@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` really read-only: permissions for a normal user; for root (whom
    permissions do not stop) a read-only bind mount of the folder onto itself. Skips where
    neither works (root without CAP_SYS_ADMIN)."""
    folder = Path(folder)
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p, mode in modes.items():
            p.chmod(mode & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    mount = shutil.which("mount")
    ok = mount is not None and subprocess.run(
        f"mount --bind '{folder}' '{folder}' && mount -o remount,ro,bind '{folder}'",
        shell=True, capture_output=True).returncode == 0
    if not ok:
        subprocess.run(["umount", str(folder)], capture_output=True)
        pytest.skip("a read-only folder needs a non-root user or root with mount rights")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def _is_read_only(folder: Path) -> bool:
    try:
        (folder / ".probe").write_bytes(b"")
    except OSError:
        return True
    (folder / ".probe").unlink()
    return False


def _person_run(cli, tmp_path):
    """A finished run whose answers came from a person, checkpointed out of the WAL."""
    result, run_dir = start(cli, tmp_path, "run", **{"oracle.kind": "person",
                                                     "budget.cycles": 0})
    assert result.exit_code == 4, result.output
    with LabelStore(run_dir / "labels.sqlite") as store:
        store.add_answers([(q.id, 1) for q in store.open_queries()], source="person",
                          annotator="ann")
    done = invoke(cli, "run", run_dir, "--quiet")
    assert done.exit_code == 0, done.output
    assert not (run_dir / "labels.sqlite-wal").exists()  # closed cleanly: no -shm either
    return run_dir


def _check_read_only_behaviour(cli, run_dir, elsewhere):
    ev = invoke(cli, "evaluate", run_dir, "--split", "val", "--quiet")
    assert ev.exit_code == 2
    assert last_line(ev).startswith(f"error: run directory {run_dir} is not writable (")
    assert last_line(ev).endswith("balseg evaluate writes eval_val.json there: copy the run"
                                  " directory somewhere writable and evaluate the copy")
    assert "mIoU" not in ev.output  # refused before the work
    rep = invoke(cli, "report", run_dir)
    assert rep.exit_code == 2
    assert last_line(rep).startswith(
        f"error: cannot write the report to {run_dir / 'report'} (the default: inside the run"
        " directory): ")
    assert last_line(rep).endswith("choose a writable folder with --out DIR")
    ok = invoke(cli, "report", run_dir, "--out", elsewhere)
    assert ok.exit_code == 0, ok.output
    assert "cannot read answers" not in ok.output
    page = (elsewhere / "index.html").read_text()
    assert "Answers per class, by query cycle" in page  # the person's 32 answers are there
    assert ">32<" in page


def test_read_only_run_directory_really_read_only(cli, tmp_path):
    run_dir = _person_run(cli, tmp_path)
    with read_only(run_dir):
        assert _is_read_only(run_dir)
        with pytest.raises(sqlite3.OperationalError):  # why the report needs a copy
            sqlite3.connect(f"{(run_dir / 'labels.sqlite').as_uri()}?mode=ro",
                            uri=True).execute("SELECT 1 FROM queries").fetchall()
        _check_read_only_behaviour(cli, run_dir, tmp_path / "elsewhere")


def test_read_only_run_directory_simulated(cli, tmp_path, monkeypatch):
    """The same checks where a read-only folder cannot be made (root without mount rights):
    file creation in the run directory and SQLite's read-only open fail as they would."""
    run_dir = _person_run(cli, tmp_path)
    real_write, real_connect = Path.write_bytes, sqlite3.connect

    def write_bytes(self, data):
        if self.parent == run_dir or run_dir in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_write(self, data)

    def connect(database, *args, **kwargs):
        if str(database).startswith(run_dir.as_uri()):
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(sqlite3, "connect", connect)
    _check_read_only_behaviour(cli, run_dir, tmp_path / "elsewhere")


def test_answers_only_in_the_wal_of_a_read_only_run_are_reported(tmp_path):
    """A server killed before checkpointing leaves answers in labels.sqlite-wal; a report on
    the read-only folder reads them from a copy of both files."""
    from balseg.report.runs import read_answer_counts

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    db = run_dir / "labels.sqlite"
    store = LabelStore(db, num_classes=3)  # small writes: nothing checkpointed until close
    ids = store.add_queries([("a", 1, 2, None), ("a", 3, 4, None)], cycle=0, strategy="s")
    store.add_answers([(ids[0], 2), (ids[1], None)], source="person", annotator="ann")
    # copy the files as a killed server leaves them, without closing (which checkpoints)
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    for name in ("labels.sqlite", "labels.sqlite-wal"):
        shutil.copyfile(run_dir / name, frozen / name)
    store.close()
    assert (frozen / "labels.sqlite-wal").stat().st_size > 0
    with read_only(frozen):
        counts = read_answer_counts(frozen / "labels.sqlite")
    assert counts == {0: {2: 1, "unknown": 1}}


# -- Ctrl-C ----------------------------------------------------------------------------------------
def test_ctrl_c_says_how_to_resume_and_exits_130(cli, tmp_path, monkeypatch):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(ActiveLearningLoop, "_run_cycles", interrupted)
    result, run_dir = start(cli, tmp_path)
    assert result.exit_code == 130
    assert last_line(result) == (f"error: interrupted; every finished step is kept: resume"
                                 f" with `balseg run {run_dir}`")
    assert (run_dir / "progress.json").is_file()  # the time spent so far is kept


# -- resume: every row carries every field -------------------------------------------------------
def test_rows_evaluated_by_a_later_process_carry_the_cycle_timings(tmp_path, monkeypatch):
    """A process stopped between a cycle's scoring and its evaluation: the next process
    writes the row, with the training and scoring figures of the one that did the work."""
    raw = tiny_config(tmp_path / "synth", **{"budget.cycles": 2})
    cfg = parse_config(raw, source="t")
    real_evaluate = ActiveLearningLoop.evaluate

    def stop_at_cycle_1(self, model, split):
        if self.read_metrics() and self.read_metrics()[-1]["cycle"] == 0:
            raise KeyboardInterrupt  # cycle 1 trained and scored, not evaluated
        return real_evaluate(self, model, split)

    monkeypatch.setattr(ActiveLearningLoop, "evaluate", stop_at_cycle_1)
    first = ActiveLearningLoop.from_config(cfg, tmp_path / "run", progress=False)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert set(progress["cycles"]["1"]) >= {"train_steps", "score_time_s"}
    monkeypatch.undo()
    second = ActiveLearningLoop.from_config(cfg, tmp_path / "run", progress=False)
    trained = []
    real_train = ActiveLearningLoop.train

    def counting(self, cycle, labels):
        trained.append(cycle)
        return real_train(self, cycle, labels)

    monkeypatch.setattr(ActiveLearningLoop, "train", counting)
    assert second.run().status == "done"
    assert trained == [2]  # cycle 1 was trained (and scored) by the first process
    written = second.read_metrics()
    assert [r["cycle"] for r in written] == [0, 1, 2]
    assert len({frozenset(r) for r in written}) == 1  # the same fields in every row
    row1, done1 = written[1], progress["cycles"]["1"]
    for key in ("train_steps", "train_time_s", "final_loss", "score_time_s"):
        assert row1[key] == done1[key] and row1[key] is not None, key
    assert written[2]["score_time_s"] is None  # the last cycle scores nothing
    assert written[-1]["wall_time_s"] > progress["wall_time_s"]  # both processes' time
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == [k for k in written[0] if k != "per_class_iou"]


def test_metrics_csv_has_the_union_of_the_columns():
    from balseg.rundir import metrics_csv

    old = {"cycle": 0, "split": "val", "miou": 0.5, "pixels_per_image": 4,
           "labeled_fraction": 0.1}  # a row of an older version
    new = {**old, "cycle": 1, "train_steps": 3, "final_loss": 0.7, "per_class_iou": [0.5]}
    lines = metrics_csv([old, new]).splitlines()
    assert lines[0] == "cycle,split,miou,pixels_per_image,labeled_fraction,train_steps,final_loss"
    assert lines[1] == "0,val,0.5,4,0.1,,"
    assert lines[2] == "1,val,0.5,4,0.1,3,0.7"

