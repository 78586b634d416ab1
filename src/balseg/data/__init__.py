"""Dataset adapters, the synthetic default dataset, in-memory preparation and augmentation.

Every adapter yields labels as ``0..C-1`` with ``IGNORE_INDEX`` (255) for void, and raises
``DataError`` naming the file for any bad input (see ``docs/architecture.md``).
"""

from .augment import IMAGENET_MEAN, IMAGENET_STD, SegAugment, normalize
from .base import IGNORE_INDEX, DataError, DatasetInfo, PairSource, SegmentationSource
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
