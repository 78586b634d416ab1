"""A run's model applied to images of any size, exactly as the loop evaluates it.

Each image goes through the preparation of its run (``balseg.data.prepare``): resized to the
run's working size (``data.size`` and ``data.resize``; none: its own size), padded at the
bottom/right to ``data.pad_multiple``, normalised. The logits of its valid area are then
upsampled bilinearly to the image's original size and the class is their argmax: the
computation of ``balseg.train.confusion_matrix``, so masks written by ``balseg predict`` score
the mIoU that ``balseg evaluate`` prints.

Uncertainty: T last-layer MC-dropout samples, folded into ``MCMoments`` and turned into a
registered score at the working resolution, then upsampled to the original size (as the
loop's overlays are). With last-layer MC the encoder and decoder run once per image for
both the prediction and the samples. Image ``k``'s dropout masks come from the run seed and
``key`` (``Stream.PREDICT_MC``): they do not depend on the batch or on the other images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from balseg.acquisition import MCMoments
from balseg.acquisition.registry import ScoreSpec
from balseg.data.augment import model_input
from balseg.data.prepare import Geometry, resize_image
from balseg.models import MCDropoutSegmenter, ModelSpec, input_mean_std
from balseg.seeding import Stream, seed_for

UPSAMPLE_BUDGET = 1 << 25
"""Most values (classes x original pixels) upsampled at once; a larger image is upsampled a
few classes at a time, so memory stays bounded for images of any size."""


@dataclass
class Prepared:
    """One image ready for the model: uint8 ``[3, Hp, Wp]``, its valid and original size."""

    array: np.ndarray
    valid: tuple[int, int]
    orig: tuple[int, int]


@dataclass
class Output:
    """One image's prediction at its original size."""

    classes: np.ndarray  # [H0, W0] uint8 class ids
    confidence: np.ndarray  # [H0, W0] float32: the largest softmax probability
    uncertainty: np.ndarray | None = None  # [H0, W0] float32 score (higher: more uncertain)
    probabilities: np.ndarray | None = None  # [C, H0, W0] float32, when asked for


def check_image(image: Any, what: str) -> np.ndarray:
    """An HxWx3 uint8 RGB array (HxW grey and HxWx4 RGBA are converted), or a DataError."""
    from balseg.errors import DataError

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise DataError(f"{what}: expected a uint8 image (values 0..255), got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise DataError(f"{what}: expected an HxWx3 RGB image, got shape {tuple(arr.shape)}")
    return arr


def seed_key(name: str) -> int:
    """The ``Stream.PREDICT_MC`` key of an image from its (output) name: stable across runs
    of ``balseg predict``, whatever else is predicted with it."""
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:7], "big")


