"""Small file systems of their own for tests of full and read-only disks.

A tmpfs is mounted on a folder of the test's, so the disk that fills up (or refuses writes)
is the test's alone. Mounting needs root, which CI has; elsewhere the test is skipped and
says why. The mount is always undone, even when the test fails.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def mounted_tmpfs(where: Path, *, size: str = "2m", readonly: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``where`` (created), unmounted on exit."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: cannot make a small file system for the test")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the test needs root, as in CI): "
                    + (done.stderr.strip() or f"mount exited {done.returncode}"))
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)  # still open


def fill(folder: Path, name: str = "filler") -> Path:
    """Write a file in ``folder`` until its file system has no byte left; returns it."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        size = 1 << 16
        while size:
            try:
                os.write(fd, b"\0" * size)
            except OSError as err:
                if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                size //= 2
    finally:
        os.close(fd)
    return path
