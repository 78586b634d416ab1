"""Arrays on disk, read item by item: what keeps a run's memory independent of its pool.

A prepared split is a few ``.npy`` files (a standard format: ``numpy.load(path,
mmap_mode="r")`` opens them too). balseg reads them with ``os.pread`` into a fresh buffer
per batch instead of keeping a memory map: a map's touched pages count towards the
process's resident set until the kernel drops them, so scoring a 12 GB pool through a map
shows 12 GB of RSS; reads through the page cache show only the batch, and processes on one
machine (torchrun ranks) still share the cached pages.

``NpyWriter`` writes such a file item by item (``os.pwrite`` from worker threads), so
decoding a split never holds more than the images in flight.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

_HEADER_ALIGN = 64


def _header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """A version 1.0 .npy header (what numpy itself writes for these shapes)."""
    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
         "shape": tuple(int(s) for s in shape)}
    text = repr(d).encode("latin1")
    pad = _HEADER_ALIGN - (10 + len(text) + 1) % _HEADER_ALIGN
    text = text + b" " * pad + b"\n"
    return np.lib.format.MAGIC_PREFIX + bytes([1, 0]) + len(text).to_bytes(2, "little") + text


def npy_nbytes(shape: Sequence[int], dtype: Any) -> int:
    """File size of an .npy of this shape and dtype (header included)."""
    dt = np.dtype(dtype)
    return len(_header(tuple(shape), dt)) + int(np.prod(shape, dtype=np.int64)) * dt.itemsize


class NpyWriter:
    """Create ``path`` as an .npy of ``shape`` and fill it item by item along axis 0.

    The file is allocated up front (sparse where the file system allows); ``write(i, a)``
    is thread-safe (``pwrite`` at a fixed offset); ``close`` flushes it to disk.
    """

    def __init__(self, path: Path, shape: Sequence[int], dtype: Any, fill: int = 0) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        header = _header(self.shape, self.dtype)
        self.offset = len(header)
        self.item_shape = self.shape[1:]
        self.itemsize = int(np.prod(self.item_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(self._fd, header, 0)
            os.ftruncate(self._fd, self.offset + self.shape[0] * self.itemsize)
        except BaseException:
            os.close(self._fd)
            raise
        self._fill = fill

    def write(self, index: int, item: np.ndarray) -> None:
        arr = np.ascontiguousarray(item, dtype=self.dtype)
        if arr.shape != self.item_shape:
            raise ValueError(f"{self.path}: item shape {arr.shape} != {self.item_shape}")
        data = arr.tobytes()
        done = 0
        while done < len(data):
            done += os.pwrite(self._fd, data[done:], self.offset + index * self.itemsize + done)

    def write_flat(self, start: int, values: np.ndarray) -> None:
        """Write a 1-D run of values at element ``start`` (ragged items of a flat array)."""
        data = np.ascontiguousarray(values, dtype=self.dtype).tobytes()
        base, done = self.offset + start * self.dtype.itemsize, 0
        while done < len(data):
            done += os.pwrite(self._fd, data[done:], base + done)

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of an .npy file; ValueError when it is not one."""
    with open(path, "rb") as f:
        major, _minor = np.lib.format.read_magic(f)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif major in (2, 3):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:  # pragma: no cover - numpy raises first
            raise ValueError(f"unknown .npy version {major}")
        if fortran:
            raise ValueError("Fortran-ordered arrays are not supported")
        return tuple(int(s) for s in shape), np.dtype(dtype), f.tell()


_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int32): torch.int32,
                 np.dtype(np.int64): torch.int64, np.dtype(np.float32): torch.float32}


class DiskArray:
    """A read-only .npy array read item by item along axis 0, indexed like a tensor.

    ``a[i]`` (one item), ``a[start:stop]``, ``a[[i, j, ...]]`` read those items and return
    a torch tensor; ``a[i, ...rest]`` applies ``rest`` to the items read. Nothing is cached
    in the process: each call reads from the page cache.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        shape, dtype, offset = read_npy_header(self.path)
        self._shape = shape
        self.np_dtype = dtype
        self.offset = offset
        self.item_shape = shape[1:]
        self.itemsize = int(np.prod(self.item_shape, dtype=np.int64)) * dtype.itemsize
        expected = offset + shape[0] * self.itemsize
        actual = self.path.stat().st_size
        if actual != expected:
            raise ValueError(f"{self.path} is {actual} bytes, its header says {expected}")
        self._fd: int | None = None
        self._pid = -1

    # a DiskArray travels to other processes (torch.multiprocessing, pickling) as its path
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)  # type: ignore[arg-type]

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self._shape)

    @property
    def dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self.np_dtype]

    def __len__(self) -> int:
        return self._shape[0]

    def __repr__(self) -> str:
        return f"DiskArray({str(self.path)!r}, shape={self._shape}, dtype={self.np_dtype})"

    def read(self, index: int) -> np.ndarray:
        """One item as a fresh NumPy array."""
        n = self._shape[0]
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items of {self.path}")
        index %= n
        buf = bytearray(self.itemsize)
        view = memoryview(buf)
        fd, done = self._file(), 0
        while done < self.itemsize:
            got = os.preadv(fd, [view[done:]], self.offset + index * self.itemsize + done)
            if got == 0:
                raise OSError(f"{self.path}: unexpected end of file at item {index}")
            done += got
        return np.frombuffer(buf, dtype=self.np_dtype).reshape(self.item_shape)

    def read_many(self, indices: Sequence[int]) -> np.ndarray:
        out = np.empty((len(indices), *self.item_shape), dtype=self.np_dtype)
        for j, i in enumerate(indices):
            out[j] = self.read(int(i))
        return out

    def __getitem__(self, key: Any) -> torch.Tensor:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            out = torch.from_numpy(self.read(int(key)))
        else:
            if isinstance(key, slice):
                idx: Sequence[int] = range(*key.indices(len(self)))
            elif isinstance(key, torch.Tensor):
                idx = key.tolist()
            else:
                idx = [int(i) for i in key]
            out = torch.from_numpy(self.read_many(idx))
            if rest:
                rest = (slice(None), *rest)
        return out[rest] if rest else out

    def to_tensor(self) -> torch.Tensor:
        """The whole array in memory (small arrays, tests, ``data.in_memory``)."""
        return self[:]

    def numpy(self) -> np.ndarray:
        """The whole array in memory as NumPy (as ``Tensor.numpy``)."""
        return self.read_many(range(len(self)))


class RaggedArray:
    """Items of different shapes stored back to back in one flat .npy (original-size label
    maps of a split whose images differ in size): ``a[i]`` is item i as a tensor."""

    def __init__(self, path: str | Path, shapes: Sequence[Sequence[int]]) -> None:
        self.flat = DiskArray(path)
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        sizes = [int(np.prod(s)) for s in self.shapes]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if self.starts[-1] != len(self.flat):
            raise ValueError(f"{path} holds {len(self.flat)} values, the shapes need "
                             f"{int(self.starts[-1])}")

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self.shapes)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        a, b = int(self.starts[index]), int(self.starts[index + 1])
        flat = self.flat
        buf = bytearray(b - a)
        view, fd, done = memoryview(buf), flat._file(), 0
        while done < b - a:
            got = os.preadv(fd, [view[done:]], flat.offset + a + done)
            if got == 0:
                raise OSError(f"{flat.path}: unexpected end of file")
            done += got
        return torch.from_numpy(np.frombuffer(buf, dtype=np.uint8).reshape(self.shapes[index]))
