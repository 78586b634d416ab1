"""Training-time dropout whose masks depend on each sample's own seed, not on the batch.

With DistributedDataParallel each process sees a share of the global batch. Ordinary
dropout draws its masks from the process's RNG stream, so the masks a sample gets depend
on which process it lands on and on its neighbours in the batch: two processes train a
different model than one. Inside ``per_sample_dropout(model, seeds)`` every dropout
module of ``model`` draws sample b's mask from a generator seeded by (seeds[b], module),
so a sample gets the same mask whatever the world size and batch split.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def _mask_shape(module: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """One sample's mask: whole channels for DropoutNd, every element for Dropout."""
    if isinstance(module, nn.Dropout):
        return tuple(x.shape[1:])
    return (x.shape[1],) + (1,) * (x.dim() - 2)


def _seeded_forward(module: nn.Module, index: int, seeds: Sequence[int]):
    def forward(x: torch.Tensor) -> torch.Tensor:
        p = float(module.p)  # type: ignore[arg-type]
        if not module.training or p == 0.0:
            return x
        if x.shape[0] != len(seeds):
            raise ValueError(f"per_sample_dropout: {len(seeds)} seeds for a batch of "
                             f"{x.shape[0]} at {type(module).__name__} #{index}")
        shape = _mask_shape(module, x)
        masks = []
        for seed in seeds:
            g = torch.Generator(device=x.device)
            g.manual_seed(int(np.random.SeedSequence([int(seed), index])
                              .generate_state(1, dtype=np.uint64)[0] >> 1))
            masks.append(torch.rand(shape, generator=g, device=x.device) >= p)
        keep = torch.stack(masks).to(x.dtype)
        return x * keep * (1.0 / (1.0 - p)) if p < 1.0 else x * 0.0

    return forward


@contextmanager
def per_sample_dropout(model: nn.Module, seeds: Sequence[int]) -> Iterator[None]:
    """Within the block, ``model``'s dropout masks follow ``seeds`` (one per sample)."""
    patched = [m for m in model.modules() if isinstance(m, _DROPOUTS)]
    for index, module in enumerate(patched):
        module.forward = _seeded_forward(module, index, seeds)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for module in patched:
            del module.forward  # back to the class's forward
