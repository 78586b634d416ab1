"""Shared contract of every dataset adapter.

Adapters normalise each benchmark's own label encoding to one convention so the rest of
balseg never special-cases a dataset: class ids are ``0..C-1`` and every pixel that must
not be trained on, scored or evaluated (void, unlabeled, borders) is ``IGNORE_INDEX``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

IGNORE_INDEX = 255


class DataError(ValueError):
    """Bad input on disk: the message always names the offending file, field or value."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]
    palette: np.ndarray = field(repr=False)  # (C, 3) uint8, one RGB colour per class
    ignore_index: int = IGNORE_INDEX

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

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image HxWx3 uint8 RGB, label HxW uint8 with ids 0..C-1 or IGNORE_INDEX)."""
        ...
