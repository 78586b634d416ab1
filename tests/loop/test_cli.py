"""The loop's commands through the real CLI entry point."""

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from balseg.cli import _register_all, app

from .conftest import tiny_config


@pytest.fixture(scope="module")
def cli():
    _register_all()
    return CliRunner()


def test_run_resume_evaluate_and_errors(cli, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "synth", **{"budget.cycles": 1})))
    run_dir = tmp_path / "run"
    result = cli.invoke(app, ["run", str(cfg), "--run-dir", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"done: {run_dir}" in result.output
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]

    again = cli.invoke(app, ["run", str(run_dir), "--quiet"])  # resume a finished run
    assert again.exit_code == 0, again.output

    ev = cli.invoke(app, ["evaluate", str(run_dir), "--split", "val", "--quiet"])
    assert ev.exit_code == 0, ev.output
    saved = json.loads((run_dir / "eval_val.json").read_text())
    assert saved["cycle"] == 1
    assert saved["miou"] == pytest.approx(rows[-1]["miou"])  # same checkpoint, same pixels
    assert "sky" in ev.output

    missing = cli.invoke(app, ["evaluate", str(run_dir), "--split", "test", "--quiet"])
    assert missing.exit_code == 2
    assert "test" in missing.output

    shutil.copytree(tmp_path / "synth", tmp_path / "moved")  # the dataset moved elsewhere
    shutil.rmtree(tmp_path / "synth")
    moved = cli.invoke(app, ["evaluate", str(run_dir), "--data-root", str(tmp_path / "moved"),
                             "--quiet"])
    assert moved.exit_code == 0, moved.output
    assert json.loads((run_dir / "eval_val.json").read_text())["miou"] == saved["miou"]

    bad = cli.invoke(app, ["run", str(cfg), "--set", "train.stepz=3", "--run-dir",
                           str(tmp_path / "r2")])
    assert bad.exit_code == 2
    assert "train.stepz" in bad.output

    overridden = cli.invoke(app, ["run", str(run_dir), "--set", "seed=4"])
    assert overridden.exit_code == 2
    assert "cannot change the config" in overridden.output

    # a warm-started cycle whose previous checkpoint was deleted: one line naming the file
    warm = tmp_path / "warm.yaml"
    warm.write_text(yaml.safe_dump(tiny_config(
        tmp_path / "moved", **{"budget.cycles": 1, "train.warm_start": True})))
    warm_dir = tmp_path / "warm"
    assert cli.invoke(app, ["run", str(warm), "--run-dir", str(warm_dir), "--quiet"]
                      ).exit_code == 0
    for name in ("cycle_000.pt", "cycle_001.pt"):
        (warm_dir / "checkpoints" / name).unlink()
    (warm_dir / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in (warm_dir / "metrics.jsonl").read_text().splitlines()
                if json.loads(line)["cycle"] == 0))
    broken = cli.invoke(app, ["run", str(warm_dir), "--quiet"])
    assert broken.exit_code == 2
    assert "cycle_000.pt: missing" in broken.output


def test_person_oracle_run_says_how_to_continue(cli, tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "synth", **{"oracle.kind": "person"})))
    result = cli.invoke(app, ["run", str(cfg), "--run-dir", str(tmp_path / "p"), "--quiet"])
    assert result.exit_code == 4, result.output  # waiting for answers: its own status
    assert "32 queries of cycle 0 wait for answers" in result.output
    assert f"balseg annotate {tmp_path / 'p'}" in result.output
