"""Decode a split once, resized and padded, into arrays on disk that a run reads per batch.

Active learning scores every pool pixel every cycle and trains many epochs on small label
sets, so re-decoding image files each time would dominate the run time. ``prepare_split``
decodes each image once (in a thread pool: PIL releases the GIL while decoding) and, with
a ``cache_dir``, writes it straight into a folder of ``.npy`` files that later calls (and
other processes) read batch by batch (``DiskArray``): memory does not grow with the pool.
Without a ``cache_dir`` (tests, one-off evaluations) the arrays stay in memory.

The cache folder ``<cache_dir>/<dataset>-<split>-<key>/`` holds ``images.npy``
``[N,3,Hp,Wp]``, ``labels.npy`` ``[N,Hp,Wp]`` (uint8), ``targets.npy`` (the original-size
label maps back to back, only when images were resized) and ``meta.json`` (geometry, ids,
and the size and mtime of every array). The key hashes everything that could change the
arrays (file list with sizes and mtimes, size, padding, resize mode, format version). The
folder is built under a temporary name and renamed into place when complete; one whose
files were changed, truncated or written by another version is detected, deleted and
rebuilt with a warning. Disk needed: 4 bytes per working pixel plus 1 per original pixel
when resizing (``cache_bytes``).

Geometry. Labels are resized with the nearest-neighbour rule that the rest of balseg uses
to map a working pixel to the original image, ``y0 = floor((y + 0.5) * H0 / H)``, so the
label at working pixel (y, x) is exactly the original label at ``to_original_coords``.
Images are resized bilinearly with antialiasing (PIL). ``resize="stretch"`` resizes every
image to ``size`` (the aspect ratio changes); ``resize="fit"`` keeps each image's aspect
ratio, fitting it inside ``size``, so images have their own valid size
(``valid_size(i)``). Padding is added at the bottom/right only, so working coordinates are
the same with or without padding.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from balseg.errors import BalsegWarning, DiskFullError

from .base import IGNORE_INDEX, DataError, DatasetInfo, SegmentationSource
from .diskarray import DiskArray, NpyWriter, RaggedArray, npy_nbytes

if TYPE_CHECKING:
    from balseg.config import DataConfig

CACHE_FORMAT = 2
RESIZE_MODES = ("stretch", "fit")
Array = torch.Tensor | DiskArray


@dataclass
class PreparedSplit:
    """A split ready for the model: ``images`` uint8 [N,3,Hp,Wp], ``labels`` uint8 [N,Hp,Wp].

    Both are tensors in memory or ``DiskArray``s read per batch; index either the same way
    (``images[[3, 7]]`` gives a tensor of two images). ``valid_hw`` is the (H, W) of the
    content area before padding; ``valid_size(i)`` is image i's own (smaller in ``fit``
    mode; pixels beyond it are padding: image 0, label IGNORE_INDEX); ``orig_sizes[i]`` is
    image i's (H0, W0) on disk and ``target(i)`` its label map at that size.
    """

    images: Array
    labels: Array
    valid_hw: tuple[int, int]
    orig_sizes: list[tuple[int, int]]
    image_ids: list[str]
    info: DatasetInfo
    valid_sizes: list[tuple[int, int]] | None = None  # None: every image is valid_hw
    targets: RaggedArray | list[torch.Tensor] | None = None  # None: labels are original-size
    cache_path: Path | None = None
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def on_disk(self) -> bool:
        return isinstance(self.images, DiskArray)

    def valid_size(self, index: int) -> tuple[int, int]:
        return self.valid_sizes[index] if self.valid_sizes is not None else self.valid_hw

    def index_of(self, image_id: str) -> int:
        if not self._index:
            self._index.update((iid, i) for i, iid in enumerate(self.image_ids))
        return self._index[image_id]

    def target(self, index: int) -> torch.Tensor:
        """Image ``index``'s label map at its original size (uint8, IGNORE_INDEX void)."""
        if self.targets is not None:
            return self.targets[index]
        h, w = self.valid_size(index)
        return self.labels[index][:h, :w]

    def in_memory(self) -> PreparedSplit:
        """The same split with its arrays read into memory (small pools, slow disks)."""
        if not self.on_disk:
            return self
        targets = self.targets
        if isinstance(targets, RaggedArray):
            targets = [targets[i] for i in range(len(targets))]
        return PreparedSplit(self.images.to_tensor(), self.labels.to_tensor(),  # type: ignore[union-attr]
                             self.valid_hw, self.orig_sizes, self.image_ids, self.info,
                             self.valid_sizes, targets, self.cache_path)


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


