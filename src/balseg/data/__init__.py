"""Dataset adapters, the synthetic default dataset, in-memory preparation and augmentation.

Every adapter yields labels as ``0..C-1`` with ``IGNORE_INDEX`` (255) for void, and raises
``DataError`` naming the file for any bad input (see ``docs/architecture.md``).
"""

from typing import TYPE_CHECKING

from balseg._lazy import lazy_getattr

from .base import IGNORE_INDEX, DataError, DatasetInfo, PairSource, SegmentationSource

# torch-heavy submodules load on first use, so that torch-free users of the package (the
# label store, the annotation server) start in a fraction of a second.
_LAZY = {
    "IMAGENET_MEAN": "augment", "IMAGENET_STD": "augment", "SegAugment": "augment",
    "normalize": "augment", "model_input": "augment", "CITYSCAPES_LABELS": "meta",
    "CityscapesLabel": "meta",
    "PreparedSplit": "prepare", "prepare_split": "prepare", "resize_image": "prepare",
    "resize_nearest": "prepare", "to_original_coords": "prepare", "to_work_coords": "prepare",
    "DATASETS": "registry", "dataset_info": "registry", "open_source": "registry",
    "SYNTHETIC_INFO": "synthetic", "default_root": "synthetic", "ensure_synthetic": "synthetic",
    "cache_base": "paths", "prepared_dir": "paths", "DiskArray": "diskarray",
    "RESIZE_MODES": "prepare", "cache_bytes": "prepare",
}

if TYPE_CHECKING:
    from .augment import IMAGENET_MEAN, IMAGENET_STD, SegAugment, model_input, normalize
    from .diskarray import DiskArray
    from .meta import CITYSCAPES_LABELS, CityscapesLabel
    from .paths import cache_base, prepared_dir
    from .prepare import (
        RESIZE_MODES,
        PreparedSplit,
        cache_bytes,
        prepare_split,
        resize_image,
        resize_nearest,
        to_original_coords,
        to_work_coords,
    )
    from .registry import DATASETS, dataset_info, open_source
    from .synthetic import SYNTHETIC_INFO, default_root, ensure_synthetic


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "CITYSCAPES_LABELS",
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESIZE_MODES",
    "SYNTHETIC_INFO",
    "CityscapesLabel",
    "DataError",
    "DatasetInfo",
    "DiskArray",
    "PairSource",
    "PreparedSplit",
    "SegAugment",
    "SegmentationSource",
    "cache_base",
    "cache_bytes",
    "dataset_info",
    "default_root",
    "ensure_synthetic",
    "model_input",
    "normalize",
    "open_source",
    "prepare_split",
    "prepared_dir",
    "resize_image",
    "resize_nearest",
    "to_original_coords",
    "to_work_coords",
]
