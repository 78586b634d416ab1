"""Acquisition: per-pixel scores from MC-dropout samples, and pixel selection.

Samples are probabilities ``[T, C, *S]``; every score also accepts an ``MCMoments`` that
the samples were streamed into (memory independent of T) and returns one value per
element of S, higher = more worth labeling. Which scores exist, and what each needs, is
the registry's (``balseg.acquisition.registry``).

Torch-heavy submodules load on first use, so that the config and the report can read the
registry without importing torch.
"""

from typing import TYPE_CHECKING, Any

from balseg._lazy import lazy_getattr
from balseg.acquisition.registry import (
    STATS,
    ScoreSpec,
    get_spec,
    register_score,
    score_names,
    unregister_score,
)

_LAZY = {
    "MCMoments": "moments",
    **{name: "scores" for name in (
        "bald", "balent", "balentacq", "entropy", "get_score", "least_confidence", "margin",
        "mean_std", "random", "required_stats", "variation_ratio")},
    "select_pixels": "selection",
    "select_pixels_batched": "selection",
}

if TYPE_CHECKING:
    from balseg.acquisition.moments import MCMoments
    from balseg.acquisition.scores import (
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


_lazy = lazy_getattr(__name__, _LAZY)


def __getattr__(name: str) -> Any:
    if name == "SCORE_NAMES":  # the registered scores now (a registered score included)
        return score_names()
    return _lazy(name)


__all__ = [
    "SCORE_NAMES",
    "STATS",
    "MCMoments",
    "ScoreSpec",
    "bald",
    "balent",
    "balentacq",
    "entropy",
    "get_score",
    "get_spec",
    "least_confidence",
    "margin",
    "mean_std",
    "random",
    "register_score",
    "required_stats",
    "score_names",
    "select_pixels",
    "select_pixels_batched",
    "unregister_score",
    "variation_ratio",
]
