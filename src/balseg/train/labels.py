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


def as_training_labels(labels: object) -> SparseLabels | DenseLabels:
    if isinstance(labels, (SparseLabels, DenseLabels)):
        return labels
    return DenseLabels(labels)
