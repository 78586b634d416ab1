"""Where balseg keeps generated and prepared data: ``$BALSEG_CACHE`` or ``~/.cache/balseg``.

- ``<cache>/synthetic-v1*``: the built-in synthetic dataset(s), generated on first use;
- ``<cache>/prepared/``: decoded splits (``prepare_split``), unless a config names its own
  folder (``data.cache_dir``). Several processes of one machine share it; put it on a
  local disk with room for 4 bytes per working pixel of every prepared split.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_base() -> Path:
    """``$BALSEG_CACHE`` if set, else ``~/.cache/balseg``."""
    env = os.environ.get("BALSEG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "balseg"


def prepared_dir(cache_dir: str | Path | None = None) -> Path:
    """The folder of prepared splits: ``cache_dir`` (a config's ``data.cache_dir``) if given,
    else ``<cache>/prepared``."""
    return Path(cache_dir).expanduser() if cache_dir else cache_base() / "prepared"
