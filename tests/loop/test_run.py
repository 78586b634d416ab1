"""The main job end to end on a tiny synthetic dataset: budgets, artifacts, resume, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import yaml

from balseg.data import DataError
from balseg.errors import RunDirError
from balseg.labels import LabelStore
from balseg.loop import ActiveLearningLoop, ConfigError, parse_config

from .conftest import tiny_config


def run_tiny(tmp_path, name="run", **overrides):
    cfg = parse_config(tiny_config(tmp_path / "synth", **overrides), source="test")
    loop = ActiveLearningLoop.from_config(cfg, tmp_path / name, progress=False)
    return loop, loop.run()


def labels_of(run_dir):
    with LabelStore(run_dir / "labels.sqlite") as store:
        queries = [(q.image_id, q.y, q.x, q.cycle, q.strategy) for q in store.queries()]
        answers = sorted((store.query(a.query_id).image_id, store.query(a.query_id).y,
                          store.query(a.query_id).x, a.label, a.source)
                         for a in store.answers())
    return sorted(queries), answers


def test_full_run_spends_the_exact_budget(tmp_path):
    loop, result = run_tiny(tmp_path)
    assert result.status == "done"
    queries, answers = labels_of(loop.run_dir)
    per_image = Counter(q[0] for q in queries)
    assert set(per_image.values()) == {4 + 2 * 3}  # initial + cycles x per-cycle, per image
    assert len(per_image) == 8
    assert len({q[:3] for q in queries}) == len(queries)  # no pixel queried twice
    assert Counter(q[3] for q in queries) == {0: 32, 1: 24, 2: 24}
    assert len(answers) == len(queries)
    assert {a[4] for a in answers} == {"initial", "oracle"}
    rows = loop.read_metrics()
    assert [(r["cycle"], r["split"]) for r in rows] == [(0, "val"), (1, "val"), (2, "val")]
    assert [r["pixels_per_image"] for r in rows] == [4, 7, 10]
    assert all(0.0 <= r["miou"] <= 1.0 for r in rows)
    assert len(rows[0]["per_class_iou"]) == 6
    assert rows[-1]["labeled_fraction"] == pytest.approx(80 / (8 * 48 * 64))
    # self-describing run directory
    for name in ("config.yaml", "dataset.json", "metrics.csv", "labels.sqlite"):
        assert (loop.run_dir / name).is_file()
    assert sorted(p.name for p in (loop.run_dir / "checkpoints").iterdir()) == [
        "cycle_001.pt", "cycle_002.pt"]
    overlays = sorted(p.name for p in (loop.run_dir / "overlays").glob("*.png"))
    assert len(overlays) == 2 * 2 * 2  # 2 selection cycles x 2 images x 2 kinds
    # running again on a finished run does nothing and changes nothing
    again = ActiveLearningLoop.from_config(loop.cfg, loop.run_dir, progress=False).run()
    assert again.status == "done"
    assert labels_of(loop.run_dir) == (queries, answers)


def test_selected_pixels_follow_the_scores(tmp_path):
    loop, _ = run_tiny(tmp_path, **{"budget.cycles": 1})
    with LabelStore(loop.run_dir / "labels.sqlite") as store:
        picked = [q for q in store.queries(cycle=1)]
    assert all(q.strategy == "balentacq" and q.score is not None for q in picked)


def test_warm_start_trains_later_cycles_from_the_previous_model(tmp_path):
    loop, result = run_tiny(tmp_path, **{"train.warm_start": True, "train.warm_steps": 2})
    assert result.status == "done"
    assert [r["train_steps"] for r in loop.read_metrics()] == [3, 2, 2]


def test_resume_trains_only_the_unfinished_cycle(tmp_path, monkeypatch):
    """The loop prunes all but the last two checkpoints; resuming a finished run (or one
    killed in its last cycle) must not retrain the earlier cycles whose checkpoints are gone
    (it once retrained cycle 0, then failed to warm-start cycle 1 from a pruned file)."""
    overrides = {"budget.cycles": 3, "train.warm_start": True, "train.warm_steps": 2}
    loop, result = run_tiny(tmp_path, **overrides)
    assert result.status == "done"
    ckpts = loop.run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.pt")) == ["cycle_002.pt", "cycle_003.pt"]
    before = loop.read_metrics()

    trained = []
    real_train = ActiveLearningLoop.train

    def counting_train(self, cycle, labels):
        trained.append(cycle)
        return real_train(self, cycle, labels)

    monkeypatch.setattr(ActiveLearningLoop, "train", counting_train)
    again, result = run_tiny(tmp_path, **overrides)
    assert result.status == "done" and trained == []
    assert again.read_metrics() == before

    # a finished run stored without its checkpoints (benchmarks/results) is finished too
    saved = {p.name: p.read_bytes() for p in ckpts.glob("*.pt")}
    for p in ckpts.glob("*.pt"):
        p.unlink()
    again, result = run_tiny(tmp_path, **overrides)
    assert result.status == "done" and trained == []
    assert again.read_metrics() == before
    for name, data in saved.items():
        (ckpts / name).write_bytes(data)

    # killed while training the last cycle: its checkpoint and evaluation are missing
    (ckpts / "cycle_003.pt").unlink()
    kept = [r for r in before if r["cycle"] < 3]
    (loop.run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in kept))
    resumed, result = run_tiny(tmp_path, **overrides)
    assert result.status == "done" and trained == [3]
    assert [r["cycle"] for r in resumed.read_metrics()] == [r["cycle"] for r in before]

    # a warm start whose previous checkpoint is gone names the file
    (ckpts / "cycle_003.pt").unlink()
    (ckpts / "cycle_002.pt").unlink()
    (loop.run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in kept))
    with pytest.raises(FileNotFoundError, match=r"cycle_002\.pt: missing"):
        run_tiny(tmp_path, **overrides)


def test_person_oracle_waits_for_answers(tmp_path):
    loop, result = run_tiny(tmp_path, **{"oracle.kind": "person"})
    assert result.status == "waiting_for_answers" and result.open_queries == 32
    store = LabelStore(loop.run_dir / "labels.sqlite")
    open_q = store.open_queries()
    store.add_answers([(q.id, 0) for q in open_q], source="person", annotator="ann")
    again = ActiveLearningLoop.from_config(loop.cfg, loop.run_dir, progress=False).run()
    assert again.status == "waiting_for_answers" and again.cycles_done == 1
    assert len(store.open_queries(cycle=1)) == 24


def test_changed_config_on_same_run_dir_is_refused(tmp_path):
    loop, _ = run_tiny(tmp_path, **{"budget.cycles": 0})
    other = parse_config(tiny_config(tmp_path / "synth", **{"budget.cycles": 0,
                                                            "train.steps": 9}), source="t")
    with pytest.raises(ConfigError, match=r"differs in train\.steps"):
        ActiveLearningLoop.from_config(other, loop.run_dir, progress=False)


def test_bad_inputs_name_what_is_wrong(tmp_path):
    bad_root = parse_config(tiny_config(tmp_path / "x", **{"data.dataset": "camvid",
                                                           "data.options": {}}), source="t")
    with pytest.raises(DataError, match=str(tmp_path / "x")):
        ActiveLearningLoop.from_config(bad_root, tmp_path / "r1", progress=False)
    wrong_classes = parse_config(tiny_config(tmp_path / "synth",
                                             **{"data.class_names": ["a", "b"]}), source="t")
    with pytest.raises(ConfigError, match="do not match"):
        ActiveLearningLoop.from_config(wrong_classes, tmp_path / "r2", progress=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a run directory below a regular file cannot exist, even for root
    good = parse_config(tiny_config(tmp_path / "synth"), source="t")
    with pytest.raises(RunDirError, match="not writable"):  # a ConfigError before 1875962
        ActiveLearningLoop.from_config(good, blocker / "run", progress=False)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(path_check, proc, timeout=120):
    start = time.time()
    while not path_check():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the kill point: {proc.stderr.read()}")
        if time.time() - start > timeout:
            raise AssertionError("kill point never reached")
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_mid_cycle_then_resume_gives_the_same_labels(tmp_path):
    """Three processes work on one run: Ctrl-C once cycle 1 is trained, SIGKILL while cycle
    2 trains, then one that finishes. The labels are those of an uninterrupted run, every
    metrics row carries every field (timings of cycles trained or scored by an earlier
    process included), and the run's time adds up over the three (issue 18)."""
    raw = tiny_config(tmp_path / "synth", **{"budget.cycles": 3, "train.steps": 6})
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    reference = ActiveLearningLoop.from_config(parse_config(raw, source="t"), tmp_path / "ref",
                                   progress=False)
    reference.run()

    run_dir = tmp_path / "killed"
    progress = run_dir / "progress.json"
    cmd = [sys.executable, "-m", "balseg", "run", str(cfg_path), "--run-dir", str(run_dir),
           "--quiet"]
    env = {**os.environ}
    # stop 1, Ctrl-C: right after cycle 1's checkpoint lands (scoring / evaluation under way)
    # a shell's background job (`make test &`) ignores SIGINT and children inherit that;
    # a terminal's Ctrl-C reaches a process with the default disposition, so restore it
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    _wait_for(lambda: (run_dir / "checkpoints" / "cycle_001.pt").exists(), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        f"error: interrupted; every finished step is kept: resume with `balseg run {run_dir}`")
    wall_1 = json.loads(progress.read_text())["wall_time_s"]
    # stop 2, SIGKILL: during cycle 2 (its queries exist, its training is under way)
    proc = subprocess.Popen([*cmd[:4], str(run_dir), "--quiet"], env=env,
                            stderr=subprocess.PIPE, text=True)
    def cycle2_started():
        with LabelStore(run_dir / "labels.sqlite") as s:
            return 2 in s.cycles()
    _wait_for(cycle2_started, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wall_2 = json.loads(progress.read_text())["wall_time_s"]
    assert wall_2 > wall_1 > 0
    done = subprocess.run([*cmd[:4], str(run_dir), "--quiet"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert labels_of(run_dir) == labels_of(reference.run_dir)
    rows = [(r["cycle"], r["split"]) for r in reference.read_metrics()]
    resumed = ActiveLearningLoop.from_config(parse_config(raw, source="t"), run_dir, progress=False)
    written = resumed.read_metrics()
    assert [(r["cycle"], r["split"]) for r in written] == rows
    assert len({frozenset(r) for r in written}) == 1  # the same fields in every row
    for r in written:
        assert r["train_steps"] == 6 and r["train_time_s"] > 0 and r["final_loss"] is not None
        assert (r["score_time_s"] is None) == (r["cycle"] == 3)  # the last cycle scores none
    assert written[-1]["wall_time_s"] > wall_2  # the three processes' time, not the last's
    spent = sum(r["train_time_s"] + (r["score_time_s"] or 0) for r in written)
    assert written[-1]["wall_time_s"] > spent
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == [k for k in written[0] if k != "per_class_iou"]
