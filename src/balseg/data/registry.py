"""One entry point from a dataset name (as written in a config) to a source."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .adapters import (
    open_ade20k,
    open_camvid,
    open_cityscapes,
    open_folder,
    open_voc2012,
    read_classes_file,
)
from .base import DataError, DatasetInfo, SegmentationSource
from .meta import ADE20K_INFO, CAMVID_INFO, CITYSCAPES_INFO, VOC_INFO
from .synthetic import SYNTHETIC_INFO, open_synthetic

DATASETS: tuple[str, ...] = ("camvid", "cityscapes", "voc2012", "ade20k", "folder", "synthetic")

_READERS: dict[str, Callable[..., SegmentationSource]] = {
    "camvid": open_camvid,
    "cityscapes": open_cityscapes,
    "voc2012": open_voc2012,
    "ade20k": open_ade20k,
    "folder": open_folder,
}
_STATIC_INFO = {
    "camvid": CAMVID_INFO,
    "cityscapes": CITYSCAPES_INFO,
    "voc2012": VOC_INFO,
    "ade20k": ADE20K_INFO,
    "synthetic": SYNTHETIC_INFO,
}


def _check_name(dataset: str) -> None:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASETS)}")


def open_source(
    dataset: str, root: str | Path | None, split: str, **options: object
) -> SegmentationSource:
    """Open one split of ``dataset`` lying at ``root`` in that benchmark's own layout.

    ``synthetic`` generates its data on first use (``root`` None: the cache folder; options
    ``seed``, ``num_train``, ``num_val``, ``size``); ``folder`` accepts ``require_masks``.
    The other datasets take no options. Missing folders raise a DataError naming them.
    """
    _check_name(dataset)
    if dataset == "synthetic":
        return open_synthetic(None if root is None else Path(root), split, **options)
    if root is None:
        raise DataError(f"dataset {dataset!r} needs a root folder (got None)")
    allowed = {"require_masks"} if dataset == "folder" else set()
    unknown = set(options) - allowed
    if unknown:
        raise DataError(
            f"data.options: unknown options for {dataset!r}: {sorted(unknown)}; valid:"
            f" {sorted(allowed) or 'none'}"
        )
    return _READERS[dataset](Path(root).expanduser(), split, **options)


def dataset_info(dataset: str, root: str | Path | None = None) -> DatasetInfo:
    """Class names and palette of ``dataset`` without reading images (for config checks).

    Only ``folder`` reads anything: its ``<root>/classes.txt``.
    """
    _check_name(dataset)
    if dataset == "folder":
        if root is None:
            raise DataError("dataset 'folder' needs its root to read <root>/classes.txt")
        return read_classes_file(Path(root).expanduser() / "classes.txt")
    return _STATIC_INFO[dataset]
