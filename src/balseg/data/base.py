"""Shared contract of every dataset adapter.

Adapters normalise each benchmark's own label encoding to one convention so the rest of
balseg never special-cases a dataset: class ids are ``0..C-1`` and every pixel that must
not be trained on, scored or evaluated (void, unlabeled, borders) is ``IGNORE_INDEX``.

Besides the contract (``IGNORE_INDEX``, ``DataError``, ``DatasetInfo``,
``SegmentationSource``) this module holds the one reader every adapter shares
(``PairSource``): decoding and validation live in one place so that every dataset reports
a corrupt file, a size mismatch or a stray label value the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image, UnidentifiedImageError

from balseg.errors import DataError

IGNORE_INDEX = 255


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]
    palette: np.ndarray = field(repr=False)  # (C, 3) uint8, one RGB colour per class
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        palette = np.asarray(self.palette, dtype=np.uint8)
        if palette.shape != (len(self.class_names), 3):
            raise ValueError(
                f"{self.name}: palette shape {palette.shape} does not match "
                f"{len(self.class_names)} classes"
            )
        object.__setattr__(self, "palette", palette)

    def __eq__(self, other: object) -> bool:
        # Compare the palette by value (the generated __eq__ would compare arrays).
        if not isinstance(other, DatasetInfo):
            return NotImplemented
        return (self.name, self.class_names, self.ignore_index) == (
            other.name,
            other.class_names,
            other.ignore_index,
        ) and np.array_equal(self.palette, other.palette)

    def __hash__(self) -> int:
        return hash((self.name, self.class_names, self.ignore_index))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@runtime_checkable
class SegmentationSource(Protocol):
    """One split of a dataset as it lies on disk (read lazily, validated on read)."""

    info: DatasetInfo

    def __len__(self) -> int: ...

    def image_id(self, index: int) -> str:
        """Stable, unique id of an image within the split (used as key in the label store)."""
        ...

    def image_path(self, index: int) -> Path: ...

    def label_path(self, index: int) -> Path | None:
        """The label file of the image (None only for an unlabelled folder image)."""
        ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image HxWx3 uint8 RGB, label HxW uint8 with ids 0..C-1 or IGNORE_INDEX)."""
        ...


# Decoding errors PIL raises for corrupt, truncated, oversized or non-image files. A
# truncated file is only caught while ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is False
# (PIL's default; balseg never sets it).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB; any decoding failure is a DataError."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here and not later
            rgb = img.convert("RGB") if img.mode != "RGB" else img
            arr = np.array(rgb, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise DataError(f"image file not found: {path}") from exc
    except _DECODE_ERRORS as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc
    return arr


def read_label(path: Path) -> np.ndarray:
    """Decode a single-channel label PNG (mode L, P or 16-bit) to its raw HxW uint8 values.

    Palette images give their indices, not colours: for VOC the index *is* the class.
    An RGB label file is refused rather than guessed, since colours are not class ids.
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode, raw = img.mode, np.array(img)
    except FileNotFoundError as exc:
        raise DataError(f"label file not found: {path}") from exc
    except _DECODE_ERRORS as exc:
        raise DataError(f"cannot decode label {path}: {exc}") from exc
    if mode in ("L", "P"):
        return raw
    if mode not in ("I", "I;16", "I;16B", "I;16L"):
        raise DataError(
            f"label file {path} has mode {mode}; expected a single-channel "
            "PNG (mode L or P) whose values are class ids"
        )
    if raw.size and (raw.min() < 0 or raw.max() > 255):
        raise DataError(
            f"label file {path} holds values outside 0..255 "
            f"(min {int(raw.min())}, max {int(raw.max())})"
        )
    return raw.astype(np.uint8)


def plain_mapping(num_classes: int) -> dict[int, int]:
    """The mapping of files that already hold ``0..C-1`` and ``IGNORE_INDEX``."""
    return {**{c: c for c in range(num_classes)}, IGNORE_INDEX: IGNORE_INDEX}


def make_lut(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry raw->normalised table; -1 marks raw values that are not allowed."""
    lut = np.full(256, -1, dtype=np.int16)
    for raw, new in mapping.items():
        lut[raw] = new
    return lut


def apply_lut(raw: np.ndarray, lut: np.ndarray, path: Path) -> np.ndarray:
    """Map raw label values through ``lut``; values the table forbids are a DataError."""
    present = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
    bad = present[lut[present] < 0]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
        allowed = np.flatnonzero(lut >= 0)
        raise DataError(
            f"label file {path} holds values outside the class list: {shown} "
            f"(allowed raw values: {_ranges(allowed)})"
        )
    return lut[raw].astype(np.uint8)


def _ranges(values: np.ndarray) -> str:
    """Compact '0..10, 255' rendering of sorted integers, for error messages."""
    runs = np.split(values, np.flatnonzero(np.diff(values) != 1) + 1)
    return ", ".join(f"{r[0]}..{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs if len(r))


@dataclass(frozen=True)
class Sample:
    """One image of a split: its id, image file and label file (None: unlabelled)."""

    image_id: str
    image: Path
    label: Path | None


class PairSource:
    """A split given as a list of (image, label) files plus a raw->class table.

    Every adapter builds one of these, so decoding and validation are identical across
    datasets. ``lut`` maps raw label values to ``0..C-1``/``IGNORE_INDEX`` and marks
    forbidden raw values with -1.
    """

    def __init__(
        self,
        info: DatasetInfo,
        samples: Sequence[Sample],
        lut: np.ndarray,
        *,
        root: Path,
        split: str,
        where: Path,
    ) -> None:
        if not samples:
            raise DataError(f"{info.name} split '{split}' is empty: no images found in {where}")
        for s in samples:  # refuse an image without its label up front, not mid-training
            if s.label is not None and not s.label.is_file():
                raise DataError(f"label file {s.label} missing for image {s.image}")
        ids = [s.image_id for s in samples]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DataError(f"{info.name} split '{split}' in {where}: duplicate image id {dup}")
        self.info = info
        self.root = root
        self.split = split
        self._samples = list(samples)
        self._lut = lut

    def __len__(self) -> int:
        return len(self._samples)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}({self.info.name!r}, {str(self.root)!r}, {self.split!r}, n={len(self)})"

    def _sample(self, index: int) -> Sample:
        if not -len(self._samples) <= index < len(self._samples):
            raise IndexError(f"index {index} out of range for {len(self._samples)} images")
        return self._samples[index]

    def image_id(self, index: int) -> str:
        return self._sample(index).image_id

    def image_path(self, index: int) -> Path:
        return self._sample(index).image

    def label_path(self, index: int) -> Path | None:
        return self._sample(index).label

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self._sample(index)
        image = read_rgb(sample.image)
        if sample.label is None:
            return image, np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        raw = read_label(sample.label)
        if raw.shape != image.shape[:2]:
            (ih, iw), (lh, lw) = image.shape[:2], raw.shape
            raise DataError(
                f"size mismatch: image {sample.image} is {iw}x{ih} (WxH) but label "
                f"{sample.label} is {lw}x{lh}"
            )
        return image, apply_lut(raw, self._lut, sample.label)


def require_dir(path: Path, what: str) -> Path:
    """Fail with a DataError naming ``path`` when a required folder is missing."""
    if not path.is_dir():
        raise DataError(f"{what} not found: {path}")
    return path
