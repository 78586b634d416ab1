"""Evaluation: a confusion matrix over non-void pixels, then IoU per class and mIoU.

Predictions are upsampled to each image's original size and compared with the original
labels, so a run at reduced resolution is scored on the same pixels as a full-size one.
Confusion matrices add up, which is what sharded evaluation reduces across processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F
from torchmetrics.functional.classification import multiclass_confusion_matrix
from tqdm.auto import tqdm

from balseg.data.augment import model_input
from balseg.data.base import IGNORE_INDEX
from balseg.data.prepare import PreparedSplit


@torch.no_grad()
def confusion_matrix(
    model: torch.nn.Module,
    split: PreparedSplit,
    indices: Sequence[int] | None = None,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """int64 ``[C, C]`` (rows = truth, columns = prediction) over ``split``'s images
    ``indices`` (default all), read batch by batch.

    Each prediction is cropped to its image's valid area, upsampled to the original size
    and compared with ``split.target(i)``, the label map at original resolution (read per
    image too: memory does not grow with the split).
    """
    num_classes = split.info.num_classes
    idx = list(range(len(split)) if indices is None else indices)
    model.to(device).eval()
    cm = torch.zeros((num_classes, num_classes), dtype=torch.int64)
    for start in tqdm(range(0, len(idx), batch_size), desc="evaluating", unit="batch",
                      disable=not progress, leave=False):
        chunk = idx[start : start + batch_size]
        x = model_input(split.images[chunk], mean, std).to(device)
        logits = model(x).float()
        for j, i in enumerate(chunk):
            h, w = split.valid_size(i)
            target = split.target(i).long()
            pred = logits[j : j + 1, :, :h, :w]
            if tuple(target.shape) != (h, w):
                pred = F.interpolate(pred, size=tuple(target.shape), mode="bilinear",
                                     align_corners=False)
            cm += multiclass_confusion_matrix(
                pred.argmax(1)[0].cpu(), target, num_classes, ignore_index=IGNORE_INDEX,
                normalize=None, validate_args=False,
            ).long()
    return cm


def iou_from_confusion(cm: torch.Tensor) -> tuple[float, list[float | None]]:
    """(mIoU, IoU per class); a class absent from both truth and prediction is None and
    left out of the mean, as in the Cityscapes/PixelPick evaluation."""
    cm = cm.double()
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    per_class: list[float | None] = [
        float(i / u) if u > 0 else None for i, u in zip(inter, union, strict=True)
    ]
    present = [v for v in per_class if v is not None]
    miou = float(sum(present) / len(present)) if present else float("nan")
    return miou, per_class
