"""Runs the predict tests share: built once per session, never modified (tests that damage
a run copy it first)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.loop.conftest import tiny_config

CAMVID = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "camvid"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Prepared-split caches go to a per-session temp folder, never to ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BALSEG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(autouse=True)
def _restore_threads():
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _train(root: Path, name: str, **overrides) -> Path:
    import torch

    from balseg.loop import ActiveLearningLoop, parse_config

    threads = torch.get_num_threads()
    cfg = parse_config(tiny_config(root / "synth", **overrides), source="test")
    loop = ActiveLearningLoop.from_config(cfg, root / name, progress=False)
    assert loop.run().status == "done"
    torch.set_num_threads(threads)
    return root / name


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """Synthetic run, 8 pool and 4 val images of 48x64 at their own size; checkpoints of
    cycles 0 and 1 (trained long enough to predict several classes)."""
    root = tmp_path_factory.mktemp("tiny")
    return _train(root, "run", **{"budget.cycles": 1, "train.steps": 12, "train.lr": 3e-3})


@pytest.fixture(scope="session")
def resized_run(tmp_path_factory) -> Path:
    """Synthetic run whose working size differs from the images' (fit into 40x56, padded
    to 48x64): predictions are upsampled back to 48x64."""
    root = tmp_path_factory.mktemp("resized")
    return _train(root, "run", **{"budget.cycles": 0, "train.steps": 12, "train.lr": 3e-3,
                                  "data.size": [40, 56], "data.resize": "fit"})


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A copy of the tiny run a test may damage."""
    dest = tmp_path / "run"
    shutil.copytree(tiny_run, dest)
    return dest


@pytest.fixture(scope="session")
def cli():
    from balseg.cli import _register_all

    _register_all()
    return CliRunner()


def invoke(cli: CliRunner, *args: object):
    from balseg.cli import app

    return cli.invoke(app, [str(a) for a in args])


def write_image(path: Path, hw: tuple[int, int] = (48, 64), seed: int = 0) -> np.ndarray:
    """A random RGB image file (PNG or JPEG by suffix); returns what it decodes to."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return np.array(Image.open(path).convert("RGB"))


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img)


def miou_from_masks(source, masks: Path) -> float:
    """mIoU of the class-id PNGs in ``masks`` against a split's labels (original size)."""
    import torch

    from balseg.train import iou_from_confusion

    c = source.info.num_classes
    cm = np.zeros((c, c), np.int64)
    for i in range(len(source)):
        _, label = source.load(i)
        pred = read_png(masks / f"{source.image_id(i)}.png")
        assert pred.shape == label.shape
        keep = label != 255
        cm += np.bincount(label[keep].astype(np.int64) * c + pred[keep],
                          minlength=c * c).reshape(c, c)
    return iou_from_confusion(torch.from_numpy(cm))[0]


def read_manifest(out: Path) -> list[dict[str, str]]:
    import csv

    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))
