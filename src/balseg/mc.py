"""Pool scoring: MC-dropout samples of pool images, streamed into acquisition scores.

Samples are never stacked: each one is folded into ``MCMoments`` (memory independent of
T), only the valid (unpadded) region is scored, since padding can never be selected, and
scores come out batch by batch (``iter_pool_scores``), so the caller selects pixels right
away and no ``[N, H, W]`` score map of the pool ever exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from balseg.acquisition import MCMoments
from balseg.acquisition.registry import ScoreSpec, get_spec
from balseg.data.augment import model_input
from balseg.models.segmenter import MCDropoutSegmenter
from balseg.seeding import Stream, seed_for

RESOLUTIONS = ("label", "classifier")


def image_seed(seed: int, cycle: int, index: int) -> int:
    """Seed of one image's dropout masks: independent of batching and sharding."""
    return seed_for(seed, Stream.MC_DROPOUT, cycle, index)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float32 normalised, channels_last (``balseg.data.model_input``)."""
    return model_input(images, mean, std)


def as_score_spec(score: str | ScoreSpec | Callable[..., Any]) -> ScoreSpec:
    """A registered name, a ``ScoreSpec``, or a plain function of an ``MCMoments`` (which then
    gets every statistic and needs one sample)."""
    if isinstance(score, ScoreSpec):
        return score
    if isinstance(score, str):
        return get_spec(score)
    if callable(score):
        from balseg.acquisition.registry import STATS

        return ScoreSpec(getattr(score, "__name__", "custom"), score, STATS)
    raise TypeError(f"a score is a name, a ScoreSpec or a function, got {type(score).__name__}")


@dataclass(frozen=True)
class PoolBatch:
    """One batch of scored pool images (valid area ``[b, H, W]``).

    ``predicted`` (argmax of the MC mean, long) and ``confidence`` (the MC mean's largest
    class probability, float32) are there when asked for (``predictions=True``) and the
    score needs a model pass; otherwise None.
    """

    indices: list[int]
    scores: torch.Tensor
    predicted: torch.Tensor | None = None
    confidence: torch.Tensor | None = None


@torch.no_grad()
def iter_pool_scores(
    model: MCDropoutSegmenter,
    images: Any,
    indices: Sequence[int],
    *,
    valid_hw: tuple[int, int],
    strategy: str | ScoreSpec | Callable[..., Any],
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
    predictions: bool = False,
) -> Iterator[PoolBatch]:
    """Score ``images[indices]`` batch by batch: yields a ``PoolBatch`` (batch indices,
    float32 scores ``[b, H, W]``) over the valid area ``valid_hw``.

    ``images`` is anything indexed like a uint8 ``[N,3,H,W]`` tensor (a ``DiskArray``: only
    the batch is read). A score without statistics (``random``) needs no model pass and is
    drawn per image from a seeded generator, like the dropout masks.

    ``resolution="label"`` (exact) takes the softmax of each upsampled sample at every
    pixel. ``"classifier"`` accumulates the samples at the classifier's resolution (1/4 per
    side for DeepLabV3+: 16x fewer values) and upsamples the score map bilinearly: an
    approximation that makes MC scoring cost about one forward pass.

    ``predictions=True`` also gives each pixel's predicted class (argmax of the mean of the
    samples, ``[b, H, W]`` long) and its confidence (that class's mean probability); for a
    score that needs no model pass (``random``) the model then runs for them alone.
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"score resolution must be 'label' or 'classifier', got {resolution!r}")
    spec = as_score_spec(strategy)
    score_fn = spec.fn
    kwargs = dict(score_kwargs or {})
    h, w = valid_hw
    bar = tqdm(total=len(indices), desc=f"scoring ({spec.name})", unit="img",
               disable=not progress, leave=False)
    try:
        for start in range(0, len(indices), batch_size):
            chunk = [int(i) for i in indices[start : start + batch_size]]
            if not spec.needs_model and not predictions:
                yield PoolBatch(chunk, _model_free(score_fn, spec, chunk, (h, w), seed, cycle,
                                                   kwargs))
                bar.update(len(chunk))
                continue
            stats = tuple(dict.fromkeys((*spec.stats, "sum"))) if predictions else spec.stats
            x = model_input(images[chunk], mean, std).to(device)
            seeds = [image_seed(seed, cycle, i) for i in chunk]
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
                    moments = MCMoments(probs.shape[1], tuple(sample.shape[1:]),
                                        device=sample.device, stats=stats)
                moments.update(sample)
            assert moments is not None
            pred = conf = None
            if predictions:
                conf, pred = moments.mean().max(0)
                conf = conf.float()
            if not spec.needs_model:  # the model ran for the predictions only
                yield PoolBatch(chunk, _model_free(score_fn, spec, chunk, (h, w), seed, cycle,
                                                   kwargs), *_at_label(pred, conf, probs, full_hw,
                                                                        (h, w), upsample))
                bar.update(len(chunk))
                continue
            scores = score_fn(moments, **kwargs).float()
            if not upsample:  # back to label resolution over the same area
                fy, fx = full_hw[0] / probs.shape[-2], full_hw[1] / probs.shape[-1]
                up = F.interpolate(scores[:, None], scale_factor=(fy, fx), mode="bilinear",
                                   align_corners=False)
                scores = up[:, 0, :h, :w]
            yield PoolBatch(chunk, scores.cpu(),
                            *_at_label(pred, conf, probs, full_hw, (h, w), upsample))
            bar.update(len(chunk))
    finally:
        bar.close()


def _at_label(pred: torch.Tensor | None, conf: torch.Tensor | None, probs: torch.Tensor,
              full_hw: tuple[int, ...], hw: tuple[int, int], upsample: bool
              ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Predictions and confidences at label resolution (nearest), on the CPU."""
    if pred is None or conf is None:
        return None, None
    if not upsample:
        fy, fx = full_hw[0] / probs.shape[-2], full_hw[1] / probs.shape[-1]
        pred = F.interpolate(pred[:, None].float(), scale_factor=(fy, fx),
                             mode="nearest")[:, 0, : hw[0], : hw[1]].long()
        conf = F.interpolate(conf[:, None], scale_factor=(fy, fx),
                             mode="nearest")[:, 0, : hw[0], : hw[1]]
    return pred.cpu(), conf.cpu()


def _model_free(score_fn: Callable[..., Any], spec: ScoreSpec, chunk: list[int],
                hw: tuple[int, int], seed: int, cycle: int, kwargs: dict) -> torch.Tensor:
    out = torch.empty((len(chunk), *hw), dtype=torch.float32)
    for j, i in enumerate(chunk):
        g = torch.Generator().manual_seed(seed_for(seed, Stream.RANDOM_SCORE, cycle, i))
        empty = MCMoments(2, hw, stats=(), dtype=torch.float32)
        out[j] = score_fn(empty, generator=g, **kwargs).float()
    return out


def score_pool(model: MCDropoutSegmenter, images: Any, indices: Sequence[int], **kwargs: Any
               ) -> torch.Tensor:
    """All of ``iter_pool_scores`` stacked: float32 ``[len(indices), H, W]`` (for small pools
    and tests; the loop selects batch by batch instead)."""
    parts = [b.scores for b in iter_pool_scores(model, images, indices, **kwargs)]
    h, w = kwargs["valid_hw"]
    return torch.cat(parts) if parts else torch.empty((0, h, w))
