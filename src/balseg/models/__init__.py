"""smp models wrapped for MC dropout, and where their pretrained weights come from."""

from balseg.models.checkpoint import ModelFactory, load_checkpoint, read_checkpoint
from balseg.models.segmenter import (
    MCDropoutSegmenter,
    MCMode,
    ModelSpec,
    build_model,
    input_mean_std,
)
from balseg.models.weights import WeightsUnavailableError

__all__ = ["MCDropoutSegmenter", "MCMode", "ModelFactory", "ModelSpec",
           "WeightsUnavailableError", "build_model", "input_mean_std", "load_checkpoint",
           "read_checkpoint"]
