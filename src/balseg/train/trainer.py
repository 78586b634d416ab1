"""Partial cross-entropy training on the few labeled pixels of each image.

Only labeled pixels contribute to the loss (every other pixel is IGNORE_INDEX), only images
with at least one labeled pixel are drawn, and every random choice (batch order, dropout,
augmentation) derives from the cycle's seed and the sample's place in the global batch, so
a resumed cycle retrains identically, with one process or several.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from balseg.data.augment import normalize
from balseg.data.base import IGNORE_INDEX
from balseg.distributed import DistContext, all_reduce_sum
from balseg.errors import ConfigError, DataError, TrainingDivergedError
from balseg.models.seeded_dropout import per_sample_dropout
from balseg.seeding import TrainStream, rng_for, seed_for
from balseg.train.labels import DenseLabels, RegionLabels, SparseLabels, as_training_labels
from balseg.train.pseudo import PSEUDO_OFFSET, PseudoLabels

log = logging.getLogger(__name__)

Augment = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (images, labels, *, seed)


@dataclass(frozen=True)
class TrainSettings:
    """One cycle's training: the config's ``train`` section resolved for that cycle."""

    steps: int = 300
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 2e-4
    poly_power: float = 0.9
    seed: int = 0
    freeze_bn: bool = False
    unlabeled_weight: float = 1.0
    consistency: bool = False
    unlabeled_threshold: float = 0.9

    @classmethod
    def from_config(cls, train: object, *, steps: int, seed: int) -> TrainSettings:
        """From a ``TrainConfig`` (the one place its fields are copied), with the cycle's
        step count and training seed."""
        return cls(steps=steps, seed=seed,
                   consistency=bool(train.consistency),  # type: ignore[attr-defined]
                   **{k: getattr(train, k) for k in (
                       "batch_size", "lr", "weight_decay", "poly_power", "freeze_bn",
                       "unlabeled_weight", "unlabeled_threshold")})


@dataclass(frozen=True)
class TrainStats:
    steps: int
    images_seen: int
    final_loss: float
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images_seen / self.seconds if self.seconds > 0 else float("nan")


def _batches(candidates: np.ndarray, settings: TrainSettings) -> list[np.ndarray]:
    """Epoch-wise shuffled batches of labeled images, as many as ``settings.steps``."""
    rng = rng_for(settings.seed, TrainStream.BATCHES)
    order: list[int] = []
    need = settings.steps * settings.batch_size
    while len(order) < need:
        order.extend(rng.permutation(candidates).tolist())
    bs = min(settings.batch_size, len(candidates))
    return [np.asarray(order[i * bs : (i + 1) * bs]) for i in range(settings.steps)]


def train_cycle(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | SparseLabels | DenseLabels | RegionLabels | PseudoLabels,
    settings: TrainSettings,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    augment: Augment | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    ctx: DistContext | None = None,
    callback: Callable[[int, torch.nn.Module], None] | None = None,
) -> TrainStats:
    """Train ``model`` in place on uint8 ``images [N,3,H,W]`` (a tensor or ``DiskArray``,
    read per batch) and sparse labels (``SparseLabels``, or a ``[N,H,W]`` array).

    With several processes (``ctx``), each rank takes every world_size-th sample of each
    global batch and DistributedDataParallel averages the gradients. Each sample's
    augmentation and dropout masks are seeded by (seed, step, position in the global batch)
    and the loss is normalised by the global count of labeled pixels, so data, masks and
    loss are those of a single-process run. BatchNorm statistics are synchronised on GPUs
    (SyncBatchNorm); on CPUs (gloo) they are per process unless ``freeze_bn`` keeps
    BatchNorm on its running statistics, which makes the model the single-process one up
    to floating-point reduction order.

    ``callback(step, model)`` runs after every optimizer step (``step`` counts from 1), e.g.
    to evaluate a long training along the way; it must leave the model as it found it.
    """
    ctx = ctx or DistContext(device=torch.device(device))
    use_pseudo = isinstance(labels, PseudoLabels)
    labels = labels if use_pseudo else as_training_labels(labels)
    candidates = labels.labeled_indices()
    if len(candidates) == 0:
        raise DataError("no labeled pixel in the pool: nothing to train on (every answer so far"
                        " is 'unknown' or in conflict?)")
    if min(settings.batch_size, len(candidates)) < ctx.world_size:
        raise ConfigError(
            f"train.batch_size {settings.batch_size} (or {len(candidates)} labeled images) is"
            f" smaller than the {ctx.world_size} processes: every process needs a sample"
        )
    model.to(device).train()
    if settings.freeze_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()  # running statistics; the affine parameters still learn
    net: torch.nn.Module = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if ctx.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif not settings.freeze_bn and ctx.is_main:
            log.warning("%d processes on %s: BatchNorm batch statistics are per process"
                        " (SyncBatchNorm needs GPUs), so the model differs slightly from a"
                        " single-process run; set train.freeze_bn: true for an identical one",
                        ctx.world_size, ctx.device.type)
        net = DDP(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr,
                                 weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.PolynomialLR(
        optimizer, total_iters=settings.steps, power=settings.poly_power
    )
    start = time.perf_counter()
    loss_value = float("nan")
    seen = 0
    bar = tqdm(_batches(candidates, settings), desc="training", unit="step",
               disable=not progress, leave=False)
    for step, batch in enumerate(bar):
        xs, ys, drop_seeds = [], [], []
        for j in range(ctx.rank, len(batch), ctx.world_size):
            drop_seeds.append(seed_for(settings.seed, TrainStream.DROPOUT, step, j))
            x_u8, y = images[int(batch[j])][None], labels[int(batch[j])][None].long()
            if augment is not None:
                aug_seed = seed_for(settings.seed, TrainStream.AUGMENT, step, j)
                x, y = augment(x_u8, y, seed=aug_seed)
            else:
                x = normalize(x_u8, mean, std)
            xs.append(x)
            ys.append(y)
        x = torch.cat(xs).contiguous(memory_format=torch.channels_last).to(device)
        y = torch.cat(ys).to(device)
        y_pseudo = None
        if use_pseudo:  # pseudo-labels are weighed apart from the answers
            pseudo = y >= PSEUDO_OFFSET
            y_pseudo = torch.where(pseudo, y - PSEUDO_OFFSET, IGNORE_INDEX)
            y = torch.where(pseudo, IGNORE_INDEX, y)
        count = (y != IGNORE_INDEX).sum().double().reshape(1)
        total = float(all_reduce_sum(count.clone(), ctx, "count labeled pixels"))
        with per_sample_dropout(model, drop_seeds):
            logits = net(x)
        optimizer.zero_grad(set_to_none=True)
        extra = _unlabeled_loss(net, model, logits, x, y_pseudo,
                                settings, step, drop_seeds, mean, std, ctx)
        if total > 0 or extra is not None:  # a batch whose labels were all cropped away
            loss_sum = (F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum")
                        if total > 0 else logits.sum() * 0.0)
            loss_value = float(loss_sum.detach()) / max(float(count), 1.0)
            bad = torch.tensor([0.0 if math.isfinite(loss_value) else 1.0], dtype=torch.float64)
            if float(all_reduce_sum(bad, ctx, "check the loss")) > 0:  # every rank stops
                raise TrainingDivergedError(
                    f"training diverged at step {step + 1} of {settings.steps}: the loss is"
                    f" {loss_value} (learning rate {settings.lr:g})" + TrainingDivergedError.ADVICE)
            loss = loss_sum * (ctx.world_size / max(total, 1.0))  # DDP averages over ranks
            if extra is not None:
                loss = loss + extra
            loss.backward()
            optimizer.step()
        schedule.step()
        seen += len(batch)
        if callback is not None:
            callback(step + 1, model)
        if progress:
            bar.set_postfix(loss=f"{loss_value:.3f}")
    model.eval()
    return TrainStats(settings.steps, seen, loss_value, time.perf_counter() - start)


def _mean_ce(logits: torch.Tensor, target: torch.Tensor, ctx: DistContext, what: str
             ) -> torch.Tensor | None:
    """Cross-entropy summed over ``target``'s labelled pixels, divided by their global count
    (times world size: DDP averages gradients over ranks); None when no rank has any."""
    count = (target != IGNORE_INDEX).sum().double().reshape(1)
    total = float(all_reduce_sum(count.clone(), ctx, what))
    if total == 0:
        return None
    if float(count) == 0:
        return logits.sum() * 0.0  # keeps every rank's graph the same shape
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum") * (
        ctx.world_size / total)


def _unlabeled_loss(net: torch.nn.Module, model: torch.nn.Module, logits: torch.Tensor,
                    x: torch.Tensor, y_pseudo: torch.Tensor | None, settings: TrainSettings,
                    step: int, drop_seeds: list[int], mean: Sequence[float],
                    std: Sequence[float], ctx: DistContext) -> torch.Tensor | None:
    """``unlabeled_weight`` x (the pseudo-labels' mean loss + the consistency loss), or None.

    Consistency (FixMatch's weak-to-strong rule, per pixel): the batch as trained is the
    weak view; its confident predictions (``unlabeled_threshold``) are the targets of a
    strongly perturbed copy (colour jitter, grey, blur, one erased box whose pixels are left
    out), which costs one more forward and backward pass.
    """
    parts = []
    if y_pseudo is not None:
        parts.append(_mean_ce(logits, y_pseudo, ctx, "count pseudo-labelled pixels"))
    if settings.consistency:
        with torch.no_grad():
            conf, target = logits.detach().softmax(1).max(1)
            target = torch.where(conf >= settings.unlabeled_threshold, target, IGNORE_INDEX)
        seeds = [seed_for(settings.seed, TrainStream.STRONG, step, j)
                 for j in range(ctx.rank, ctx.rank + len(x) * ctx.world_size, ctx.world_size)]
        strong, erased = strong_view(x, mean, std, seeds)
        target = torch.where(erased, IGNORE_INDEX, target)
        with per_sample_dropout(model, drop_seeds):
            strong_logits = net(strong)
        parts.append(_mean_ce(strong_logits, target, ctx, "count consistency pixels"))
    found = [p for p in parts if p is not None]
    if not found:
        return None
    return settings.unlabeled_weight * sum(found[1:], found[0])


def strong_view(x: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A strongly perturbed copy of normalised images ``x`` (same geometry) and the mask of
    the erased box per image; each image's perturbation comes from its own seed."""
    from torchvision.transforms import v2

    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    rgb = (x * s + m).clamp(0, 1)
    photometric = v2.Compose([
        v2.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.25),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(kernel_size=7, sigma=(0.1, 2.0))], p=0.5),
    ])
    out = torch.empty_like(rgb)
    erased = torch.zeros((x.shape[0], *x.shape[-2:]), dtype=torch.bool, device=x.device)
    h, w = x.shape[-2:]
    for b, seed in enumerate(seeds):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out[b] = photometric(rgb[b])
            bh, bw = max(1, h // 4), max(1, w // 4)  # a quarter of each side, as FixMatch
            y0 = int(torch.randint(0, h - bh + 1, (1,)))
            x0 = int(torch.randint(0, w - bw + 1, (1,)))
        out[b, :, y0 : y0 + bh, x0 : x0 + bw] = 0.5
        erased[b, y0 : y0 + bh, x0 : x0 + bw] = True
    return ((out - m) / s).contiguous(memory_format=torch.channels_last), erased
