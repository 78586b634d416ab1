"""prepare_split: shapes, padding, resizing, the on-disk cache, and coordinate mapping."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from balseg.data import (
    IGNORE_INDEX,
    DataError,
    open_source,
    prepare_split,
    resize_nearest,
    to_original_coords,
    to_work_coords,
)
from balseg.data.base import PairSource


def test_pads_bottom_right_with_zero_and_ignore(camvid_root: Path) -> None:
    src = open_source("camvid", camvid_root, "train")
    prep = prepare_split(src)  # fixture images are 12x16 -> padded to 16x16
    assert prep.images.shape == (3, 3, 16, 16) and prep.images.dtype == torch.uint8
    assert prep.labels.shape == (3, 16, 16) and prep.labels.dtype == torch.uint8
    assert prep.valid_hw == (12, 16) and prep.orig_sizes == [(12, 16)] * 3
    assert prep.image_ids == [src.image_id(i) for i in range(3)] and len(prep) == 3
    assert prep.info == src.info
    for i in range(3):
        image, label = src.load(i)
        assert (prep.images[i, :, :12, :16].permute(1, 2, 0).numpy() == image).all()
        assert (prep.labels[i, :12, :16].numpy() == label).all()
    assert (prep.images[:, :, 12:] == 0).all() and (prep.labels[:, 12:] == IGNORE_INDEX).all()
    assert prepare_split(src, pad_multiple=1).images.shape == (3, 3, 12, 16)


def test_resizes_images_bilinear_and_labels_nearest(ade_root: Path) -> None:
    src = open_source("ade20k", ade_root, "training")  # two images of different sizes
    prep = prepare_split(src, size=(10, 20), pad_multiple=8)
    assert prep.images.shape == (2, 3, 16, 24) and prep.valid_hw == (10, 20)
    assert prep.orig_sizes == [(12, 16), (15, 16)]
    for i in range(2):
        _, label = src.load(i)
        # The working label at (y, x) is the original label at to_original_coords(y, x).
        yy, xx = torch.meshgrid(torch.arange(10), torch.arange(20), indexing="ij")
        yx0 = to_original_coords(
            torch.stack([yy.ravel(), xx.ravel()], 1), (10, 20), prep.orig_sizes[i]
        )
        expected = label[yx0[:, 0].numpy(), yx0[:, 1].numpy()].reshape(10, 20)
        assert (prep.labels[i, :10, :20].numpy() == expected).all()


def test_differing_sizes_need_a_size(voc_root: Path) -> None:
    src = open_source("voc2012", voc_root, "train")
    with pytest.raises(DataError, match="size"):
        prepare_split(src)
    assert prepare_split(src, size=(12, 16)).images.shape == (2, 3, 16, 16)


def test_resize_nearest_never_turns_ignore_into_a_class() -> None:
    rng = np.random.default_rng(0)
    sparse = np.full((37, 53), IGNORE_INDEX, np.uint8)
    sparse.flat[rng.choice(sparse.size, 40, replace=False)] = rng.integers(0, 5, 40)
    for size in [(20, 30), (37, 53), (80, 100)]:
        out = resize_nearest(sparse, size)
        assert out.shape == size
        assert set(np.unique(out)) <= set(np.unique(sparse))


def test_cache_skips_decoding(camvid_root: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    src = open_source("camvid", camvid_root, "train")
    first = prepare_split(src, size=(8, 12), cache_dir=cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temp file left behind

    def no_decode(self: PairSource, index: int) -> None:
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(PairSource, "load", no_decode)
    again = prepare_split(
        open_source("camvid", camvid_root, "train"), size=(8, 12), cache_dir=cache
    )
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert (again.valid_hw, again.orig_sizes, again.image_ids) == (
        first.valid_hw,
        first.orig_sizes,
        first.image_ids,
    )
    assert again.info == first.info
    # Another size, or a changed file, is another key: it decodes again.
    with pytest.raises(AssertionError, match="decoded"):
        prepare_split(src, size=(8, 8), cache_dir=cache)
    os.utime(src.label_path(1), ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded"):
        prepare_split(src, size=(8, 12), cache_dir=cache)


def test_unreadable_cache_is_rebuilt(camvid_root: Path, tmp_path: Path) -> None:
    src = open_source("camvid", camvid_root, "val")
    first = prepare_split(src, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.npz")
    cached.write_bytes(b"garbage")
    again = prepare_split(src, cache_dir=tmp_path)
    assert torch.equal(first.images, again.images)
    assert cached.stat().st_size > 100


def test_prepare_rejects_bad_arguments(camvid_root: Path) -> None:
    src = open_source("camvid", camvid_root, "val")
    with pytest.raises(ValueError, match="pad_multiple"):
        prepare_split(src, pad_multiple=0)
    with pytest.raises(ValueError, match="size"):
        prepare_split(src, size=(0, 4))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 64), st.integers(0, 40), st.integers(1, 64), st.integers(0, 40), st.data())
def test_coords_round_trip_when_work_not_larger(h: int, dh: int, w: int, dw: int, data) -> None:
    work, orig = (h, w), (h + dh, w + dw)
    ys = data.draw(st.lists(st.integers(0, h - 1), min_size=1, max_size=10))
    xs = data.draw(st.lists(st.integers(0, w - 1), min_size=len(ys), max_size=len(ys)))
    yx = torch.tensor(list(zip(ys, xs, strict=True)), dtype=torch.long)
    yx0 = to_original_coords(yx, work, orig)
    assert (yx0 >= 0).all() and (yx0[:, 0] < orig[0]).all() and (yx0[:, 1] < orig[1]).all()
    assert torch.equal(to_work_coords(yx0, work, orig), yx)


def test_coords_formula_and_every_original_pixel_has_a_work_pixel() -> None:
    yx = torch.tensor([[0, 0], [1, 2], [175, 239]])
    y0 = to_original_coords(yx, (176, 240), (360, 480))
    assert y0.tolist() == [[1, 1], [3, 5], [358, 479]]  # floor((y + 0.5) * H0 / H)
    assert to_original_coords(torch.tensor([[1, 0]]), (5, 5), (6, 6)).tolist() == [[1, 0]]
    assert to_work_coords(torch.tensor([[1, 0]]), (5, 5), (6, 6)).tolist() == [[1, 0]]
    every = torch.stack(torch.meshgrid(torch.arange(360), torch.arange(480), indexing="ij"), -1)
    work = to_work_coords(every.reshape(-1, 2), (176, 240), (360, 480))
    assert work[:, 0].max() == 175 and work[:, 1].max() == 239 and work.min() == 0
    with pytest.raises(ValueError, match="outside"):
        to_original_coords(torch.tensor([[176, 0]]), (176, 240), (360, 480))
    with pytest.raises(ValueError, match="outside"):
        to_work_coords(torch.tensor([[0, -1]]), (176, 240), (360, 480))
