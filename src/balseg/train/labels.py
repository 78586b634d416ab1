"""Training labels of a pool without a pool-sized array: the answered pixels per image.

An active-learning pool has a few labeled pixels per image; a dense ``[N, H, W]`` map of
them (1 byte per pool pixel) would make memory grow with the pool. ``SparseLabels`` keeps
only the points and builds one image's map when a batch needs it. ``DenseLabels`` wraps a
full label array (the supervised reference, tests) behind the same two methods.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from balseg.data.base import IGNORE_INDEX


class SparseLabels:
    """``points[i] = (yx [n, 2] long, classes [n] uint8)`` in working coordinates."""

    def __init__(self, shape: tuple[int, int], points: Mapping[int, tuple[torch.Tensor,
                                                                          torch.Tensor]]):
        self.shape = (int(shape[0]), int(shape[1]))
        self.points = {int(i): (yx.long(), c.to(torch.uint8)) for i, (yx, c) in points.items()
                       if len(c)}

    def labeled_indices(self) -> np.ndarray:
        return np.array(sorted(self.points), dtype=np.int64)

    def num_labeled(self) -> int:
        return sum(len(c) for _, c in self.points.values())

    def __getitem__(self, index: int) -> torch.Tensor:
        out = torch.full(self.shape, IGNORE_INDEX, dtype=torch.uint8)
        found = self.points.get(int(index))
        if found is not None:
            yx, classes = found
            out[yx[:, 0], yx[:, 1]] = classes
        return out


class DenseLabels:
    """A full label array (tensor or ``DiskArray`` ``[N, H, W]``) as training labels."""

    def __init__(self, labels: torch.Tensor | object) -> None:
        self.labels = labels
        self._labeled: np.ndarray | None = None

    def labeled_indices(self) -> np.ndarray:
        if self._labeled is None:
            keep = [i for i in range(len(self.labels))  # type: ignore[arg-type]
                    if bool((self.labels[i] != IGNORE_INDEX).any())]  # type: ignore[index]
            self._labeled = np.array(keep, dtype=np.int64)
        return self._labeled

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.labels[int(index)]  # type: ignore[index]


class RegionLabels:
    """Answers that fill their region (``data.regions``): every pixel of a region whose
    answered points agree on a class gets that class; a region whose answers disagree keeps
    only its answered points. Derived from the answers and the region maps per image, so an
    answer is stored once, never per pixel."""

    def __init__(self, answers: SparseLabels, regions: torch.Tensor | object) -> None:
        self.answers = answers
        self.regions = regions  # [N, H, W] int32, -1 = padding (tensor or DiskArray)
        self.shape = answers.shape

    def labeled_indices(self) -> np.ndarray:
        return self.answers.labeled_indices()

    def num_labeled(self) -> int:
        return self.answers.num_labeled()

    def __getitem__(self, index: int) -> torch.Tensor:
        found = self.answers.points.get(int(index))
        out = torch.full(self.shape, IGNORE_INDEX, dtype=torch.uint8)
        if found is None:
            return out
        yx, classes = found
        reg = self.regions[int(index)].long()  # type: ignore[index]
        ids = reg[yx[:, 0], yx[:, 1]]
        lut = torch.full((int(reg.max()) + 2,), -1, dtype=torch.long)  # -1: none, -2: clash
        for r, c in zip(ids.tolist(), classes.tolist(), strict=True):
            if r >= 0:
                lut[r] = c if lut[r] in (-1, c) else -2
        filled = lut[reg.clamp(min=0)]
        keep = (reg >= 0) & (filled >= 0)
        out[keep] = filled[keep].to(torch.uint8)
        out[yx[:, 0], yx[:, 1]] = classes  # an answered point is its own answer
        return out


def agreement(maps: object, targets: object, n: int, num_classes: int,
              offset: int = 0) -> dict[str, object]:
    """How the training labels ``maps[i]`` (classes ``offset + c``; anything else is not
    counted) agree with ``targets[i]`` (IGNORE_INDEX = no mask there): labelled pixels per
    image, overall and per-class accuracy (of pixels labelled as that class), counts."""
    kept = np.zeros(num_classes, dtype=np.int64)
    right = np.zeros(num_classes, dtype=np.int64)
    checked = np.zeros(num_classes, dtype=np.int64)
    for i in range(n):
        labels = maps[i].long()  # type: ignore[index]
        mine = (labels >= offset) & (labels < offset + num_classes)
        cls_map = (labels[mine] - offset).numpy()
        kept += np.bincount(cls_map, minlength=num_classes)[:num_classes]
        truth = targets[i][mine].long().numpy()  # type: ignore[index]
        known = truth != IGNORE_INDEX
        checked += np.bincount(cls_map[known], minlength=num_classes)[:num_classes]
        right += np.bincount(cls_map[known & (truth == cls_map)],
                             minlength=num_classes)[:num_classes]
    total = int(checked.sum())
    return {
        "pixels_per_image": float(kept.sum() / max(n, 1)),
        "accuracy": float(right.sum() / total) if total else None,
        "per_class_accuracy": [None if c == 0 else float(r / c)
                               for r, c in zip(right, checked, strict=True)],
        "per_class_pixels": [int(v) for v in kept],
    }


def as_training_labels(labels: object) -> SparseLabels | DenseLabels | RegionLabels:
    if isinstance(labels, (SparseLabels, DenseLabels, RegionLabels)):
        return labels
    return DenseLabels(labels)
