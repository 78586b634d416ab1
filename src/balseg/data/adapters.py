"""Readers for each benchmark's standard on-disk layout.

Each ``open_*`` function lists one split's files and returns a ``PairSource`` with the
raw->class table of that benchmark; nothing is decoded until ``load``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .base import (
    IGNORE_INDEX,
    DataError,
    DatasetInfo,
    PairSource,
    Sample,
    make_lut,
    plain_mapping,
    require_dir,
)
from .meta import (
    ADE20K_INFO,
    CAMVID_INFO,
    CAMVID_VOID,
    CITYSCAPES_INFO,
    VOC_INFO,
    ade20k_mapping,
    cityscapes_id_to_train_id,
    distinct_palette,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files of ``folder`` with one of ``suffixes`` (case-insensitive), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _find_root(root: Path, candidates: tuple[str, ...], marker: str, what: str) -> Path:
    """The first of ``root/<candidate>`` that holds ``marker``, so users may point at the
    benchmark folder itself or at the folder it was unpacked into."""
    if not root.exists():
        raise DataError(f"{what} root not found: {root}")
    for rel in candidates:
        base = root / rel if rel else root
        if (base / marker).is_dir():
            return base
    tried = ", ".join(str((root / c) if c else root) for c in candidates)
    raise DataError(f"{what} layout not found under {root}: no '{marker}' folder in {tried}")


# --- CamVid --------------------------------------------------------------------------------
def open_camvid(root: Path, split: str) -> PairSource:
    """SegNet layout: ``<root>/<split>/*.png`` with ``<root>/<split>annot/<same name>``.

    The folders are listed rather than ``<split>.txt`` read, because those lists hold the
    absolute paths of the original SegNet machine. Raw 11 (void) and 255 become ignore.
    """
    if not root.is_dir():
        raise DataError(f"CamVid root not found: {root}")
    img_dir = require_dir(root / split, f"CamVid split folder '{split}'")
    lab_dir = require_dir(root / f"{split}annot", f"CamVid label folder '{split}annot'")
    samples = [Sample(p.stem, p, lab_dir / f"{p.stem}.png") for p in _files(img_dir, (".png",))]
    lut = make_lut({**plain_mapping(CAMVID_INFO.num_classes), CAMVID_VOID: IGNORE_INDEX})
    return PairSource(CAMVID_INFO, samples, lut, root=root, split=split, where=img_dir)


# --- Cityscapes ----------------------------------------------------------------------------
def open_cityscapes(root: Path, split: str) -> PairSource:
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/*_gtFine_labelIds.png``, mapped to the 19 trainIds.

    The image id is the file stem without ``_leftImg8bit`` (it already starts with the city).
    """
    root = _find_root(root, ("", "cityscapes"), "leftImg8bit", "Cityscapes")
    img_split = require_dir(root / "leftImg8bit" / split, f"Cityscapes split '{split}'")
    gt_split = require_dir(root / "gtFine" / split, f"Cityscapes gtFine split '{split}'")
    suffix = "_leftImg8bit.png"
    samples = []
    for city in sorted(p for p in img_split.iterdir() if p.is_dir()):
        for img in sorted(city.glob(f"*{suffix}")):
            stem = img.name[: -len(suffix)]
            samples.append(Sample(stem, img, gt_split / city.name / f"{stem}_gtFine_labelIds.png"))
    lut = make_lut(cityscapes_id_to_train_id())
    return PairSource(CITYSCAPES_INFO, samples, lut, root=root, split=split, where=img_split)


# --- Pascal VOC 2012 -----------------------------------------------------------------------
def open_voc2012(root: Path, split: str) -> PairSource:
    """``VOCdevkit/VOC2012``: ids from ``ImageSets/Segmentation/<split>.txt``, images
    ``JPEGImages/<id>.jpg``, labels ``SegmentationClass/<id>.png`` (palette index = class,
    255 = object border, ignored)."""
    root = _find_root(root, ("", "VOC2012", "VOCdevkit/VOC2012"), "JPEGImages", "VOC2012")
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        raise DataError(f"VOC2012 split list not found: {list_file}")
    ids = [ln.strip() for ln in list_file.read_text().splitlines() if ln.strip()]
    samples = []
    for i in ids:
        img = root / "JPEGImages" / f"{i}.jpg"
        if not img.is_file():
            raise DataError(f"image {img} listed in {list_file} does not exist")
        samples.append(Sample(i, img, root / "SegmentationClass" / f"{i}.png"))
    lut = make_lut(plain_mapping(VOC_INFO.num_classes))
    return PairSource(VOC_INFO, samples, lut, root=root, split=split, where=list_file)


# --- ADE20K --------------------------------------------------------------------------------
ADE20K_SPLITS = {"train": "training", "val": "validation"}


def open_ade20k(root: Path, split: str) -> PairSource:
    """``ADEChallengeData2016/{images,annotations}/{training,validation}`` (.jpg / .png).

    ``train``/``val`` are accepted as aliases. File value 0 ("other") becomes ignore and
    class k becomes k-1.
    """
    root = _find_root(root, ("", "ADEChallengeData2016"), "images", "ADE20K")
    folder = ADE20K_SPLITS.get(split, split)
    img_dir = require_dir(root / "images" / folder, f"ADE20K split folder '{folder}'")
    ann_dir = require_dir(root / "annotations" / folder, f"ADE20K annotation folder '{folder}'")
    samples = [Sample(p.stem, p, ann_dir / f"{p.stem}.png") for p in _files(img_dir, (".jpg",))]
    lut = make_lut(ade20k_mapping())
    return PairSource(ADE20K_INFO, samples, lut, root=root, split=split, where=img_dir)


# --- generic folder ------------------------------------------------------------------------
_COLOUR_LINE = re.compile(r"^(?P<name>.*?)\s+(?P<r>\d+)\s+(?P<g>\d+)\s+(?P<b>\d+)$")


def read_classes_file(path: Path, name: str = "folder") -> DatasetInfo:
    """``classes.txt``: one class per line, ``name`` or ``name R G B``; blank lines and
    lines starting with ``#`` are skipped. Class ids follow line order."""
    if not path.is_file():
        raise DataError(f"classes file not found: {path}")
    names: list[str] = []
    colours: list[tuple[int, int, int] | None] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _COLOUR_LINE.match(line)
        if m:
            rgb = (int(m["r"]), int(m["g"]), int(m["b"]))
            if max(rgb) > 255:
                raise DataError(f"{path}:{lineno}: colour {rgb} outside 0..255")
            names.append(m["name"])
            colours.append(rgb)
        else:
            names.append(line)
            colours.append(None)
    if not names:
        raise DataError(f"classes file {path} lists no classes")
    if len(names) > IGNORE_INDEX:
        raise DataError(f"classes file {path} lists {len(names)} classes; at most 255")
    if len(set(names)) != len(names):
        raise DataError(f"classes file {path} repeats a class name")
    fallback = distinct_palette(len(names), names)
    palette = np.array([c if c is not None else fallback[i] for i, c in enumerate(colours)])
    return DatasetInfo(name, tuple(names), palette.astype(np.uint8))


def open_folder(
    root: Path, split: str, *, require_masks: bool = True, name: str = "folder"
) -> PairSource:
    """The layout for the user's own data:

    ``<root>/classes.txt`` and ``<root>/<split>/images/*.{png,jpg,jpeg}`` with
    ``<root>/<split>/masks/<same stem>.png`` (grey values 0..C-1, 255 = ignore). With
    ``split="all"`` and no ``all`` folder, a flat ``<root>/images`` + ``<root>/masks`` is
    read instead. ``require_masks=False`` admits images without a mask (all ignore), for
    data whose labels come from the annotation app.
    """
    if not root.is_dir():
        raise DataError(f"folder dataset root not found: {root}")
    info = read_classes_file(root / "classes.txt", name)
    base = root / split
    if split == "all" and not base.is_dir() and (root / "images").is_dir():
        base = root
    img_dir = base / "images"
    if not img_dir.is_dir():
        raise DataError(f"{name} split '{split}' not found: no folder {img_dir} (a split is"
                        f" <root>/<split>/images, its masks in <root>/<split>/masks)")
    mask_dir = base / "masks"
    if require_masks and not mask_dir.is_dir():
        raise DataError(f"{name} split '{split}' mask folder not found: {mask_dir}; for images"
                        " without masks set data.options.require_masks: false and"
                        " oracle.kind: person (you answer the queries; configs/folder.yaml)")
    samples = []
    for p in _files(img_dir, IMAGE_SUFFIXES):
        mask = mask_dir / f"{p.stem}.png"
        samples.append(Sample(p.stem, p, mask if require_masks or mask.is_file() else None))
    lut = make_lut(plain_mapping(info.num_classes))
    return PairSource(info, samples, lut, root=root, split=split, where=img_dir)
