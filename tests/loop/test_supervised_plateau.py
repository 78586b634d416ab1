"""benchmarks/supervised_plateau.py: the supervised reference evaluated along its training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.loop.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "supervised_plateau.py"


def _plateau():
    import importlib.util

    spec = importlib.util.spec_from_file_location("supervised_plateau", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.plateau


def _curve(values):
    return [{"step": 100 * (i + 1), "miou": {"val": v / 100}} for i, v in enumerate(values)]


def test_plateau_is_the_first_point_nothing_later_beats_by_more_than_the_tolerance():
    plateau = _plateau()
    got = plateau(_curve([30, 40, 45, 45.3, 45.1, 45.4]), "val", 0.5)
    assert got["plateau_step"] == 300 and got["plateau_miou"] == pytest.approx(45)
    assert got["best_step"] == 600 and got["best_miou"] == pytest.approx(45.4)
    # a late jump moves the plateau to the jump
    got = plateau(_curve([30, 40, 45, 45.3, 47.0]), "val", 0.5)
    assert got["plateau_step"] == 500
    # still climbing at the end: the plateau is the last point, which says "not converged"
    got = plateau(_curve([30, 35, 40]), "val", 0.5)
    assert got["plateau_step"] == 300 == got["best_step"]


def test_supervised_run_writes_its_curve_and_a_normal_run_directory(tmp_path):
    cfg = tiny_config(tmp_path / "data")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "plateau"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(config), "--steps", "4", "--every", "2",
         "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    curve = json.loads((out / "curve.json").read_text())
    assert [p["step"] for p in curve] == [2, 4]
    assert all(0 <= p["miou"]["val"] <= 1 for p in curve)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("val ") and json.loads(last[4:])["best_step"] in (2, 4)
    # the run directory is an ordinary supervised run the report can use as the reference
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["labeled_fraction"] == pytest.approx(1.0)
