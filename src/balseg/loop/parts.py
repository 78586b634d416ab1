"""The loop's collaborators that the config describes: the pool, the selection rule and the
simulated oracle (the model factory is ``balseg.models.ModelFactory``, the score a
``ScoreSpec``, the store a ``LabelStore``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from balseg.acquisition import select_pixels
from balseg.config import AcquisitionConfig, RunConfig
from balseg.data import PreparedSplit
from balseg.data.base import SegmentationSource
from balseg.labels import SimulatedOracle


@dataclass
class Pool:
    """The unlabeled pool: its prepared split and, where there is one, the source it came
    from (original images for the overlays)."""

    data: PreparedSplit
    source: SegmentationSource | None = None

    def __len__(self) -> int:
        return len(self.data)

    def original_image(self, index: int) -> np.ndarray:
        if self.source is not None:
            return self.source.load(index)[0]
        h, w = self.data.valid_size(index)  # no source: the working image is what there is
        return self.data.images[index][:, :h, :w].permute(1, 2, 0).numpy()


@dataclass(frozen=True)
class Selection:
    """Which pixels of one image to query, given its scores (``select_pixels``'s rules)."""

    method: str = "topk"
    top_fraction: float = 0.05
    min_spacing: int = 0
    power: bool = False
    power_beta: float = 1.0

    @classmethod
    def from_config(cls, acq: AcquisitionConfig) -> Selection:
        return cls(acq.selection, acq.top_fraction, acq.min_spacing, acq.power,
                   acq.power_beta)

    @property
    def needs_classes(self) -> bool:
        return self.method == "classes"

    def __call__(self, scores: torch.Tensor, k: int, candidates: torch.Tensor,
                 generator: torch.Generator, classes: torch.Tensor | None = None
                 ) -> torch.Tensor:
        return select_pixels(scores, k, candidates=candidates, method=self.method,
                             top_fraction=self.top_fraction, min_spacing=self.min_spacing,
                             power=self.power, power_beta=self.power_beta, generator=generator,
                             classes=classes)


def simulated_oracle(pool: Pool, cfg: RunConfig) -> SimulatedOracle:
    """Answers from the pool's ground truth (read per image from the prepared split)."""
    data = pool.data

    @functools.lru_cache(maxsize=64)
    def label_of(image_id: str) -> np.ndarray:
        return data.target(data.index_of(image_id)).numpy()

    return SimulatedOracle(label_of, data.info.num_classes,
                           error_rate=cfg.oracle.error_rate, seed=cfg.seed)

