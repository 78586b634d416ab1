"""Small fixture trees in each benchmark's real on-disk layout and file formats."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from balseg.data.meta import voc_colormap

H, W = 12, 16  # fixture image size (H, W)


def rgb(seed: int, hw: tuple[int, int] = (H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def grey(values: list[int], seed: int, hw: tuple[int, int] = (H, W)) -> np.ndarray:
    """A label map using every value of ``values`` at least once."""
    rng = np.random.default_rng(seed + 1000)
    arr = rng.choice(np.array(values, np.uint8), size=hw)
    arr.flat[: len(values)] = values
    return arr


def save(arr: np.ndarray, path: Path, fmt: str | None = None, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:  # a VOC-style palette PNG: the stored index is the class
        img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
        img.putpalette(voc_colormap().ravel().tolist())
    else:
        img = Image.fromarray(arr)
    img.save(path, format=fmt)
    return path


@pytest.fixture
def camvid_root(tmp_path: Path) -> Path:
    """SegNet layout: 3 train and 2 val images; labels use 0..11 (11 = void)."""
    root = tmp_path / "camvid"
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            stem = f"0001TP_{split}{i:03d}"
            save(rgb(i), root / split / f"{stem}.png")
            save(grey(list(range(12)), i), root / f"{split}annot" / f"{stem}.png")
    return root


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    """Two cities in train, one in val; labelIds use all 34 ids."""
    root = tmp_path / "cityscapes"
    k = 0
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for city in cities:
            for j in range(2):
                stem = f"{city}_{j:06d}_000019"
                img_dir, gt_dir = (root / d / split / city for d in ("leftImg8bit", "gtFine"))
                save(rgb(k, (H, 40)), img_dir / f"{stem}_leftImg8bit.png")
                save(grey(list(range(34)), k, (H, 40)), gt_dir / f"{stem}_gtFine_labelIds.png")
                k += 1
    return root


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """VOCdevkit/VOC2012 with JPEG images and mode-P palette labels (255 = border)."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    ids = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]}
    for split, names in ids.items():
        for i, name in enumerate(names):
            hw = (H + i, W + 2 * i)  # VOC images differ in size
            save(rgb(i, hw), root / "JPEGImages" / f"{name}.jpg", "JPEG")
            save(
                grey([0, 1, 15, 20, 255], i, hw),
                root / "SegmentationClass" / f"{name}.png",
                palette=True,
            )
        lst = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        lst.parent.mkdir(parents=True, exist_ok=True)
        lst.write_text("\n".join(names) + "\n")
    return tmp_path


@pytest.fixture
def ade_root(tmp_path: Path) -> Path:
    """ADEChallengeData2016 with JPEG images and PNG annotations (0 = other)."""
    root = tmp_path / "ADEChallengeData2016"
    for folder, n in (("training", 2), ("validation", 1)):
        for i in range(n):
            stem = f"ADE_{'train' if folder == 'training' else 'val'}_{i + 1:08d}"
            hw = (H + 3 * i, W)
            save(rgb(i, hw), root / "images" / folder / f"{stem}.jpg", "JPEG")
            save(grey([0, 1, 2, 150], i, hw), root / "annotations" / folder / f"{stem}.png")
    return root


@pytest.fixture
def make_folder(tmp_path: Path) -> Callable[..., Path]:
    """Generic folder layout with ``classes.txt`` (3 classes, two with colours)."""

    def make(splits: tuple[str, ...] = ("train", "val"), n: int = 3, flat: bool = False) -> Path:
        root = tmp_path / "mydata"
        root.mkdir(exist_ok=True)
        classes = "# my classes\nroad 128 64 128\ntraffic sign 220 220 0\n\ncar\n"
        (root / "classes.txt").write_text(classes)
        for split in splits:
            base = root if flat else root / split
            for i in range(n):
                ext = "jpg" if i % 2 else "png"
                save(rgb(i), base / "images" / f"img{i}.{ext}")
                save(grey([0, 1, 2, 255], i), base / "masks" / f"img{i}.png")
        return root

    return make
