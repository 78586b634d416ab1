"""The active-learning loop, its collaborators and its commands.

Torch-heavy modules load on first use (``balseg.loop.cli`` must import without torch).
"""

from typing import TYPE_CHECKING

from balseg._lazy import lazy_getattr
from balseg.config import ConfigError, RunConfig, load_config, parse_config

_LAZY = {"ActiveLearningLoop": "runner", "RunResult": "runner", "Pool": "parts",
         "Selection": "parts"}

if TYPE_CHECKING:
    from balseg.loop.parts import Pool, Selection
    from balseg.loop.runner import ActiveLearningLoop, RunResult


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = ["ActiveLearningLoop", "ConfigError", "Pool", "RunConfig", "RunResult", "Selection",
           "load_config", "parse_config"]
