"""Each adapter on a fixture tree in its real layout: listing, ids, label mapping."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from balseg.data import (
    CITYSCAPES_LABELS,
    DATASETS,
    IGNORE_INDEX,
    DataError,
    SegmentationSource,
    dataset_info,
    open_source,
)
from balseg.data.meta import voc_colormap


def raw_label(path: Path | None) -> np.ndarray:
    assert path is not None
    return np.array(Image.open(path))


def check_source(src: SegmentationSource, n: int) -> None:
    """The protocol holds and every load is normalised and consistent in size."""
    assert isinstance(src, SegmentationSource)
    assert len(src) == n
    assert len({src.image_id(i) for i in range(n)}) == n
    for i in range(n):
        image, label = src.load(i)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert label.dtype == np.uint8 and label.shape == image.shape[:2]
        ok = (label < src.info.num_classes) | (label == IGNORE_INDEX)
        assert ok.all()
        assert src.image_path(i).is_file()


def test_camvid_lists_folders_and_maps_void(camvid_root: Path) -> None:
    train = open_source("camvid", camvid_root, "train")
    check_source(train, 3)
    check_source(open_source("camvid", str(camvid_root), "val"), 2)
    assert train.info.num_classes == 11
    assert train.info.class_names[0] == "Sky" and train.info.class_names[10] == "Bicyclist"
    assert train.image_id(0) == "0001TP_train000"
    assert train.label_path(0) == camvid_root / "trainannot" / "0001TP_train000.png"
    raw = raw_label(train.label_path(0))
    _, label = train.load(0)
    assert (label[raw == 11] == IGNORE_INDEX).all()
    assert (label[raw < 11] == raw[raw < 11]).all()
    assert (raw == 11).any()


def test_cityscapes_maps_label_ids_to_train_ids(cityscapes_root: Path) -> None:
    train = open_source("cityscapes", cityscapes_root, "train")
    check_source(train, 4)
    check_source(open_source("cityscapes", cityscapes_root, "val"), 2)
    assert train.image_id(0) == "aachen_000000_000019"
    assert train.label_path(0).name == "aachen_000000_000019_gtFine_labelIds.png"
    raw = raw_label(train.label_path(0))
    _, label = train.load(0)
    expected = {0: 255, 1: 255, 6: 255, 7: 0, 8: 1, 9: 255, 11: 2, 24: 11, 26: 13, 33: 18}
    for rid, tid in expected.items():
        assert (label[raw == rid] == tid).all(), rid
    assert train.info.num_classes == 19
    assert train.info.class_names[0] == "road" and train.info.class_names[18] == "bicycle"
    assert tuple(train.info.palette[0]) == (128, 64, 128)


def test_cityscapes_table_is_the_official_one() -> None:
    ids = [lab.id for lab in CITYSCAPES_LABELS if lab.id >= 0]
    assert ids == list(range(34))
    train_ids = sorted(lab.train_id for lab in CITYSCAPES_LABELS if 0 <= lab.train_id < 255)
    assert train_ids == list(range(19))
    by_name = {lab.name: lab for lab in CITYSCAPES_LABELS}
    assert by_name["sky"].id == 23 and by_name["sky"].train_id == 10
    assert by_name["sky"].color == (70, 130, 180)
    assert by_name["person"].color == (220, 20, 60)
    assert by_name["license plate"].id == -1


def test_voc_reads_palette_indices_not_colours(voc_root: Path) -> None:
    # The root may be the unpack folder, VOCdevkit or VOC2012 itself.
    for root in (voc_root, voc_root / "VOCdevkit", voc_root / "VOCdevkit" / "VOC2012"):
        train = open_source("voc2012", root, "train")
        check_source(train, 2)
    assert Image.open(train.label_path(0)).mode == "P"
    _, label = train.load(0)
    assert set(np.unique(label)) == {0, 1, 15, 20, 255}
    assert train.image_path(0).suffix == ".jpg"
    assert train.info.class_names[0] == "background"
    assert train.info.class_names[-1] == "tvmonitor" and train.info.num_classes == 21
    assert (train.info.palette == voc_colormap(21)).all()
    assert tuple(voc_colormap()[15]) == (192, 128, 128)  # person
    check_source(open_source("voc2012", voc_root, "val"), 1)


def test_ade20k_shifts_classes_and_ignores_zero(ade_root: Path) -> None:
    train = open_source("ade20k", ade_root, "training")
    check_source(train, 2)
    alias = open_source("ade20k", ade_root.parent, "train")  # root above, split alias
    assert [alias.image_id(i) for i in range(2)] == [train.image_id(i) for i in range(2)]
    raw = raw_label(train.label_path(0))
    _, label = train.load(0)
    for rid, cid in {0: 255, 1: 0, 2: 1, 150: 149}.items():
        assert (label[raw == rid] == cid).all()
    assert train.info.num_classes == 150
    assert train.info.class_names[:5] == ("wall", "building", "sky", "floor", "tree")
    assert train.info.class_names[-1] == "flag"
    assert train.info.palette.shape == (150, 3)  # the official palette (road = skyscraper)
    assert tuple(train.info.palette[0]) == (120, 120, 120)
    check_source(open_source("ade20k", ade_root, "val"), 1)


def test_folder_layout_classes_file_and_flat_root(make_folder) -> None:
    root = make_folder()
    src = open_source("folder", root, "train")
    check_source(src, 3)
    assert src.info.class_names == ("road", "traffic sign", "car")
    assert tuple(src.info.palette[0]) == (128, 64, 128)
    assert tuple(src.info.palette[1]) == (220, 220, 0)
    assert src.image_path(1).suffix == ".jpg" and src.label_path(1).name == "img1.png"
    assert dataset_info("folder", root) == src.info
    flat = make_folder(splits=("flat",), flat=True)
    check_source(open_source("folder", flat, "all"), 3)


def test_folder_without_masks_when_allowed(make_folder) -> None:
    root = make_folder(splits=("pool",))
    (root / "pool" / "masks" / "img0.png").unlink()
    with pytest.raises(DataError, match=re.escape("img0.png")):
        open_source("folder", root, "pool")
    src = open_source("folder", root, "pool", require_masks=False)
    assert src.label_path(0) is None
    image, label = src.load(0)
    assert (label == IGNORE_INDEX).all() and label.shape == image.shape[:2]


def test_registry_names_and_static_info() -> None:
    assert DATASETS == ("camvid", "cityscapes", "voc2012", "ade20k", "folder", "synthetic")
    expected = {"camvid": 11, "cityscapes": 19, "voc2012": 21, "ade20k": 150, "synthetic": 6}
    for name, c in expected.items():
        info = dataset_info(name)
        assert info.num_classes == c and info.palette.shape == (c, 3)
        assert info.ignore_index == IGNORE_INDEX
    with pytest.raises(ValueError, match="camvid, cityscapes"):
        open_source("kitti", "/nowhere", "train")
    with pytest.raises(ValueError, match="valid names"):
        dataset_info("coco")
    with pytest.raises(DataError, match="root"):
        dataset_info("folder")
    with pytest.raises(ValueError, match="unknown options"):
        open_source("camvid", "/nowhere", "train", seed=1)


@pytest.mark.parametrize("dataset", ["camvid", "cityscapes", "voc2012", "ade20k", "folder"])
def test_missing_root_names_the_path(dataset: str, tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        open_source(dataset, missing, "train")
    with pytest.raises(DataError, match="root"):
        open_source(dataset, None, "train")


def test_missing_split_folder_names_the_path(
    camvid_root: Path, cityscapes_root: Path, voc_root: Path, ade_root: Path, make_folder
) -> None:
    cases = {
        "camvid": (camvid_root, camvid_root / "test"),
        "cityscapes": (cityscapes_root, cityscapes_root / "leftImg8bit" / "test"),
        "voc2012": (voc_root, "ImageSets/Segmentation/test.txt"),
        "ade20k": (ade_root, ade_root / "images" / "testing"),
        "folder": (make_folder(), "test/images"),
    }
    for dataset, (root, path) in cases.items():
        split = "testing" if dataset == "ade20k" else "test"
        with pytest.raises(DataError, match=re.escape(str(path))):
            open_source(dataset, root, split)


def test_automatic_palette_looks_distinct_and_knows_camvid_names(tmp_path: Path) -> None:
    """Issue 29: the golden-angle palette made a folder's Sky (242,85,85) and Car (242,0,81)
    look alike. Classes named as in CamVid get CamVid's colours; the others colours at
    least 30 CIELAB units from each other, from black, white and grey, and from the named
    ones."""
    from balseg.data.adapters import read_classes_file
    from balseg.data.meta import CAMVID_CLASSES, distinct_palette, lab_colours

    def min_distance(colours) -> float:
        lab = lab_colours(np.asarray(colours))
        d = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
        return float(d[~np.eye(len(colours), dtype=bool)].min())

    own = [f"thing{i}" for i in range(12)]
    (tmp_path / "classes.txt").write_text("\n".join(["Sky", "car", "Building", *own]) + "\n")
    info = read_classes_file(tmp_path / "classes.txt")
    camvid = dict(CAMVID_CLASSES)
    assert [tuple(c) for c in info.palette[:3]] == [camvid["Sky"], camvid["Car"],
                                                     camvid["Building"]]
    rest = info.palette[3:].tolist()
    assert min_distance([*rest, [0, 0, 0], [255, 255, 255], [128, 128, 128]]) >= 30
    assert min_distance(info.palette.tolist()) >= 20  # CamVid's own colours are closer
    assert np.array_equal(distinct_palette(15, ["Sky", "car", "Building", *own]), info.palette)
    assert min_distance(distinct_palette(24)) >= 30
