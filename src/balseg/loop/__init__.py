"""The active-learning loop, its config and its run directory."""

from balseg.config import ConfigError, RunConfig, load_config, parse_config
from balseg.loop.runner import ActiveLearningLoop, RunResult

__all__ = ["ActiveLearningLoop", "ConfigError", "RunConfig", "RunResult", "load_config",
           "parse_config"]
