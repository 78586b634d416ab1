"""Acquisition: per-pixel scores from MC-dropout samples, and pixel selection.

Samples are probabilities ``[T, C, *S]``; every score also accepts an ``MCMoments`` that
the samples were streamed into (memory independent of T) and returns one value per
element of S, higher = more worth labeling.
"""

from balseg.acquisition.moments import STATS, MCMoments
from balseg.acquisition.scores import (
    SCORE_NAMES,
    bald,
    balent,
    balentacq,
    entropy,
    get_score,
    least_confidence,
    margin,
    mean_std,
    random,
    required_stats,
    variation_ratio,
)
from balseg.acquisition.selection import select_pixels, select_pixels_batched

__all__ = [
    "SCORE_NAMES",
    "STATS",
    "MCMoments",
    "bald",
    "balent",
    "balentacq",
    "entropy",
    "get_score",
    "least_confidence",
    "margin",
    "mean_std",
    "random",
    "required_stats",
    "select_pixels",
    "select_pixels_batched",
    "variation_ratio",
]
