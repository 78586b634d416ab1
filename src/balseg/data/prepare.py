"""Decode a split once into memory (resized, padded), optionally cached on disk.

Active learning scores every pool pixel every cycle and trains many epochs on small
label sets, so re-decoding PNGs each epoch would dominate the run time. ``prepare_split``
decodes each image once (in a thread pool: PIL releases the GIL while decoding) into two
uint8 tensors, and can store them in a .npz keyed by everything that could change them.

Geometry. Labels are resized with the nearest-neighbour rule that the rest of balseg uses
to map a working pixel to the original image, ``y0 = floor((y + 0.5) * H0 / H)``, so the
label at working pixel (y, x) is exactly the original label at ``to_original_coords``.
Images are resized bilinearly with antialiasing (PIL). Resizing to ``size`` does not keep
the aspect ratio. Padding is added at the bottom/right only, so working coordinates are
the same with or without padding.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from balseg.fsutil import atomic_open

from .base import IGNORE_INDEX, DataError, DatasetInfo, SegmentationSource

CACHE_FORMAT = 1


@dataclass
class PreparedSplit:
    """A whole split in memory: ``images`` uint8 [N,3,Hp,Wp], ``labels`` uint8 [N,Hp,Wp].

    ``valid_hw`` is the (H, W) before padding (pixels beyond it are padding: image 0,
    label IGNORE_INDEX); ``orig_sizes[i]`` is image i's (H0, W0) on disk.
    """

    images: torch.Tensor
    labels: torch.Tensor
    valid_hw: tuple[int, int]
    orig_sizes: list[tuple[int, int]]
    image_ids: list[str]
    info: DatasetInfo

    def __len__(self) -> int:
        return len(self.image_ids)


def _src_rows(hw: tuple[int, int], orig_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Original row/column index of each working row/column (the nearest rule)."""
    (h, w), (h0, w0) = hw, orig_hw
    rows = ((2 * np.arange(h) + 1) * h0) // (2 * h)
    cols = ((2 * np.arange(w) + 1) * w0) // (2 * w)
    return rows, cols


def resize_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an HxW label map to ``size`` (H, W).

    Every output pixel copies one input pixel, so IGNORE_INDEX is never replaced by a
    class and no value is invented.
    """
    rows, cols = _src_rows(size, label.shape[:2])  # type: ignore[arg-type]
    return label[rows[:, None], cols[None, :]]


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an HxWx3 uint8 image to ``size`` (H, W), antialiased on shrink."""
    if image.shape[:2] == tuple(size):
        return image
    pil = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(pil)


def _check_coords(yx: torch.Tensor, hw: tuple[int, int], what: str) -> torch.Tensor:
    yx = torch.as_tensor(yx, dtype=torch.long)
    if yx.ndim != 2 or yx.shape[1] != 2:
        raise ValueError(f"{what} coordinates must be shaped [n, 2], got {tuple(yx.shape)}")
    if yx.numel() and (
        int(yx.min()) < 0 or int(yx[:, 0].max()) >= hw[0] or int(yx[:, 1].max()) >= hw[1]
    ):
        raise ValueError(f"{what} coordinates outside an image of size {tuple(hw)}")
    return yx


def to_original_coords(
    yx_work: torch.Tensor, work_hw: tuple[int, int], orig_hw: tuple[int, int]
) -> torch.Tensor:
    """Working (y, x) -> original (y0, x0) with ``y0 = floor((y + 0.5) * H0 / H)``.

    Integer arithmetic (``((2y + 1) * H0) // (2H)``) so no float rounding can move a pixel.
    """
    yx = _check_coords(yx_work, work_hw, "working")
    num = torch.tensor(orig_hw, dtype=torch.long)
    den = torch.tensor(work_hw, dtype=torch.long)
    return ((2 * yx + 1) * num) // (2 * den)


def to_work_coords(
    yx_orig: torch.Tensor, work_hw: tuple[int, int], orig_hw: tuple[int, int]
) -> torch.Tensor:
    """Original (y0, x0) -> the working pixel whose area holds that pixel's centre:
    ``y = floor((y0 + 0.5) * H / H0)``.

    This is the inverse of ``to_original_coords`` whenever the working size is at most the
    original size. (The corner rule ``floor(y0 * H / H0)`` is not: for H=5, H0=6, working
    row 1 maps to original row 1, which the corner rule sends back to row 0.)
    """
    yx = _check_coords(yx_orig, orig_hw, "original")
    num = torch.tensor(work_hw, dtype=torch.long)
    den = torch.tensor(orig_hw, dtype=torch.long)
    return ((2 * yx + 1) * num) // (2 * den)


