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
from balseg.data import PreparedSplit, to_work_coords
from balseg.data.base import IGNORE_INDEX, SegmentationSource
from balseg.data.diskarray import DiskArray
from balseg.data.regions import dominant_class
from balseg.labels import SimulatedOracle


@dataclass
class Pool:
    """The unlabeled pool: its prepared split, where there is one the source it came from
    (original images for the overlays), and with ``data.regions`` its region maps."""

    data: PreparedSplit
    source: SegmentationSource | None = None
    regions: torch.Tensor | DiskArray | None = None  # [N, Hp, Wp] int32 (data.regions)

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
    """Answers from the pool's ground truth (read per image from the prepared split); with
    regions, each pixel answers for its region (``region_answers``)."""
    data = pool.data

    @functools.lru_cache(maxsize=64)
    def label_of(image_id: str) -> np.ndarray:
        i = data.index_of(image_id)
        if pool.regions is not None:
            return region_answers(pool, i, cfg.oracle.region_purity)
        return data.target(i).numpy()

    return SimulatedOracle(label_of, data.info.num_classes,
                           error_rate=cfg.oracle.error_rate, seed=cfg.seed)



def region_answers(pool: Pool, index: int, purity: float) -> np.ndarray:
    """What a person shown each pixel's region answers, at the image's original size: the
    region's dominant class in the (working-resolution) mask, IGNORE_INDEX (unknown) where
    no class holds ``purity`` of it."""
    data = pool.data
    assert pool.regions is not None
    h, w = data.valid_size(index)
    regions = pool.regions[index][:h, :w].long().numpy()
    labels = data.labels[index][:h, :w].numpy()
    answer = np.full(int(regions.max()) + 1, IGNORE_INDEX, dtype=np.uint8)
    for r in range(len(answer)):
        c = dominant_class(labels, regions == r, data.info.num_classes, purity)
        if c is not None:
            answer[r] = c
    h0, w0 = data.orig_sizes[index]
    yy, xx = np.meshgrid(np.arange(h0), np.arange(w0), indexing="ij")
    yx = to_work_coords(torch.from_numpy(np.stack([yy.ravel(), xx.ravel()], 1)), (h, w),
                        (h0, w0)).numpy()
    return answer[regions[yx[:, 0], yx[:, 1]]].reshape(h0, w0)
