"""Dataset adapters, the synthetic default dataset, in-memory preparation and augmentation.

Every adapter yields labels as ``0..C-1`` with ``IGNORE_INDEX`` (255) for void, and raises
``DataError`` naming the file for any bad input (see ``docs/architecture.md``).
"""

import importlib
from typing import TYPE_CHECKING, Any

from .base import IGNORE_INDEX, DataError, DatasetInfo, PairSource, SegmentationSource

# torch-heavy submodules load on first use, so that torch-free users of the package (the
# label store, the annotation server) start in a fraction of a second.
_LAZY = {
    "IMAGENET_MEAN": "augment", "IMAGENET_STD": "augment", "SegAugment": "augment",
    "normalize": "augment", "CITYSCAPES_LABELS": "meta", "CityscapesLabel": "meta",
    "PreparedSplit": "prepare", "prepare_split": "prepare", "resize_image": "prepare",
    "resize_nearest": "prepare", "to_original_coords": "prepare", "to_work_coords": "prepare",
    "DATASETS": "registry", "dataset_info": "registry", "open_source": "registry",
    "SYNTHETIC_INFO": "synthetic", "cache_base": "synthetic", "default_root": "synthetic",
    "ensure_synthetic": "synthetic",
}

if TYPE_CHECKING:
    from .augment import IMAGENET_MEAN, IMAGENET_STD, SegAugment, normalize
    from .meta import CITYSCAPES_LABELS, CityscapesLabel
    from .prepare import (
        PreparedSplit,
        prepare_split,
        resize_image,
        resize_nearest,
        to_original_coords,
        to_work_coords,
    )
    from .registry import DATASETS, dataset_info, open_source
    from .synthetic import SYNTHETIC_INFO, cache_base, default_root, ensure_synthetic


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CITYSCAPES_LABELS",
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SYNTHETIC_INFO",
    "CityscapesLabel",
    "DataError",
    "DatasetInfo",
    "PairSource",
    "PreparedSplit",
    "SegAugment",
    "SegmentationSource",
    "cache_base",
    "dataset_info",
    "default_root",
    "ensure_synthetic",
    "normalize",
    "open_source",
    "prepare_split",
    "resize_image",
    "resize_nearest",
    "to_original_coords",
    "to_work_coords",
]
