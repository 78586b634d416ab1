"""Regions of pool images (superpixels): one click labels a region (``data.regions``).

``region_maps`` computes SLIC superpixels (scikit-image) of every prepared image once, at
working resolution over its valid area, and keeps them beside the prepared split in the
cache (``<prepared>/regions-slic-<size>-<compactness>.npy``, ``[N, Hp, Wp]`` int32, -1 in
the padding), read per image like the images themselves. The file belongs to the prepared
folder, whose key covers every input file, so a changed image rebuilds both; it is built
under a temporary name and renamed into place. A split prepared in memory gets its regions
in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from balseg.data.diskarray import DiskArray, NpyWriter

REGION_METHODS = ("slic",)


def region_file(cache_path: Path, method: str, size: int, compactness: float) -> Path:
    return cache_path / f"regions-{method}-{size}-{compactness:g}.npy"


def slic_regions(image: np.ndarray, size: int, compactness: float) -> np.ndarray:
    """SLIC labels ``[h, w]`` int32 (0..R-1, connected) of an HxWx3 uint8 image, about
    ``size`` pixels per region."""
    from skimage.segmentation import slic

    h, w = image.shape[:2]
    n = max(1, (h * w) // max(size, 1))
    labels = slic(image, n_segments=n, compactness=compactness, start_label=0,
                  channel_axis=-1, enforce_connectivity=True)
    _, dense = np.unique(labels, return_inverse=True)  # consecutive ids
    return dense.reshape(h, w).astype(np.int32)


def _one(prepared, i: int, size: int, compactness: float) -> np.ndarray:
    h, w = prepared.valid_size(i)
    hp, wp = prepared.images.shape[-2:]
    image = prepared.images[i][:, :h, :w].permute(1, 2, 0).numpy()
    out = np.full((hp, wp), -1, dtype=np.int32)
    out[:h, :w] = slic_regions(np.ascontiguousarray(image), size, compactness)
    return out


def region_maps(prepared, *, method: str = "slic", size: int = 100,
                compactness: float = 10.0, progress: bool = False) -> DiskArray | torch.Tensor:
    """Every image's region map, ``[N, Hp, Wp]`` int32 (-1 = padding), computed once."""
    if method not in REGION_METHODS:
        raise ValueError(f"unknown region method {method!r}; one of {REGION_METHODS}")
    n = len(prepared)
    hp, wp = prepared.images.shape[-2:]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"regions ({method})", unit="img", leave=False)
    if prepared.cache_path is None:
        maps = torch.empty((n, hp, wp), dtype=torch.int32)
        for i in range(n):
            maps[i] = torch.from_numpy(_one(prepared, i, size, compactness))
            if bar is not None:
                bar.update()
        return maps
    path = region_file(Path(prepared.cache_path), method, size, compactness)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with NpyWriter(tmp, (n, hp, wp), np.int32) as writer:
                for i in range(n):
                    writer.write(i, _one(prepared, i, size, compactness))
                    if bar is not None:
                        bar.update()
            os.replace(tmp, path)  # another process may have won: same content
        finally:
            tmp.unlink(missing_ok=True)
    if bar is not None:
        bar.close()
    return DiskArray(path)


def region_scores(regions: torch.Tensor, scores: torch.Tensor, how: str = "mean"
                  ) -> torch.Tensor:
    """Per-region aggregate ``[R]`` (float32) of pixel ``scores`` over ``regions`` (same
    shape, ids 0..R-1; negative ids are ignored): the mean or the max."""
    keep = regions >= 0
    ids, values = regions[keep].long(), scores[keep].float()
    r = int(ids.max()) + 1 if ids.numel() else 0
    if how == "max":
        out = torch.full((r,), float("-inf"))
        return out.scatter_reduce(0, ids, values, reduce="amax")
    sums = torch.zeros(r, dtype=torch.float64).index_add_(0, ids, values.double())
    counts = torch.bincount(ids, minlength=r).clamp(min=1)
    return (sums / counts).float()


def best_pixel(regions: torch.Tensor, scores: torch.Tensor, region: int) -> tuple[int, int]:
    """(y, x) of the highest score inside ``region`` (the lowest flat index on ties)."""
    masked = torch.where(regions == region, scores.float(), torch.tensor(float("-inf")))
    flat = int(torch.argmax(masked))
    return flat // regions.shape[1], flat % regions.shape[1]


def dominant_class(labels: np.ndarray, mask: np.ndarray, num_classes: int, purity: float,
                   ignore_index: int = 255) -> int | None:
    """The class holding at least ``purity`` of the region's pixels (void pixels count in
    the region's size), or None ('unknown')."""
    values = labels[mask]
    if values.size == 0:
        return None
    counts = np.bincount(values[values != ignore_index].astype(np.int64),
                         minlength=num_classes)
    if counts.sum() == 0:
        return None
    c = int(counts.argmax())
    return c if counts[c] >= purity * values.size else None
