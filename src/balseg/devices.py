"""The one place a device name (`device` in a config, `--device` of a command) becomes a
``torch.device``: validated in the config, resolved once per process, and refused with one
line when this machine lacks it (never a CUDA traceback deep inside a run)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from balseg.errors import ConfigError

_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEVICE_NAMES = "`auto` (a GPU when there is one), `cpu`, `cuda`, `cuda:N` or `mps`"


def check_device_name(name: str) -> str:
    """``name`` if it names a device balseg can run on; else a ValueError saying which."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{name!r} is not a device: one of {DEVICE_NAMES}")
    return name


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str, *, what: str = "device",
                   cuda_count: Callable[[], int] = _cuda_count,
                   mps_available: Callable[[], bool] = _mps_available) -> Any:
    """The ``torch.device`` that ``name`` means on this machine; ``auto`` is the first GPU
    when there is one, else the CPU. A device the machine lacks is a ``ConfigError`` naming
    ``what`` (the config key or option) and what is there."""
    import torch

    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{what} {name!r} is not a device: one of {DEVICE_NAMES}")
    count = cuda_count()
    if name == "auto":
        return torch.device("cuda" if count else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if count == 0:
            raise ConfigError(f"{what} {name!r}: this machine has no CUDA device; use auto or"
                              " cpu")
        if device.index is not None and device.index >= count:
            have = ", ".join(f"cuda:{i}" for i in range(count))
            raise ConfigError(f"{what} {name!r}: this machine has {count} CUDA device(s)"
                              f" ({have})")
    if device.type == "mps" and not mps_available():
        raise ConfigError(f"{what} 'mps': Apple's GPU is not available here; use auto or cpu")
    return device
