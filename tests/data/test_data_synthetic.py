"""The built-in synthetic dataset: deterministic, atomic, rare classes rare."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from balseg.data import (
    DataError,
    default_root,
    ensure_synthetic,
    open_source,
    prepare_split,
)
from balseg.data import synthetic as syn

SMALL = {"num_train": 4, "num_val": 2, "size": (48, 64)}


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = ensure_synthetic(tmp_path / "a", seed=3, **SMALL)
    b = ensure_synthetic(tmp_path / "b", seed=3, **SMALL)
    c = ensure_synthetic(tmp_path / "c", seed=4, **SMALL)
    ta, tb, tc = tree_bytes(a), tree_bytes(b), tree_bytes(c)
    assert ta == tb
    assert len(ta) == 1 + 1 + 2 * (4 + 2)  # classes.txt, meta.json, images + masks
    assert ta["train/images/train_0000.png"] != tc["train/images/train_0000.png"]


def test_default_dataset_layout_and_class_frequencies(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BALSEG_CACHE", str(tmp_path))
    train = open_source("synthetic", None, "train")
    assert train.root == tmp_path / "synthetic-v1" == default_root()
    assert len(train) == 64 and len(open_source("synthetic", None, "val")) == 24
    assert train.info.name == "synthetic"
    assert train.info.class_names == ("sky", "ground", "wall", "vegetation", "pole", "sign")
    assert train.image_id(0) == "train_0000"
    # The generic folder reader sees the same files (what the annotation app serves).
    assert open_source("folder", train.root, "train").image_path(5) == train.image_path(5)
    prep = prepare_split(train)
    assert prep.images.shape == (64, 3, 96, 128) and prep.valid_hw == (96, 128)
    freq = np.bincount(prep.labels.numpy().ravel(), minlength=256)[:6] / prep.labels.numel()
    assert (freq[:4] > 0.05).all()  # sky, ground, wall, vegetation: common
    assert 0.001 < freq[4] < 0.03 and 0.001 < freq[5] < 0.015  # pole, sign: rare
    present = np.stack([np.bincount(lab.ravel(), minlength=6) for lab in prep.labels.numpy()]) > 0
    assert present[:, :4].all(0).sum() >= 3 and present[:, 4:].any(0).all()
    # Random pixels under-sample the rare classes: 200 random pixels per image hit few.
    rng = np.random.default_rng(0)
    picks = prep.labels.reshape(64, -1)[:, rng.choice(96 * 128, 200, replace=False)]
    assert (picks >= 4).float().mean() < 0.03


def test_options_pick_their_own_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BALSEG_CACHE", str(tmp_path))
    src = open_source("synthetic", None, "val", seed=1, **SMALL)
    assert src.root != default_root() and src.root.parent == tmp_path
    assert len(src) == 2 and src.load(0)[0].shape == (48, 64, 3)
    with pytest.raises(ValueError, match="unknown synthetic options"):
        open_source("synthetic", None, "train", colour="red")
    with pytest.raises(DataError, match="train or val"):
        open_source("synthetic", None, "test", seed=1, **SMALL)


def test_existing_root_with_other_parameters_is_refused(tmp_path: Path) -> None:
    root = ensure_synthetic(tmp_path / "syn", seed=0, **SMALL)
    with pytest.raises(DataError, match=re.escape(str(root))):
        ensure_synthetic(root, seed=1, **SMALL)
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="not a balseg synthetic dataset"):
        ensure_synthetic(tmp_path / "other", **SMALL)


def test_generation_is_atomic(tmp_path: Path, monkeypatch) -> None:
    real = syn.render_scene
    calls = {"n": 0}

    def dies_midway(rng: np.random.Generator, size: tuple[int, int]):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the process were killed mid-generation
        return real(rng, size)

    monkeypatch.setattr(syn, "render_scene", dies_midway)
    root = tmp_path / "syn"
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(root, **SMALL)
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []  # the temp folder is gone too
    monkeypatch.setattr(syn, "render_scene", real)
    ensure_synthetic(root, **SMALL)
    assert len(open_source("synthetic", root, "train", **SMALL)) == 4


def test_stale_temp_folder_of_a_dead_process_is_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".syn.tmp-999999999-abcd1234"
    (stale / "train").mkdir(parents=True)
    os.utime(stale, (0, 0))
    ensure_synthetic(tmp_path / "syn", **SMALL)
    assert not stale.exists()
