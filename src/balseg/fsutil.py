"""Atomic file writes: a crash or a kill leaves the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_open(path: Path, *, size_hint: int | None = None) -> Iterator[BinaryIO]:
    """A binary file in ``path``'s folder that replaces ``path`` once written and synced.

    A full disk is a ``DiskFullError`` naming the file and the space it needed
    (``size_hint`` bytes, when the caller knows); the old file is left untouched and the
    temporary one removed. Temporary files are named ``.<name>.*.tmp``: what a kill leaves
    behind is recognisable (``RunDir.remove_stale_temp_files``).
    """
    from balseg.errors import DiskFullError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from the team
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(path.parent).free
        need = f"{size_hint / 1e6:.1f} MB" if size_hint else "more space"
        raise DiskFullError(f"disk full while writing {path}: it needs {need}, {free / 1e6:.1f}"
                            f" MB are free in {path.parent}; free some space and run the"
                            " command again (the previous version of the file is intact)"
                            ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    """The process's umask (read once, at import: setting it is process-wide, so reading it
    later from a threaded server could race with another thread creating a file)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, size_hint=len(data)) as f:
        f.write(data)
