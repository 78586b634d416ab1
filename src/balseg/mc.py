"""Pool scoring: MC-dropout samples of every pool image, streamed into acquisition scores.

Samples are never stacked: each one is folded into ``MCMoments`` (memory independent of
T) and only the valid (unpadded) region is scored, since padding can never be selected.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from balseg.acquisition import MCMoments, get_score, required_stats
from balseg.data import normalize as data_normalize
from balseg.models.segmenter import MCDropoutSegmenter


def image_seed(seed: int, cycle: int, index: int) -> int:
    """Seed of one image's dropout masks: independent of batching and sharding."""
    return int(np.random.SeedSequence([seed, cycle, index]).generate_state(1)[0])


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float32 normalised, channels_last (faster convolutions on CPU)."""
    return data_normalize(images, mean, std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def score_pool(
    model: MCDropoutSegmenter,
    images: torch.Tensor,
    indices: Sequence[int],
    *,
    valid_hw: tuple[int, int],
    strategy: str,
    samples: int,
    seed: int,
    cycle: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 8,
    score_kwargs: dict | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    resolution: str = "label",
) -> torch.Tensor:
    """Score ``images[indices]``; returns float32 ``[len(indices), H, W]`` over the valid area.

    ``strategy`` is an acquisition name (``balseg.acquisition.SCORE_NAMES``); "random" needs
    no model pass and is seeded per image like the dropout masks.

    ``resolution="label"`` (exact) takes the softmax of each upsampled sample at every
    pixel. ``"classifier"`` accumulates the samples at the classifier's resolution (1/4 per
    side for DeepLabV3+: 16x fewer values) and upsamples the score map bilinearly: an
    approximation that makes MC scoring cost about one forward pass.
    """
    if resolution not in ("label", "classifier"):
        raise ValueError(f"score resolution must be 'label' or 'classifier', got {resolution!r}")
    score_fn = get_score(strategy)
    kwargs = dict(score_kwargs or {})
    h, w = valid_hw
    out = torch.empty((len(indices), h, w), dtype=torch.float32)
    bar = tqdm(total=len(indices), desc=f"scoring ({strategy})", unit="img",
               disable=not progress, leave=False)
    for start in range(0, len(indices), batch_size):
        chunk = list(indices[start : start + batch_size])
        seeds = [image_seed(seed, cycle, i) for i in chunk]
        if strategy == "random":
            for j, s in enumerate(seeds):
                g = torch.Generator().manual_seed(s)
                out[start + j] = torch.rand((h, w), generator=g)
            bar.update(len(chunk))
            continue
        x = normalize(images[chunk], mean, std).to(device)
        moments: MCMoments | None = None
        full_hw = tuple(x.shape[-2:])
        upsample = resolution == "label"
        low_hw = (h, w)
        for probs in model.mc_probs(x, samples, seeds, upsample=upsample):
            if not upsample:  # the valid area at the classifier's resolution, rounded up
                fy, fx = full_hw[0] / probs.shape[-2], full_hw[1] / probs.shape[-1]
                low_hw = (min(probs.shape[-2], -(-h // int(fy))),
                          min(probs.shape[-1], -(-w // int(fx))))
            sample = probs[:, :, : low_hw[0], : low_hw[1]].transpose(0, 1).contiguous()
            if moments is None:
                moments = MCMoments(probs.shape[1], tuple(sample.shape[1:]), device=sample.device,
                                    stats=required_stats(strategy))
            moments.update(sample)
        assert moments is not None
        scores = score_fn(moments, **kwargs).float()
        if not upsample:  # back to label resolution over the same area
            fy, fx = full_hw[0] / probs.shape[-2], full_hw[1] / probs.shape[-1]
            up = F.interpolate(scores[:, None], scale_factor=(fy, fx), mode="bilinear",
                               align_corners=False)
            scores = up[:, 0, :h, :w]
        out[start : start + len(chunk)] = scores.cpu()
        bar.update(len(chunk))
    bar.close()
    return out
