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

from balseg.data.base import IGNORE_INDEX
from balseg.mc import normalize


@torch.no_grad()
def confusion_matrix(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: Sequence[torch.Tensor],
    num_classes: int,
    *,
    valid_hw: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """int64 ``[C, C]`` (rows = truth, columns = prediction) over ``images`` and ``targets``.

    ``targets[i]`` is image i's label map at original resolution (uint8, IGNORE_INDEX void).
    """
    if len(targets) != len(images):
        raise ValueError(f"{len(images)} images but {len(targets)} label maps")
    model.to(device).eval()
    cm = torch.zeros((num_classes, num_classes), dtype=torch.int64)
    h, w = valid_hw
    for start in tqdm(range(0, len(images), batch_size), desc="evaluating", unit="batch",
                      disable=not progress, leave=False):
        x = normalize(images[start : start + batch_size], mean, std).to(device)
        logits = model(x)[:, :, :h, :w].float()
        for j in range(logits.shape[0]):
            target = targets[start + j].long()
            pred = logits[j : j + 1]
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
