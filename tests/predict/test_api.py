"""``balseg.load_run``: the README's example as it stands, and the API's contract."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import balseg
from balseg.errors import ConfigError, DataError, LabelStoreError, MissingFileError, RunDirError

from .conftest import write_image

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Use from Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's 'Use from Python' section has no python block"
    return match.group(1)


def test_the_readme_example_runs_as_it_stands(tiny_run, tmp_path, monkeypatch, capsys):
    code = readme_example()
    names = re.findall(r'load_run\("([^"]+)"\)', code)
    assert names, "the example opens a run with load_run"
    shutil.copytree(tiny_run, tmp_path / names[0])
    for image in set(re.findall(r'"([\w-]+\.(?:png|jpg))"', code)):
        write_image(tmp_path / image, (60, 80), 1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "'sky'" in out and "[0, 1]" in out  # class names, cycles
    assert "(60, 80)" in out and "most uncertain pixel" in out and "'queries'" in out


def test_import_balseg_loads_no_torch():
    code = ("import sys, balseg; assert callable(balseg.load_run);"
            " print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_run_contents_models_and_predictions(tiny_run):
    run = balseg.load_run(tiny_run)
    assert isinstance(run, balseg.Run) and run.cycles == [0, 1]
    assert run.num_classes == 6 and run.palette.shape == (6, 3)
    assert run.config.data.dataset == "synthetic"
    assert len(run.store.resolved_labels()) > 0
    with pytest.raises(LabelStoreError, match="readonly database"):  # the store is read-only
        run.store.add_queries([("train_0000", 0, 0, None)], cycle=5, strategy="margin")
    model = run.model(cycle=0)
    assert not model.training and model is run.model(cycle=0)  # loaded once
    with pytest.raises(MissingFileError, match="no checkpoint of cycle 3"):
        run.model(cycle=3)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for hw in [(48, 64), (33, 17)]]
    preds = run.predict(images, probabilities=True, batch_size=1)
    for image, pred in zip(images, preds, strict=True):
        assert pred.classes.shape == image.shape[:2] and pred.cycle == 1
        assert pred.probabilities.shape == (6, *image.shape[:2])
        assert np.allclose(pred.probabilities.sum(0), 1, atol=1e-5)
        assert np.array_equal(pred.probabilities.argmax(0), pred.classes)
        assert np.allclose(pred.probabilities.max(0), pred.confidence)
    # one image alone, a grey one and a batch array are accepted too
    assert run.predict(images[0])[0].classes.shape == (48, 64)
    assert run.predict(images[0][:, :, 0])[0].classes.shape == (48, 64)
    assert len(run.predict(np.stack([images[0]] * 3))) == 3
    older = run.predict(images[0], cycle=0)[0]
    assert older.cycle == 0
    scores = run.scores(images, "margin", samples=2)
    assert [s.shape for s in scores] == [(48, 64), (33, 17)]
    assert np.array_equal(scores[0], run.scores(images, "margin", samples=2)[0])
    run.close()


def test_api_bad_input(tiny_run, tmp_path):
    run = balseg.load_run(tiny_run)
    with pytest.raises(DataError, match=r"image 0: expected a uint8 image .*float64"):
        run.predict(np.zeros((8, 8, 3)))
    with pytest.raises(DataError, match=r"image 1: expected an HxWx3 RGB image, got shape"):
        run.predict([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 5), np.uint8)])
    with pytest.raises(DataError, match="image file not found"):
        run.predict(tmp_path / "missing.png")
    with pytest.raises(ConfigError, match="unknown acquisition score 'nope'"):
        run.scores(np.zeros((8, 8, 3), np.uint8), "nope")
    with pytest.raises(RunDirError, match="not a run directory"):
        balseg.load_run(tmp_path)
