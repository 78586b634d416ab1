"""The active-learning loop, its config and its run directory.

``ActiveLearningLoop`` and ``RunResult`` load on first use: the CLI registers this package's
commands, and ``balseg --help``, ``annotate``, ``export``, ``import`` and ``report`` must
not pay for importing torch.
"""

from typing import Any

from balseg.config import ConfigError, RunConfig, load_config, parse_config

__all__ = ["ActiveLearningLoop", "ConfigError", "RunConfig", "RunResult", "load_config",
           "parse_config"]


def __getattr__(name: str) -> Any:
    if name in ("ActiveLearningLoop", "RunResult"):
        from balseg.loop import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'balseg.loop' has no attribute {name!r}")
