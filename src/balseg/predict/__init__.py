"""Applying a run's model: ``balseg predict``, ``balseg export-model`` and ``load_run``.

Light on purpose: importing this package loads no torch (the CLI registers its commands
from it); ``load_run``, ``Run`` and ``Prediction`` load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {"load_run": "api", "Run": "api", "Prediction": "api",
         "predict_to_folder": "job", "PredictSettings": "job",
         "export_model": "export", "read_metadata": "export"}

if TYPE_CHECKING:
    from .api import Prediction, Run, load_run
    from .export import export_model, read_metadata
    from .job import PredictSettings, predict_to_folder


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PredictSettings", "Prediction", "Run", "export_model", "load_run",
           "predict_to_folder", "read_metadata"]
