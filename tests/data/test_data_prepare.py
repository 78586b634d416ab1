"""prepare_split: shapes, padding, resizing, the on-disk cache, and coordinate mapping."""

from __future__ import annotations

import errno
import json
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
from balseg.errors import BalsegWarning, DiskFullError


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
    (folder,) = cache.iterdir()  # no temp folder left behind
    assert sorted(p.name for p in folder.iterdir()) == ["images.npy", "labels.npy",
                                                        "meta.json", "targets.npy"]
    assert first.on_disk and first.cache_path == folder

    def no_decode(self: PairSource, index: int) -> None:
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(PairSource, "load", no_decode)
    again = prepare_split(
        open_source("camvid", camvid_root, "train"), size=(8, 12), cache_dir=cache
    )
    assert torch.equal(first.images[:], again.images[:])
    assert torch.equal(first.labels[:], again.labels[:])
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


def test_disk_cache_equals_the_in_memory_split(ade_root: Path, tmp_path: Path) -> None:
    """The arrays, the targets at original size and the geometry are those of the in-memory
    path, whichever way they are read (one item, a list, a slice, all in memory)."""
    src = open_source("ade20k", ade_root, "training")  # two images of different sizes
    for resize in ("stretch", "fit"):
        mem = prepare_split(src, size=(10, 20), pad_multiple=8, resize=resize)
        disk = prepare_split(src, size=(10, 20), pad_multiple=8, resize=resize,
                             cache_dir=tmp_path)
        loaded = prepare_split(src, size=(10, 20), pad_multiple=8, resize=resize,
                               cache_dir=tmp_path, in_memory=True)
        assert disk.on_disk and not mem.on_disk and not loaded.on_disk
        for prep in (disk, loaded):
            assert torch.equal(prep.images[:], mem.images)
            assert torch.equal(prep.labels[[1, 0]], mem.labels[[1, 0]])
            assert torch.equal(prep.images[1, :, 2:5], mem.images[1, :, 2:5])
            assert [prep.valid_size(i) for i in range(2)] == [mem.valid_size(i)
                                                              for i in range(2)]
            for i in range(2):
                assert torch.equal(prep.target(i), torch.from_numpy(src.load(i)[1]))


def test_fit_keeps_the_aspect_ratio_and_coordinates_stay_exact(ade_root: Path) -> None:
    src = open_source("ade20k", ade_root, "training")  # 16x12 and 16x15 (WxH)
    prep = prepare_split(src, size=(10, 20), pad_multiple=8, resize="fit")
    assert prep.orig_sizes == [(12, 16), (15, 16)]
    assert [prep.valid_size(i) for i in range(2)] == [(10, 13), (10, 11)]
    assert prep.valid_hw == (10, 20) and prep.images.shape == (2, 3, 16, 24)
    for i in range(2):
        h, w = prep.valid_size(i)
        assert (prep.labels[i, h:] == IGNORE_INDEX).all()
        assert (prep.labels[i, :, w:] == IGNORE_INDEX).all()
        assert (prep.images[i, :, :, w:] == 0).all()
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        yx0 = to_original_coords(torch.stack([yy.ravel(), xx.ravel()], 1), (h, w),
                                 prep.orig_sizes[i])
        expected = src.load(i)[1][yx0[:, 0].numpy(), yx0[:, 1].numpy()].reshape(h, w)
        assert (prep.labels[i, :h, :w].numpy() == expected).all()


def test_unreadable_cache_is_rebuilt(camvid_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    src = open_source("camvid", camvid_root, "val")
    first = prepare_split(src, cache_dir=cache)
    expected = first.images[:]
    (folder,) = cache.iterdir()
    for damage in ("truncate", "rewrite", "meta", "version"):
        images = folder / "images.npy"
        if damage == "truncate":
            with open(images, "r+b") as f:
                f.truncate(images.stat().st_size - 7)
        elif damage == "rewrite":  # same size, changed by hand
            data = bytearray(images.read_bytes())
            data[-1] ^= 0xFF
            images.write_bytes(bytes(data))
        elif damage == "meta":
            (folder / "meta.json").write_text("{garbage")
        else:
            meta = json.loads((folder / "meta.json").read_text())
            (folder / "meta.json").write_text(json.dumps({**meta, "format": 1}))
        with pytest.warns(BalsegWarning, match=f"{folder}.*rebuilding"):
            again = prepare_split(src, cache_dir=cache)
        assert torch.equal(again.images[:], expected)
        assert [p.name for p in cache.iterdir()] == [folder.name]


def test_full_disk_names_the_folder_and_leaves_nothing(camvid_root: Path, tmp_path: Path,
                                                       monkeypatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    import shutil

    from balseg.data import prepare as prep_mod

    src = open_source("camvid", camvid_root, "val")
    real = shutil.disk_usage
    monkeypatch.setattr(prep_mod.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=1000))
    with pytest.raises(DiskFullError, match=rf"{cache}.*needs 0\.00 GB"):
        prepare_split(src, cache_dir=cache)
    assert list(cache.iterdir()) == []
    # the disk fills up mid-write: same message, nothing left behind, the next run builds
    monkeypatch.setattr(prep_mod.shutil, "disk_usage", real)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prep_mod.NpyWriter, "write", full)
    with pytest.raises(DiskFullError, match=str(cache)):
        prepare_split(src, cache_dir=cache)
    assert list(cache.iterdir()) == []
    monkeypatch.undo()
    assert prepare_split(src, cache_dir=cache).on_disk


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


@pytest.mark.parametrize("size,pad", [((10, 20), 8), ((7, 9), 1), ((13, 5), 16), ((9, 31), 4)])
@pytest.mark.parametrize("resize", ["stretch", "fit"])
def test_predict_prepares_an_image_as_the_split_does(ade_root: Path, size: tuple[int, int],
                                                     pad: int, resize: str) -> None:
    """``balseg predict`` and training see the same pixels at the same places: one
    ``Geometry`` rule for odd sizes, both aspect ratios, any padding multiple."""
    from types import SimpleNamespace

    from balseg.data.prepare import Geometry
    from balseg.predict.engine import Predictor

    src = open_source("ade20k", ade_root, "training")  # 16x12 and 16x15 (WxH)
    prep = prepare_split(src, size=size, pad_multiple=pad, resize=resize)
    geo = Geometry(size, resize, pad)
    for i in range(len(src)):
        image = src.load(i)[0]
        seen = Predictor.prepare(SimpleNamespace(geometry=geo), image)  # type: ignore[arg-type]
        assert seen.valid == prep.valid_size(i) and seen.orig == prep.orig_sizes[i]
        assert torch.equal(torch.from_numpy(seen.array), prep.images[i])
