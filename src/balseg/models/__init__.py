"""smp models wrapped for MC dropout, and where their pretrained weights come from."""

from balseg.models.segmenter import (
    MCDropoutSegmenter,
    MCMode,
    ModelSpec,
    build_model,
    input_mean_std,
)
from balseg.models.weights import WeightsUnavailableError

__all__ = ["MCDropoutSegmenter", "MCMode", "ModelSpec", "WeightsUnavailableError",
           "build_model", "input_mean_std"]
