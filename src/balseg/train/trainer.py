"""Partial cross-entropy training on the few labeled pixels of each image.

Only labeled pixels contribute to the loss (every other pixel is IGNORE_INDEX), only images
with at least one labeled pixel are drawn, and every random choice (batch order, dropout,
augmentation) derives from the cycle's seed and the sample's place in the global batch, so
a resumed cycle retrains identically, with one process or several.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from balseg.data.base import IGNORE_INDEX
from balseg.distributed import DistContext, all_reduce_sum
from balseg.mc import normalize
from balseg.models.seeded_dropout import per_sample_dropout

log = logging.getLogger(__name__)

Augment = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (images, labels, *, seed)


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 300
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 2e-4
    poly_power: float = 0.9
    seed: int = 0
    freeze_bn: bool = False


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
    rng = np.random.default_rng([settings.seed, 1])
    order: list[int] = []
    need = settings.steps * settings.batch_size
    while len(order) < need:
        order.extend(rng.permutation(candidates).tolist())
    bs = min(settings.batch_size, len(candidates))
    return [np.asarray(order[i * bs : (i + 1) * bs]) for i in range(settings.steps)]


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def train_cycle(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    augment: Augment | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    ctx: DistContext | None = None,
) -> TrainStats:
    """Train ``model`` in place on uint8 ``images [N,3,H,W]`` and sparse ``labels [N,H,W]``.

    With several processes (``ctx``), each rank takes every world_size-th sample of each
    global batch and DistributedDataParallel averages the gradients. Each sample's
    augmentation and dropout masks are seeded by (seed, step, position in the global batch)
    and the loss is normalised by the global count of labeled pixels, so data, masks and
    loss are those of a single-process run. BatchNorm statistics are synchronised on GPUs
    (SyncBatchNorm); on CPUs (gloo) they are per process unless ``freeze_bn`` keeps
    BatchNorm on its running statistics, which makes the model the single-process one up
    to floating-point reduction order.
    """
    ctx = ctx or DistContext(device=torch.device(device))
    labeled = (labels != IGNORE_INDEX).flatten(1).any(1)
    candidates = torch.nonzero(labeled).flatten().numpy()
    if len(candidates) == 0:
        raise ValueError("no labeled pixel in the pool: nothing to train on")
    if min(settings.batch_size, len(candidates)) < ctx.world_size:
        raise ValueError(
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
            drop_seeds.append(_seed(settings.seed, 6, step, j))
            x_u8, y = images[batch[j]][None], labels[batch[j]][None].long()
            if augment is not None:
                x, y = augment(x_u8, y, seed=_seed(settings.seed, 2, step, j))
            else:
                x = normalize(x_u8, mean, std)
            xs.append(x)
            ys.append(y)
        x = torch.cat(xs).contiguous(memory_format=torch.channels_last).to(device)
        y = torch.cat(ys).to(device)
        count = (y != IGNORE_INDEX).sum().double().reshape(1)
        total = float(all_reduce_sum(count.clone(), ctx, "count labeled pixels"))
        with per_sample_dropout(model, drop_seeds):
            logits = net(x)
        optimizer.zero_grad(set_to_none=True)
        if total > 0:  # a global batch whose labels were all cropped away is skipped
            loss_sum = F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum")
            (loss_sum * (ctx.world_size / total)).backward()  # DDP averages over ranks
            optimizer.step()
            loss_value = float(loss_sum.detach()) / max(float(count), 1.0)
        schedule.step()
        seen += len(batch)
        if progress:
            bar.set_postfix(loss=f"{loss_value:.3f}")
    model.eval()
    return TrainStats(settings.steps, seen, loss_value, time.perf_counter() - start)