def _cache_key(source: SegmentationSource, size: tuple[int, int] | None, pad_multiple: int,
               resize: str) -> str:
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
        "resize": resize,
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


def _common_size(source: SegmentationSource, sizes: Sequence[tuple[int, int]]
                 ) -> tuple[int, int]:
    """The one size of every image in the split, or a DataError asking for ``size``."""
    first = sizes[0]
    for i, hw in enumerate(sizes):
        if hw != first:
            raise DataError(
                f"images of {source.info.name} differ in size ({source.image_path(0)} is "
                f"{first[1]}x{first[0]}, {source.image_path(i)} is {hw[1]}x{hw[0]}, WxH): "
                "a working size must be set (size=(H, W)) to prepare this split"
            )
    return first


def _pad_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 1 else n


def fit_size(orig: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The largest (H, W) with ``orig``'s aspect ratio inside ``box`` (each side >= 1)."""
    (h0, w0), (h, w) = orig, box
    scale = min(h / h0, w / w0)
    return max(1, min(h, round(h0 * scale))), max(1, min(w, round(w0 * scale)))


@dataclass(frozen=True)
class Geometry:
    """How a run's model sees an image (``data.size``, ``data.resize``, ``data.pad_multiple``):
    the one rule that preparing a split and ``balseg predict`` both apply."""

    size: tuple[int, int] | None
    resize: str = "stretch"
    pad_multiple: int = 1

    @classmethod
    def of(cls, data: DataConfig) -> Geometry:
        """From a ``DataConfig`` section."""
        size = None if data.size is None else (int(data.size[0]), int(data.size[1]))
        return cls(size, data.resize, int(data.pad_multiple))

    def working(self, orig: tuple[int, int]) -> tuple[int, int]:
        """The valid (H, W) of an image of original size ``orig``."""
        if self.size is None:
            return orig
        return fit_size(orig, self.size) if self.resize == "fit" else self.size

    def padded(self, valid: tuple[int, int]) -> tuple[int, int]:
        """The padded (Hp, Wp) the model runs at, for an image of valid size ``valid``."""
        box = valid if self.size is None else self.size
        return _pad_to(box[0], self.pad_multiple), _pad_to(box[1], self.pad_multiple)


@dataclass(frozen=True)
class _SplitGeometry:
    valid_hw: tuple[int, int]
    padded: tuple[int, int]
    orig_sizes: list[tuple[int, int]]
    valid_sizes: list[tuple[int, int]]
    resized: bool


def _geometry(source: SegmentationSource, size: tuple[int, int] | None, pad_multiple: int,
              resize: str) -> _SplitGeometry:
    """Every image's original and working size, from the file headers (nothing decoded)."""
    geo = Geometry(size, resize, pad_multiple)
    orig = [_header_size(source.image_path(i)) for i in range(len(source))]
    hw = _common_size(source, orig) if size is None else size
    valid = [geo.working(o) for o in orig]
    return _SplitGeometry(hw, geo.padded(hw), orig, valid,
                          any(v != o for v, o in zip(valid, orig, strict=True)))


def cache_bytes(n_images: int, padded: tuple[int, int], orig_pixels: int, resized: bool
                ) -> int:
    """Disk a prepared split needs: 4 bytes per padded working pixel (RGB + label), plus 1
    per original pixel when its label maps are resized (the original-size targets)."""
    hp, wp = padded
    total = npy_nbytes((n_images, 3, hp, wp), np.uint8) + npy_nbytes((n_images, hp, wp),
                                                                       np.uint8)
    return total + (npy_nbytes((orig_pixels,), np.uint8) if resized else 0)


def _decode(source: SegmentationSource, i: int, geo: _SplitGeometry
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(padded image [3,Hp,Wp], padded label [Hp,Wp], original label) of image i."""
    image, label = source.load(i)
    h0w0 = (int(image.shape[0]), int(image.shape[1]))
    if h0w0 != geo.orig_sizes[i]:
        raise DataError(f"{source.image_path(i)}: its header says {geo.orig_sizes[i][1]}x"
                        f"{geo.orig_sizes[i][0]} but it decodes to {h0w0[1]}x{h0w0[0]} (WxH)")
    h, w = geo.valid_sizes[i]
    work_img, work_lab = image, label
    if (h, w) != h0w0:
        work_img, work_lab = resize_image(image, (h, w)), resize_nearest(label, (h, w))
    hp, wp = geo.padded
    img = np.zeros((3, hp, wp), np.uint8)
    lab = np.full((hp, wp), IGNORE_INDEX, np.uint8)
    img[:, :h, :w] = work_img.transpose(2, 0, 1)
    lab[:h, :w] = work_lab
    return img, lab, label


def _run_parallel(fn: Any, n: int, progress: bool, desc: str) -> None:
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(fn, range(n))
        if progress:
            from tqdm import tqdm

            jobs = tqdm(jobs, total=n, desc=desc, unit="img")
        for _ in jobs:  # re-raises the first worker error, naming its file
            pass


def prepare_split(
    source: SegmentationSource,
    *,
    size: tuple[int, int] | None = None,
    pad_multiple: int = 16,
    cache_dir: Path | None = None,
    progress: bool = False,
    resize: str = "stretch",
    in_memory: bool = False,
) -> PreparedSplit:
    """Decode, resize to ``size`` (H, W) if given, pad to ``pad_multiple``.

    With ``cache_dir`` the split lives on disk (built once, then reused; see the module
    doc) and is read per batch, unless ``in_memory`` loads it whole; without one it is
    decoded into memory.
    """
    if len(source) == 0:
        raise DataError(f"{source.info.name}: the split is empty, nothing to prepare")
    if pad_multiple < 1:
        raise ValueError(f"pad_multiple must be >= 1, got {pad_multiple}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if size is not None:
        size = (int(size[0]), int(size[1]))
        if min(size) < 1:
            raise ValueError(f"size must be positive, got {size}")
    if cache_dir is None:
        return _prepare_in_memory(source, size, pad_multiple, resize, progress)
    key = _cache_key(source, size, pad_multiple, resize)
    split = getattr(source, "split", "split")
    folder = Path(cache_dir) / f"{source.info.name}-{split}-{key}"
    prepared = _open_cache(folder, key, source.info)
    if prepared is None:
        _build_cache(folder, key, source, size, pad_multiple, resize, progress)
        prepared = _open_cache(folder, key, source.info)
        if prepared is None:  # pragma: no cover - just written and checked
            raise RuntimeError(f"{folder}: the cache just written does not read back")
    return prepared.in_memory() if in_memory else prepared


def _prepare_in_memory(source: SegmentationSource, size: tuple[int, int] | None,
                       pad_multiple: int, resize: str, progress: bool) -> PreparedSplit:
    geo = _geometry(source, size, pad_multiple, resize)
    n, (hp, wp) = len(source), geo.padded
    images = np.zeros((n, 3, hp, wp), np.uint8)
    labels = np.full((n, hp, wp), IGNORE_INDEX, np.uint8)
    targets: list[torch.Tensor] = [torch.empty(0, dtype=torch.uint8)] * n

    def work(i: int) -> None:
        images[i], labels[i], orig = _decode(source, i, geo)
        targets[i] = torch.from_numpy(orig)

    _run_parallel(work, n, progress, f"decoding {source.info.name}")
    return PreparedSplit(
        images=torch.from_numpy(images), labels=torch.from_numpy(labels),
        valid_hw=geo.valid_hw, orig_sizes=geo.orig_sizes,
        image_ids=[source.image_id(i) for i in range(n)], info=source.info,
        valid_sizes=None if resize == "stretch" else geo.valid_sizes,
        targets=targets if geo.resized else None,
    )


# -- the on-disk cache ------------------------------------------------------------------------
_ARRAYS = ("images.npy", "labels.npy", "targets.npy")
_META = "meta.json"


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _discard(folder: Path, why: str) -> None:
    warnings.warn(f"prepared-data cache {folder} is unusable ({why}): deleting and rebuilding"
                  " it", BalsegWarning, stacklevel=3)
    shutil.rmtree(folder, ignore_errors=True)


def _open_cache(folder: Path, key: str, info: DatasetInfo) -> PreparedSplit | None:
    """The cached split, or None when absent; a damaged one is deleted (with a warning)."""
    if not folder.exists():
        return None
    try:
        meta = json.loads((folder / _META).read_text(encoding="utf-8"))
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
            _discard(folder, f"format {meta.get('format')}, expected {CACHE_FORMAT}")
            return None
        for name, stamp in meta["files"].items():
            if _stamp(folder / name) != list(stamp):
                _discard(folder, f"{name} was changed or truncated after it was written")
                return None
        n = len(meta["image_ids"])
        images, labels = DiskArray(folder / "images.npy"), DiskArray(folder / "labels.npy")
        hp, wp = meta["padded"]
        if tuple(images.shape) != (n, 3, hp, wp) or tuple(labels.shape) != (n, hp, wp):
            _discard(folder, "array shapes differ from meta.json")
            return None
        orig = [(int(a), int(b)) for a, b in meta["orig_sizes"]]
        targets = (RaggedArray(folder / "targets.npy", orig)
                   if (folder / "targets.npy").exists() else None)
    except (OSError, ValueError, KeyError, TypeError) as err:
        _discard(folder, str(err))
        return None
    valid = [(int(a), int(b)) for a, b in meta["valid_sizes"]]
    return PreparedSplit(
        images=images, labels=labels, valid_hw=tuple(meta["valid_hw"]),  # type: ignore[arg-type]
        orig_sizes=orig, image_ids=list(meta["image_ids"]), info=info,
        valid_sizes=None if meta["resize"] == "stretch" else valid,
        targets=targets, cache_path=folder,
    )


def _remove_stale_builds(parent: Path, name: str) -> None:
    """Temp folders of builds whose process is gone (killed mid-way)."""
    for tmp in parent.glob(f".{name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)
            continue  # still building
        except (ValueError, IndexError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        shutil.rmtree(tmp, ignore_errors=True)


def _build_cache(folder: Path, key: str, source: SegmentationSource,
                 size: tuple[int, int] | None, pad_multiple: int, resize: str,
                 progress: bool) -> None:
    geo = _geometry(source, size, pad_multiple, resize)
    n, (hp, wp) = len(source), geo.padded
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the prepared-data cache folder {parent}: {err}; set"
                        " BALSEG_CACHE or data.cache_dir to a writable folder") from None
    _remove_stale_builds(parent, folder.name)
    orig_pixels = sum(h * w for h, w in geo.orig_sizes)
    need = cache_bytes(n, geo.padded, orig_pixels, geo.resized)
    free = shutil.disk_usage(parent).free
    if free < need + (64 << 20):
        raise DiskFullError(_space_message(parent, need, free, source))
    tmp = parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    started = time.perf_counter()
    try:
        starts = np.concatenate([[0], np.cumsum([h * w for h, w in geo.orig_sizes])])
        with NpyWriter(tmp / "images.npy", (n, 3, hp, wp), np.uint8) as imgs, \
                NpyWriter(tmp / "labels.npy", (n, hp, wp), np.uint8) as labs:
            targets = (NpyWriter(tmp / "targets.npy", (orig_pixels,), np.uint8)
                       if geo.resized else None)
            try:
                def work(i: int) -> None:
                    img, lab, orig = _decode(source, i, geo)
                    imgs.write(i, img)
                    labs.write(i, lab)
                    if targets is not None:
                        flat = np.ascontiguousarray(orig).reshape(-1)
                        targets.write_flat(int(starts[i]), flat)

                _run_parallel(work, n, progress, f"preparing {source.info.name}"
                                                 f" {getattr(source, 'split', '')}")
            finally:
                if targets is not None:
                    targets.close()
        meta = {
            "format": CACHE_FORMAT, "key": key, "dataset": source.info.name,
            "split": getattr(source, "split", None), "valid_hw": list(geo.valid_hw),
            "padded": [hp, wp], "resize": resize,
            "orig_sizes": [list(s) for s in geo.orig_sizes],
            "valid_sizes": [list(s) for s in geo.valid_sizes],
            "image_ids": [source.image_id(i) for i in range(n)],
            "build_seconds": round(time.perf_counter() - started, 3),
            "files": {name: _stamp(tmp / name) for name in _ARRAYS if (tmp / name).exists()},
        }
        (tmp / _META).write_text(json.dumps(meta))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.exists():  # a real failure, not another process winning the race
                raise
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(_space_message(parent, need, shutil.disk_usage(parent).free,
                                               source)) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _space_message(parent: Path, need: int, free: int, source: SegmentationSource) -> str:
    return (f"not enough disk in {parent} for the prepared {source.info.name} split"
            f" '{getattr(source, 'split', '')}': it needs {need / 1e9:.2f} GB, {free / 1e9:.2f}"
            " GB are free; free some space or set BALSEG_CACHE (or data.cache_dir) to a larger"
            " disk (nothing was left behind)")
