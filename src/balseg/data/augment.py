"""Joint image/label augmentation for training on sparse pixel labels.

Image and label go through the same torchvision ``transforms.v2`` pipeline as an
``tv_tensors.Image`` / ``tv_tensors.Mask`` pair, so the geometry is shared, labels are
resampled with nearest neighbour (a label is only ever copied, never invented: an
unlabeled pixel stays IGNORE_INDEX) and padding fills labels with IGNORE_INDEX.

Reproducibility: transforms.v2 draws from the global torch RNG. ``SegAugment`` draws one
seed from the caller's generator (or takes ``seed``), and runs the pipeline inside
``torch.random.fork_rng`` after ``torch.manual_seed(seed)``, so the result depends only on
that seed and the global RNG state of the caller is left untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from .base import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 images [..., 3, H, W] -> float32 ``(x / 255 - mean) / std`` per channel."""
    if images.shape[-3] != 3:
        raise ValueError(f"expected 3 channels at dim -3, got shape {tuple(images.shape)}")
    m = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(3, 1, 1)
    return (images.float() / 255.0 - m) / s


def model_input(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float32 normalised, channels_last (faster convolutions on CPU)."""
    return normalize(images, mean, std).contiguous(memory_format=torch.channels_last)


class SegAugment(nn.Module):
    """Random flip, scale (then crop/pad back to H, W) and colour jitter, per sample.

    ``forward(images uint8 [B,3,H,W], labels [B,H,W])`` returns normalised float images and
    int64 labels of the same H, W. Set an option to 0/None to turn that step off.
    """

    def __init__(
        self,
        *,
        hflip: bool | float = 0.5,
        scale: tuple[float, float] | None = (0.75, 1.25),
        color_jitter: float | tuple[float, float, float] = 0.2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        """``hflip``: flip probability (True = 0.5); ``scale``: (lo, hi) factor range of the
        random rescale, None = off; ``color_jitter``: brightness/contrast/saturation
        strength, one float for all three or a triple, 0 = off."""
        super().__init__()
        if scale is not None and not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must satisfy 0 < lo <= hi, got {scale}")
        self.hflip = 0.5 if hflip is True else float(hflip)
        self.scale = None if scale is None else (float(scale[0]), float(scale[1]))
        if isinstance(color_jitter, (int, float)):
            color_jitter = (float(color_jitter),) * 3
        self.jitter = tuple(float(v) for v in color_jitter)
        self.mean, self.std = tuple(mean), tuple(std)
        self._pipelines: dict[tuple[int, int], v2.Compose] = {}

    def _pipeline(self, h: int, w: int) -> v2.Compose:
        """The v2 pipeline for images of size (h, w), built once per size."""
        if (h, w) not in self._pipelines:
            steps: list[nn.Module] = []
            if self.hflip > 0:
                steps.append(v2.RandomHorizontalFlip(p=self.hflip))
            if self.scale is not None and self.scale != (1.0, 1.0):
                lo, hi = self.scale
                short = min(h, w)
                # Shorter side drawn uniformly in [lo, hi] x short, aspect ratio kept.
                steps.append(v2.RandomResize(max(1, round(lo * short)), round(hi * short) + 1))
                fill = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
                steps.append(v2.RandomCrop((h, w), pad_if_needed=True, fill=fill))  # type: ignore[arg-type]
            if any(self.jitter):
                b, c, s = self.jitter
                steps.append(v2.ColorJitter(brightness=b, contrast=c, saturation=s))
            self._pipelines[(h, w)] = v2.Compose(steps or [v2.Identity()])
        return self._pipelines[(h, w)]

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 [B,3,H,W], got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(
                f"labels {tuple(labels.shape)} do not match images {tuple(images.shape)}"
            )
        if generator is not None and seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        h, w = images.shape[-2:]
        pipe = self._pipeline(h, w)
        out_img = torch.empty_like(images)
        out_lab = torch.empty(labels.shape, dtype=torch.int64, device=labels.device)

        def run() -> None:
            for b in range(images.shape[0]):
                img, lab = pipe(tv_tensors.Image(images[b]), tv_tensors.Mask(labels[b][None]))
                out_img[b] = img
                out_lab[b] = lab[0]

        if seed is None:
            run()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                run()
        return normalize(out_img, self.mean, self.std), out_lab