def _file_facts(path: Path | None) -> list[object]:
    if path is None:
        return [None]
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _cache_key(source: SegmentationSource, size: tuple[int, int] | None, pad_multiple: int) -> str:
    """Hash of everything that changes the prepared arrays (files with sizes and mtimes)."""
    root = getattr(source, "root", None)
    facts = {
        "format": CACHE_FORMAT,
        "dataset": source.info.name,
        "classes": list(source.info.class_names),
        "root": str(Path(root).resolve()) if root is not None else type(source).__name__,
        "split": getattr(source, "split", None),
        "size": list(size) if size else None,
        "pad_multiple": pad_multiple,
        "files": [
            [
                source.image_id(i),
                *_file_facts(source.image_path(i)),
                *_file_facts(source.label_path(i)),
            ]
            for i in range(len(source))
        ],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]


def _header_size(path: Path) -> tuple[int, int]:
    """(H, W) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc
    return h, w


def _common_size(source: SegmentationSource) -> tuple[int, int]:
    """The one size of every image in the split, or a DataError asking for ``size``."""
    first = _header_size(source.image_path(0))
    for i in range(1, len(source)):
        hw = _header_size(source.image_path(i))
        if hw != first:
            raise DataError(
                f"images of {source.info.name} differ in size ({source.image_path(0)} is "
                f"{first[1]}x{first[0]}, {source.image_path(i)} is {hw[1]}x{hw[0]}, WxH): "
                "a working size must be set (size=(H, W)) to prepare this split"
            )
    return first


def _pad_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 1 else n


def prepare_split(
    source: SegmentationSource,
    *,
    size: tuple[int, int] | None = None,
    pad_multiple: int = 16,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> PreparedSplit:
    """Decode, resize to ``size`` (H, W) if given, pad to ``pad_multiple``, keep in memory.

    With ``cache_dir`` the result is stored as a .npz (written atomically) and later calls
    with the same files and settings load it instead of decoding.
    """
    if len(source) == 0:
        raise DataError(f"{source.info.name}: the split is empty, nothing to prepare")
    if pad_multiple < 1:
        raise ValueError(f"pad_multiple must be >= 1, got {pad_multiple}")
    if size is not None:
        size = (int(size[0]), int(size[1]))
        if min(size) < 1:
            raise ValueError(f"size must be positive, got {size}")
    cache_file = None
    if cache_dir is not None:
        key = _cache_key(source, size, pad_multiple)
        split = getattr(source, "split", "split")
        cache_file = Path(cache_dir) / f"{source.info.name}-{split}-{key}.npz"
        cached = _load_cache(cache_file, source.info)
        if cached is not None:
            return cached

    h, w = size if size is not None else _common_size(source)
    n, hp, wp = len(source), _pad_to(h, pad_multiple), _pad_to(w, pad_multiple)
    images = np.zeros((n, 3, hp, wp), np.uint8)
    labels = np.full((n, hp, wp), IGNORE_INDEX, np.uint8)
    orig_sizes: list[tuple[int, int]] = [(0, 0)] * n

    def work(i: int) -> None:
        image, label = source.load(i)
        orig_sizes[i] = (int(image.shape[0]), int(image.shape[1]))
        if size is not None:
            image, label = resize_image(image, size), resize_nearest(label, size)
        elif image.shape[:2] != (h, w):
            raise DataError(
                f"{source.image_path(i)} is {image.shape[1]}x{image.shape[0]} (WxH), not "
                f"{w}x{h} like the others: set a working size (size=(H, W))"
            )
        images[i, :, :h, :w] = image.transpose(2, 0, 1)
        labels[i, :h, :w] = label

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(work, range(n))
        if progress:
            from tqdm import tqdm

            jobs = tqdm(jobs, total=n, desc=f"decoding {source.info.name}")
        for _ in jobs:  # re-raises the first worker error, naming its file
            pass

    prepared = PreparedSplit(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        valid_hw=(h, w),
        orig_sizes=orig_sizes,
        image_ids=[source.image_id(i) for i in range(n)],
        info=source.info,
    )
    if cache_file is not None:
        _save_cache(cache_file, prepared)
    return prepared


def _save_cache(path: Path, prep: PreparedSplit) -> None:
    """Written atomically: never a half-written cache."""
    with atomic_open(path) as f:
        np.savez(
            f,
            images=prep.images.numpy(),
            labels=prep.labels.numpy(),
            valid_hw=np.array(prep.valid_hw, np.int64),
            orig_sizes=np.array(prep.orig_sizes, np.int64).reshape(-1, 2),
            image_ids=np.array(prep.image_ids, dtype=str),
        )


def _load_cache(path: Path, info: DatasetInfo) -> PreparedSplit | None:
    """The cached split, or None when absent or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return PreparedSplit(
                images=torch.from_numpy(z["images"]),
                labels=torch.from_numpy(z["labels"]),
                valid_hw=(int(z["valid_hw"][0]), int(z["valid_hw"][1])),
                orig_sizes=[(int(a), int(b)) for a, b in z["orig_sizes"]],
                image_ids=[str(s) for s in z["image_ids"]],
                info=info,
            )
    except (OSError, ValueError, KeyError):
        return None
