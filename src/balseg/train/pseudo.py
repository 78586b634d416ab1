"""Pseudo-labels: what the pool pass already knows about the pixels nobody labelled.

Each cycle's MC pass over the pool (``balseg.mc.iter_pool_scores``) gives every pixel the
argmax of the MC mean and that class's mean probability. With ``train.unlabeled: pseudo``
the loop writes both, per image, into ``pseudo/cycle_XXX.npy`` of the run directory
(``[N, 2, H, W]`` uint8 at working resolution: class, confidence x 255; 1 + 1 bytes per
pixel on disk, never in RAM) and a per-class confidence histogram beside it. The next
cycle trains on the answers plus the pixels whose confidence clears
``train.unlabeled_threshold`` (and, with ``train.unlabeled_class_top``, the most confident
share of each predicted class, so that rare classes keep theirs).

Pseudo-labels are never answers: they are not in the label store, never shown, never
counted in the budget, and every queried pixel (answered with a class, 'unknown' or in
conflict) keeps what its answers say. In a training map a pseudo-labelled pixel of class
``c`` is ``PSEUDO_OFFSET + c`` (answers are ``0..C-1``, void ``IGNORE_INDEX``), so that one
map goes through the augmentation and the trainer weighs the two losses apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from balseg.data.base import IGNORE_INDEX
from balseg.data.diskarray import DiskArray, NpyWriter
from balseg.train.labels import RegionLabels, SparseLabels, agreement

PSEUDO_OFFSET = 256
"""A pseudo-label of class c is PSEUDO_OFFSET + c in a training map (int64)."""
LEVELS = 256  # confidence quantised to uint8


def quantize(confidence: torch.Tensor) -> torch.Tensor:
    """Confidence in [0, 1] -> uint8 level (round(255 x p))."""
    return (confidence.clamp(0, 1) * (LEVELS - 1)).round().to(torch.uint8)


class PseudoWriter:
    """Writes one cycle's pseudo-labels image by image, then publishes them atomically
    (the array and its histogram appear together, or neither)."""

    def __init__(self, paths: tuple[Path, Path], num_images: int, hw: tuple[int, int],
                 num_classes: int) -> None:
        self.array_path, self.hist_path = paths
        self.array_path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.array_path.with_name(f".{self.array_path.name}.{os.getpid()}.tmp")
        self.writer = NpyWriter(self.tmp, (num_images, 2, *hw), np.uint8)
        self.hw = hw
        self.num_classes = num_classes
        self.hist = np.zeros((num_classes, LEVELS), dtype=np.int64)
        self.written = 0

    def write(self, index: int, predicted: torch.Tensor, confidence: torch.Tensor) -> None:
        """``predicted``/``confidence`` ``[h, w]`` over the image's valid area; the rest of
        the working map (padding) gets no label."""
        h, w = predicted.shape
        item = np.zeros((2, *self.hw), dtype=np.uint8)
        item[0] = IGNORE_INDEX
        item[0, :h, :w] = predicted.to(torch.uint8).numpy()
        item[1, :h, :w] = quantize(confidence).numpy()
        self.writer.write(index, item)
        flat = item[0, :h, :w].astype(np.int64) * LEVELS + item[1, :h, :w]
        self.hist += np.bincount(flat.ravel(), minlength=self.num_classes * LEVELS).reshape(
            self.num_classes, LEVELS)
        self.written += 1

    def commit(self) -> None:
        from balseg.fsutil import atomic_write_bytes

        self.writer.close()
        os.replace(self.tmp, self.array_path)
        atomic_write_bytes(self.hist_path, json.dumps({"histogram": self.hist.tolist()}
                                                      ).encode())

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


def read_histogram(path: Path) -> np.ndarray:
    return np.asarray(json.loads(path.read_text())["histogram"], dtype=np.int64)


def class_levels(hist: np.ndarray, threshold: float, class_top: float | None) -> np.ndarray:
    """The lowest confidence level each predicted class keeps (``[C]`` int): at least
    ``threshold``, and with ``class_top`` about that share of the class's pixels, the most
    confident first (rounded up to a whole level)."""
    floor = int(np.ceil(threshold * (LEVELS - 1) - 1e-9))
    levels = np.full(hist.shape[0], floor, dtype=np.int64)
    if class_top is not None:
        for c, row in enumerate(hist):
            total = int(row.sum())
            if total == 0:
                continue
            from_top = np.cumsum(row[::-1])[::-1]  # from_top[l] = pixels with level >= l
            # the highest level that keeps at least the share: the level at the boundary is
            # kept whole (ties at full confidence are common), so the share rounds up
            enough = np.nonzero(from_top >= class_top * total)[0]
            levels[c] = max(floor, int(enough[-1]))
    return levels


@dataclass
class PseudoLabels:
    """Training labels: the answers (``SparseLabels``), every queried pixel as it was
    answered, and the kept pseudo-labels of the rest (``PSEUDO_OFFSET + class``)."""

    answers: SparseLabels | RegionLabels
    pseudo: DiskArray  # [N, 2, H, W] uint8
    levels: np.ndarray  # [C] lowest kept confidence level per class
    queried: Mapping[int, torch.Tensor]  # image -> [n, 2] working yx of every query

    @classmethod
    def open(cls, answers: SparseLabels | RegionLabels, paths: tuple[Path, Path], *,
             threshold: float, class_top: float | None, queried: Mapping[int, torch.Tensor]
             ) -> PseudoLabels:
        hist = read_histogram(paths[1])
        return cls(answers, DiskArray(paths[0]), class_levels(hist, threshold, class_top),
                   queried)

    def labeled_indices(self) -> np.ndarray:
        return np.arange(len(self.pseudo), dtype=np.int64)

    def kept(self, index: int) -> torch.Tensor:
        """``[H, W]`` int64: the kept pseudo-label class, or -1."""
        item = torch.from_numpy(self.pseudo.read(int(index)).astype(np.int64))
        cls_map, level = item[0], item[1]
        valid = cls_map != IGNORE_INDEX
        lv = torch.from_numpy(self.levels)
        need = torch.full_like(cls_map, LEVELS)
        need[valid] = lv[cls_map[valid]]
        return torch.where(valid & (level >= need), cls_map, torch.full_like(cls_map, -1))

    def __getitem__(self, index: int) -> torch.Tensor:
        kept = self.kept(index)
        out = torch.where(kept >= 0, kept + PSEUDO_OFFSET, torch.full_like(kept, IGNORE_INDEX))
        yx = self.queried.get(int(index))
        if yx is not None and len(yx):  # a queried pixel is what its answers say, never pseudo
            out[yx[:, 0], yx[:, 1]] = IGNORE_INDEX
        answered = self.answers[index]
        mask = answered != IGNORE_INDEX
        out[mask] = answered[mask].long()
        return out

    def accuracy(self, targets: object, num_classes: int) -> dict[str, object]:
        """How the kept pseudo-labels agree with the pool's masks where they exist
        (``targets[i]``: working-resolution labels, IGNORE_INDEX where unknown), as
        ``pseudo_*`` metrics (``balseg.train.labels.agreement``)."""
        found = agreement(self, targets, len(self.pseudo), num_classes, offset=PSEUDO_OFFSET)
        return {f"pseudo_{k}": v for k, v in found.items()}
