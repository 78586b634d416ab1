"""`train.unlabeled` in the loop: pseudo-labels from the pool pass, consistency, resume."""

import numpy as np
import pytest
import torch

import balseg
from balseg.errors import ConfigError
from balseg.labels import LabelStore
from balseg.loop import ActiveLearningLoop, parse_config
from balseg.models import read_checkpoint
from balseg.rundir import RunDir

from .conftest import cli, invoke, tiny_config  # noqa: F401 (cli is a fixture)
from .test_run import labels_of

PSEUDO = {"train.unlabeled": "pseudo", "train.unlabeled_threshold": 0.0,
          "train.unlabeled_class_top": 0.5, "train.steps": 6, "train.lr": 3e-3}


def _loop(tmp_path, name, **overrides):
    cfg = parse_config(tiny_config(tmp_path / "synth", **overrides), source="test")
    return ActiveLearningLoop.from_config(cfg, tmp_path / name, progress=False)


def _run(tmp_path, name, **overrides):
    loop = _loop(tmp_path, name, **overrides)
    result = loop.run()
    loop.close()
    assert result.status == "done"
    return loop


def test_pseudo_labels_train_but_never_count_as_answers(tmp_path):
    plain = _run(tmp_path, "plain", **{k: v for k, v in PSEUDO.items() if "unlabeled" not in k})
    pseudo = _run(tmp_path, "pseudo", **PSEUDO)
    rows, plain_rows = pseudo.read_metrics(), plain.read_metrics()
    # the budget is the answers' alone: the same pixels per image as without pseudo-labels
    assert [r["pixels_per_image"] for r in rows] == [r["pixels_per_image"] for r in plain_rows]
    assert [r["labeled_pixels"] for r in rows] == [r["labeled_pixels"] for r in plain_rows]
    queries, answers = labels_of(pseudo.run_dir)
    assert len(answers) == len(queries) == 8 * (4 + 2 * 3)
    # cycles 1 and 2 trained on about half of each class's pixels besides the answers
    assert rows[0].get("pseudo_pixels_per_image") is None  # cycle 0 has the answers alone
    for r in rows[1:]:
        assert 0.3 * 48 * 64 < r["pseudo_pixels_per_image"] <= 48 * 64
        assert 0.0 <= r["pseudo_accuracy"] <= 1.0
        assert len(r["pseudo_per_class_accuracy"]) == 6
    assert "pseudo_accuracy" in (pseudo.run_dir / "metrics.csv").read_text().splitlines()[0]
    rundir = RunDir(pseudo.run_dir)
    for cycle in (0, 1):  # the last cycle's model trains nothing after it: no pool pass
        array, hist = rundir.pseudo_labels(cycle)
        assert array.is_file() and hist.is_file()
    assert not rundir.pseudo_labels(2)[0].exists()
    # what the run hands over is the model trained with them
    a = read_checkpoint(rundir.checkpoint(2))["model"]
    b = read_checkpoint(RunDir(plain.run_dir).checkpoint(2))["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_a_run_killed_after_its_pseudo_labels_resumes_to_the_same_result(tmp_path,
                                                                       monkeypatch):
    whole = _run(tmp_path, "whole", **PSEUDO)
    real = LabelStore.add_queries
    calls = {"n": 0}

    def killed_at_cycle_2(self, rows, *, cycle, strategy):
        if cycle == 2 and calls["n"] == 0:  # pseudo-labels of cycle 1 written, queries not
            calls["n"] += 1
            raise KeyboardInterrupt
        return real(self, rows, cycle=cycle, strategy=strategy)

    monkeypatch.setattr(LabelStore, "add_queries", killed_at_cycle_2)
    loop = _loop(tmp_path, "killed", **PSEUDO)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    loop.close()
    assert RunDir(loop.run_dir).pseudo_labels(1)[0].exists()
    resumed = _run(tmp_path, "killed", **PSEUDO)
    assert labels_of(resumed.run_dir) == labels_of(whole.run_dir)
    keys = ("cycle", "miou", "pseudo_pixels_per_image", "pseudo_accuracy", "final_loss")
    assert [{k: r[k] for k in keys if k in r} for r in resumed.read_metrics()] == [
        {k: r[k] for k in keys if k in r} for r in whole.read_metrics()]


def test_a_pass_killed_midway_leaves_no_pseudo_labels(tmp_path, monkeypatch):
    import balseg.loop.runner as runner

    real = runner.iter_pool_scores

    def dies_after_one_batch(*args, **kwargs):
        it = real(*args, **kwargs)
        yield next(it)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "iter_pool_scores", dies_after_one_batch)
    loop = _loop(tmp_path, "run", **PSEUDO)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    loop.close()
    folder = RunDir(loop.run_dir).pseudo_dir
    assert list(folder.iterdir()) == []  # neither the array nor its temporary file


def test_missing_pseudo_labels_are_named(tmp_path):
    loop = _run(tmp_path, "run", **{**PSEUDO, "budget.cycles": 1})
    rundir = RunDir(loop.run_dir)
    rundir.pseudo_labels(0)[0].unlink()
    rundir.checkpoint(1).unlink()
    (loop.run_dir / "metrics.jsonl").write_text(
        (loop.run_dir / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(FileNotFoundError, match=r"cycle_000\.npy: missing, and cycle 1 trains"):
        _run(tmp_path, "run", **{**PSEUDO, "budget.cycles": 1})


def test_consistency_changes_training_of_every_cycle(tmp_path):
    base = {k: v for k, v in PSEUDO.items() if "unlabeled" not in k}
    plain = _run(tmp_path, "plain", **{**base, "budget.cycles": 0})
    cons = _run(tmp_path, "cons", **{**base, "budget.cycles": 0,
                                     "train.unlabeled": "consistency",
                                     "train.unlabeled_threshold": 0.0})
    a = read_checkpoint(RunDir(cons.run_dir).checkpoint(0))["model"]
    b = read_checkpoint(RunDir(plain.run_dir).checkpoint(0))["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_predict_and_export_hand_over_the_pseudo_trained_model(tmp_path, cli):  # noqa: F811
    loop = _run(tmp_path, "run", **{**PSEUDO, "budget.cycles": 1})
    run = balseg.load_run(loop.run_dir)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    pred = run.predict(image, probabilities=True)[0]
    assert pred.cycle == 1
    model = run.model(cycle=1)
    state = read_checkpoint(RunDir(loop.run_dir).checkpoint(1))["model"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    run.close()
    out = tmp_path / "m.pt"
    result = invoke(cli, "export-model", loop.run_dir, "--format", "torchscript", "--out", out,
                    "--verify-images", 2)
    assert result.exit_code == 0, result.output
    assert "argmax agreement 1.000000" in result.output


def test_unlabeled_modes_are_validated():
    with pytest.raises(ConfigError, match=r"train\.unlabeled"):
        parse_config(tiny_config("x", **{"train.unlabeled": "pseudo-labels"}), source="t")
    with pytest.raises(ConfigError, match=r"train\.unlabeled_class_top"):
        parse_config(tiny_config("x", **{"train.unlabeled_class_top": 0}), source="t")
