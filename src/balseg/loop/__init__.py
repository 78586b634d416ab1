"""The active-learning loop, its collaborators and its commands.

Torch-heavy modules load on first use (``balseg.loop.cli`` must import without torch).
"""

import importlib
from typing import TYPE_CHECKING, Any

from balseg.config import ConfigError, RunConfig, load_config, parse_config

_LAZY = {"ActiveLearningLoop": "runner", "RunResult": "runner", "Pool": "parts",
         "Selection": "parts"}

if TYPE_CHECKING:
    from balseg.loop.parts import Pool, Selection
    from balseg.loop.runner import ActiveLearningLoop, RunResult


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ActiveLearningLoop", "ConfigError", "Pool", "RunConfig", "RunResult", "Selection",
           "load_config", "parse_config"]
