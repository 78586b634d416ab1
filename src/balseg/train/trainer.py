"""Partial cross-entropy training on the few labeled pixels of each image.

Only labeled pixels contribute to the loss (every other pixel is IGNORE_INDEX), only images
with at least one labeled pixel are drawn, and every random choice (batch order, dropout,
augmentation) derives from the cycle's seed, so a resumed cycle retrains identically.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from balseg.data.base import IGNORE_INDEX
from balseg.mc import normalize

Augment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 300
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 2e-4
    poly_power: float = 0.9
    seed: int = 0


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
    step_hook: Callable[[int], None] | None = None,
) -> TrainStats:
    """Train ``model`` in place on uint8 ``images [N,3,H,W]`` and sparse ``labels [N,H,W]``.

    ``augment`` maps (uint8 images, int64 labels) to (normalised float images, int64 labels)
    and draws from the global torch RNG, which is re-seeded per step here.
    """
    labeled = (labels != IGNORE_INDEX).flatten(1).any(1)
    candidates = torch.nonzero(labeled).flatten().numpy()
    if len(candidates) == 0:
        raise ValueError("no labeled pixel in the pool: nothing to train on")
    model.to(device).train()
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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.SeedSequence([settings.seed, 2, step])
                                  .generate_state(1)[0]))
            x_u8, y = images[batch], labels[batch].long()
            if augment is not None:
                x, y = augment(x_u8, y)
                x = x.contiguous(memory_format=torch.channels_last)
            else:
                x = normalize(x_u8, mean, std)
            logits = model(x.to(device))
            loss = F.cross_entropy(logits, y.to(device), ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            if torch.isfinite(loss):  # a batch whose labels were all cropped away
                loss.backward()
                optimizer.step()
                loss_value = float(loss.detach())
        schedule.step()
        seen += len(batch)
        if progress:
            bar.set_postfix(loss=f"{loss_value:.3f}")
        if step_hook is not None:
            step_hook(step)
    model.eval()
    return TrainStats(settings.steps, seen, loss_value, time.perf_counter() - start)