class Predictor:
    """A checkpoint's model with its run's geometry, normalisation and (optional) score."""

    def __init__(self, model: MCDropoutSegmenter, spec: ModelSpec, geometry: Geometry, *,
                 device: torch.device | str = "cpu", seed: int = 0,
                 score: ScoreSpec | None = None, samples: int = 0,
                 score_kwargs: dict[str, Any] | None = None) -> None:
        self.model = model.to(device).eval()
        self.spec = spec
        self.geometry = geometry
        self.device = torch.device(device)
        self.seed = int(seed)
        self.mean, self.std = input_mean_std(spec)
        self.score = score
        self.samples = int(samples)
        self.score_kwargs = dict(score_kwargs or {})
        self.num_classes = model.num_classes

    # -- input --------------------------------------------------------------------------------
    def prepare(self, image: np.ndarray) -> Prepared:
        """Resize to the working size and pad, as ``prepare_split`` does."""
        orig = (int(image.shape[0]), int(image.shape[1]))
        valid = self.geometry.working(orig)
        work = image if valid == orig else resize_image(image, valid)
        hp, wp = self.geometry.padded(valid)
        arr = np.zeros((3, hp, wp), np.uint8)
        arr[:, : valid[0], : valid[1]] = work.transpose(2, 0, 1)
        return Prepared(arr, valid, orig)

    # -- the model ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray], keys: Sequence[int] | None = None, *,
                uncertainty: bool = True, probabilities: bool = False) -> list[Output]:
        """Predict one batch of HxWx3 uint8 images (any sizes; images whose padded sizes
        differ run in separate model calls). ``keys``: each image's dropout-mask key."""
        keys = list(range(len(images))) if keys is None else list(keys)
        if len(keys) != len(images):
            raise ValueError(f"{len(images)} images but {len(keys)} keys")
        prepared = [self.prepare(img) for img in images]
        out: list[Output | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(prepared):
            groups.setdefault(p.array.shape, []).append(i)
        for members in groups.values():
            batch = [prepared[i] for i in members]
            results = self._run(batch, [keys[i] for i in members],
                                uncertainty and self.score is not None, probabilities)
            for i, r in zip(members, results, strict=True):
                out[i] = r
        return out  # type: ignore[return-value]

    def _run(self, batch: list[Prepared], keys: list[int], want_unc: bool,
             want_probs: bool) -> list[Output]:
        x = model_input(torch.from_numpy(np.stack([p.array for p in batch])), self.mean,
                        self.std).to(self.device)
        model = self.model
        score = self.score
        feats = None
        if want_unc and score is not None and score.needs_model and model.mc_mode == "last_layer":
            feats = model.features(x)
            logits = model.head(feats).float()
        else:
            logits = model(x).float()
        scores = self._scores(x, feats, batch, keys) if want_unc else None
        results = []
        for j, p in enumerate(batch):
            h, w = p.valid
            classes, conf, probs = upsample_argmax(logits[j : j + 1, :, :h, :w], p.orig,
                                                   want_probs)
            unc = None
            if scores is not None:
                s = scores[j, :h, :w].double()[None, None]
                if (h, w) != p.orig:
                    s = F.interpolate(s, size=p.orig, mode="bilinear", align_corners=False)
                unc = s[0, 0].float().cpu().numpy()
            results.append(Output(classes, conf, unc, probs))
        return results

    def _scores(self, x: torch.Tensor, feats: torch.Tensor | None, batch: list[Prepared],
                keys: list[int]) -> torch.Tensor:
        """float32 ``[B, Hp, Wp]`` scores of the batch (padding included, cropped later)."""
        score = self.score
        assert score is not None
        seeds = [seed_for(self.seed, Stream.PREDICT_MC, k) for k in keys]
        hw = tuple(x.shape[-2:])
        if not score.needs_model:  # 'random': a seeded draw per image, as the loop does
            out = torch.empty((len(batch), *hw), dtype=torch.float32)
            for j, s in enumerate(seeds):
                g = torch.Generator().manual_seed(s)
                empty = MCMoments(2, hw, stats=(), dtype=torch.float32)
                out[j] = score.fn(empty, generator=g, **self.score_kwargs).float()
            return out
        if feats is not None:
            samples = self.model.mc_probs_from_features(feats, self.samples, seeds)
        else:
            samples = self.model.mc_probs(x, self.samples, seeds)
        moments: MCMoments | None = None
        for probs in samples:
            sample = probs.transpose(0, 1).contiguous()  # [C, B, Hp, Wp]
            if moments is None:
                moments = MCMoments(probs.shape[1], tuple(sample.shape[1:]),
                                    device=sample.device, stats=score.stats)
            moments.update(sample)
        assert moments is not None
        return score.fn(moments, **self.score_kwargs).float().cpu()


def upsample_argmax(logits: torch.Tensor, size: tuple[int, int], want_probs: bool = False,
                    budget: int = UPSAMPLE_BUDGET
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(classes uint8, confidence float32, probabilities or None) at ``size`` from logits
    ``[1, C, h, w]``: bilinear upsampling then argmax, as ``confusion_matrix`` computes it.

    Above ``budget`` values (and without ``want_probs``) the classes are upsampled a few at a
    time with a running maximum and log-sum-exp, so no ``[C, H0, W0]`` array exists.
    """
    c = logits.shape[1]
    resize = tuple(logits.shape[-2:]) != tuple(size)

    def up(part: torch.Tensor) -> torch.Tensor:
        if not resize:
            return part
        return F.interpolate(part, size=tuple(size), mode="bilinear", align_corners=False)

    if want_probs or c * size[0] * size[1] <= budget:
        full = up(logits)
        classes = full.argmax(1)[0]
        probs = torch.softmax(full, dim=1)[0]
        conf = probs.amax(0)
        return (classes.to(torch.uint8).cpu().numpy(), conf.cpu().numpy(),
                probs.cpu().numpy() if want_probs else None)
    step = max(1, budget // (size[0] * size[1]))
    best = arg = total = None
    for start in range(0, c, step):
        part = up(logits[:, start : start + step])[0]  # [k, H0, W0]
        val, idx = part.max(0)
        idx = idx + start
        if best is None:
            best, arg = val, idx
            total = torch.exp(part - val).sum(0)
        else:
            better = val > best  # ties keep the earlier class, as argmax does
            new_best = torch.where(better, val, best)
            total = total * torch.exp(best - new_best) + torch.exp(part - new_best).sum(0)
            arg = torch.where(better, idx, arg)
            best = new_best
    assert arg is not None and total is not None
    return (arg.to(torch.uint8).cpu().numpy(), total.reciprocal().cpu().numpy(), None)
