"""balseg: pixel-level Bayesian active learning for semantic segmentation.

``balseg.load_run(path)`` opens a run directory from Python (docs/predict.md); it loads on
first use, so ``import balseg`` stays light (no torch).
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Run", "__version__", "load_run"]

if TYPE_CHECKING:
    from balseg.predict.api import Run, load_run


def __getattr__(name: str) -> Any:
    if name in ("load_run", "Run"):
        from balseg.predict import api

        return getattr(api, name)
    raise AttributeError(f"module 'balseg' has no attribute {name!r}")
