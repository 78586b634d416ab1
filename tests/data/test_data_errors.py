"""Bad input on disk is a DataError naming the file, never a silent wrong result."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from balseg.data import DataError, open_source, prepare_split


def named(path: Path) -> str:
    return re.escape(str(path))


def test_corrupt_image(camvid_root: Path) -> None:
    src = open_source("camvid", camvid_root, "train")
    src.image_path(1).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    src.load(0)  # the others still load
    with pytest.raises(DataError, match=named(src.image_path(1))):
        src.load(1)


def test_not_an_image_at_all(camvid_root: Path) -> None:
    src = open_source("camvid", camvid_root, "train")
    src.image_path(0).write_text("hello")
    with pytest.raises(DataError, match="cannot decode image .*" + named(src.image_path(0))):
        src.load(0)


@pytest.mark.parametrize("which", ["image", "label"])
def test_truncated_png(camvid_root: Path, which: str) -> None:
    src = open_source("camvid", camvid_root, "val")
    path = src.image_path(0) if which == "image" else src.label_path(0)
    assert path is not None
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=named(path)):
        src.load(0)


def test_truncated_jpeg(ade_root: Path) -> None:
    src = open_source("ade20k", ade_root, "training")
    data = src.image_path(0).read_bytes()
    src.image_path(0).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=named(src.image_path(0))):
        src.load(0)


def test_size_mismatch_names_both_files_and_sizes(camvid_root: Path) -> None:
    src = open_source("camvid", camvid_root, "train")
    label = src.label_path(2)
    assert label is not None
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(label)
    with pytest.raises(DataError) as err:
        src.load(2)
    msg = str(err.value)
    assert str(src.image_path(2)) in msg and str(label) in msg
    assert "16x12" in msg and "20x10" in msg


@pytest.mark.parametrize(("dataset", "bad"), [("camvid", [12, 200]), ("cityscapes", [34, 100])])
def test_label_values_outside_class_list(
    dataset: str, bad: list[int], camvid_root: Path, cityscapes_root: Path
) -> None:
    root = camvid_root if dataset == "camvid" else cityscapes_root
    src = open_source(dataset, root, "train")
    label = src.label_path(0)
    assert label is not None
    arr = np.array(Image.open(label))
    arr[0, 0], arr[1, 1] = bad
    Image.fromarray(arr).save(label)
    with pytest.raises(DataError, match=named(label)) as err:
        src.load(0)
    assert all(str(v) in str(err.value) for v in bad)


def test_folder_mask_value_equal_to_num_classes(make_folder) -> None:
    root = make_folder()
    mask = root / "train" / "masks" / "img2.png"
    arr = np.array(Image.open(mask))
    arr[3, 3] = 3  # classes.txt lists 3 classes: 0..2 and 255 are valid
    Image.fromarray(arr).save(mask)
    src = open_source("folder", root, "train")
    with pytest.raises(DataError, match=named(mask) + ".*: 3 "):
        src.load(2)


def test_rgb_label_is_refused(make_folder) -> None:
    root = make_folder()
    mask = root / "train" / "masks" / "img0.png"
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(mask)
    with pytest.raises(DataError, match=named(mask) + ".*mode RGB"):
        open_source("folder", root, "train").load(0)


def test_missing_label_file(camvid_root: Path, voc_root: Path) -> None:
    lab = camvid_root / "trainannot" / "0001TP_train001.png"
    lab.unlink()
    with pytest.raises(DataError, match=named(lab)):
        open_source("camvid", camvid_root, "train")
    listed = voc_root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt"
    listed.write_text(listed.read_text() + "2099_999999\n")
    with pytest.raises(DataError, match=r"2099_999999\.jpg"):
        open_source("voc2012", voc_root, "train")


def test_empty_split(camvid_root: Path, make_folder, voc_root: Path) -> None:
    (camvid_root / "test").mkdir()
    (camvid_root / "testannot").mkdir()
    with pytest.raises(DataError, match="empty.*" + named(camvid_root / "test")):
        open_source("camvid", camvid_root, "test")
    root = make_folder(splits=("train",))
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "masks").mkdir()
    with pytest.raises(DataError, match="empty.*" + named(root / "val" / "images")):
        open_source("folder", root, "val")
    lst = voc_root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    lst.write_text("\n")
    with pytest.raises(DataError, match="empty.*" + named(lst)):
        open_source("voc2012", voc_root, "val")


def test_bad_classes_file(make_folder) -> None:
    root = make_folder()
    (root / "classes.txt").write_text("road 300 0 0\n")
    with pytest.raises(DataError, match=named(root / "classes.txt")):
        open_source("folder", root, "train")
    (root / "classes.txt").write_text("\n# nothing\n")
    with pytest.raises(DataError, match="no classes"):
        open_source("folder", root, "train")
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match=named(root / "classes.txt")):
        open_source("folder", root, "train")


def test_duplicate_stems_in_folder(make_folder) -> None:
    root = make_folder()
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / "train" / "images" / "img0.jpg")
    with pytest.raises(DataError, match="duplicate image id img0"):
        open_source("folder", root, "train")


def test_prepare_split_reports_the_bad_file(camvid_root: Path) -> None:
    src = open_source("camvid", camvid_root, "train")
    data = src.image_path(1).read_bytes()
    src.image_path(1).write_bytes(data[:100])
    with pytest.raises(DataError, match=named(src.image_path(1))):
        prepare_split(src, size=(8, 8))
