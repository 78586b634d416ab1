"""What the annotation tools need from a run directory: class list, colours, pool images.

Why a separate module: the web app, the CLI and the Label Studio / CVAT interop all resolve
an ``image_id`` of the label store to a file, and that is the one place where a path reaches
the file system. Every path is resolved (symlinks followed) and must lie inside the
dataset's root, so no request, export or import can be steered to another file.

``dataset.json`` is read through ``balseg.rundir.RunDir.read_dataset()`` (one reader for
every command). It may carry an ``"images"`` mapping ``{image_id: path}``; relative paths
are taken from the dataset root (or the run directory when it has none). Without the
mapping, ``balseg.data.open_source`` is asked lazily.

Errors are ``balseg.errors`` classes: ``RunDirError`` (and ``MissingFileError``) for a run
directory that cannot be used, ``NotFoundError`` for an unknown or unreadable image,
``ForbiddenError`` for one that resolves outside the dataset root.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balseg.errors import ForbiddenError, MissingFileError, NotFoundError, RunDirError
from balseg.labels.store import LabelStore
from balseg.rundir import DatasetMeta, RunDir


def _default_palette(names: tuple[str, ...] | list[str]) -> list[tuple[int, int, int]]:
    """Colours for datasets that ship none: the folder dataset's (``distinct_palette``)."""
    from balseg.data.meta import distinct_palette  # numpy only, no torch

    return [(int(r), int(g), int(b)) for r, g, b in distinct_palette(len(names), names)]


def _resolve_root(run_dir: Path, root: str | None) -> Path:
    """The dataset root as written by ``balseg run``; a relative one is tried under the run
    directory first, then the working directory (how the user typed it)."""
    if not root:
        return run_dir
    p = Path(root).expanduser()
    if p.is_absolute():
        return p
    return run_dir / p if (run_dir / p).exists() else Path.cwd() / p


@dataclass
class RunImages:
    """Read-only view of a run directory for annotation (class list, palette, images)."""

    rundir: RunDir
    meta: DatasetMeta
    class_names: tuple[str, ...]
    palette: list[tuple[int, int, int]]
    root: Path
    _images: dict[str, Path] | None = None
    _source: Any = None
    _index: dict[str, int] | None = None
    _sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def run_dir(self) -> Path:
        return self.rundir.path

    @classmethod
    def open(cls, run_dir: str | Path) -> RunImages:
        rundir = RunDir(run_dir)
        if not rundir.path.is_dir():
            raise RunDirError(f"run directory does not exist: {rundir.path}")
        meta = rundir.read_dataset()
        ds = rundir.dataset
        root = _resolve_root(rundir.path, meta.root)
        data = cls(rundir=rundir, meta=meta, class_names=(), palette=[], root=root)
        if meta.images is not None:
            data._images = {k: root / v for k, v in meta.images.items()}
        names = meta.class_names
        if names is None:
            names = list(data._open_source().info.class_names)
        if not names:
            raise RunDirError(f"{ds}: 'class_names' must be a non-empty list of strings")
        data.class_names = tuple(names)
        palette = meta.palette
        if palette is None and meta.class_names is None:
            palette = [list(map(int, c)) for c in data._open_source().info.palette]
        if palette is None:
            data.palette = _default_palette(names)
        else:
            if not all(len(c) >= 3 and all(0 <= v <= 255 for v in c[:3]) for c in palette):
                raise RunDirError(f"{ds}: 'palette' must be a list of [r, g, b] (0..255)")
            data.palette = [(int(c[0]), int(c[1]), int(c[2])) for c in palette]
            if len(data.palette) < len(names):
                raise RunDirError(
                    f"{ds}: 'palette' has {len(data.palette)} colours for {len(names)} classes"
                )
        return data

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def open_store(self, *, check: bool = False) -> LabelStore:
        """The run's label database; refused when absent (the app must not invent a run).

        ``check`` reads every page first (SQLite's quick_check), so a damaged file is
        reported before any work rather than in the middle of it.
        """
        path = self.rundir.labels
        if not path.is_file():
            raise MissingFileError(
                f"{path} is missing: start the run first (balseg run) so it writes its queries"
            )
        store = LabelStore(path, num_classes=self.num_classes)
        if check:
            try:
                store.check()
            except BaseException:
                store.close()
                raise
        return store

    # -- images ---------------------------------------------------------------------------
    def _open_source(self) -> Any:
        """The dataset adapter, opened on first use (it may be slow or heavy to import)."""
        with self._lock:
            if self._source is None:
                from balseg.data import open_source  # lazy: only runs without "images"

                m = self.meta
                if not m.dataset or m.split is None:
                    raise RunDirError(f"{self.rundir.dataset} names no dataset and split and"
                                      " has no 'images' mapping: cannot find the images")
                self._source = open_source(m.dataset, m.root, m.split, **(m.options or {}))
            return self._source

    def _raw_path(self, image_id: str) -> Path:
        if self._images is not None:
            try:
                return self._images[image_id]
            except KeyError:
                raise NotFoundError(f"no image with id {image_id!r} in this run") from None
        src = self._open_source()
        with self._lock:
            if self._index is None:
                self._index = {src.image_id(i): i for i in range(len(src))}
        if image_id not in self._index:
            raise NotFoundError(f"no image with id {image_id!r} in this run")
        return Path(src.image_path(self._index[image_id]))

    def allowed_root(self) -> Path:
        """The folder every served image must lie in: the dataset root.

        With an ``images`` mapping it is dataset.json's root (or the run directory); with an
        adapter it is the root the adapter opened (the synthetic dataset's cache folder when
        dataset.json has none).
        """
        if self._images is None:
            src_root = getattr(self._open_source(), "root", None)
            if src_root is not None:
                return Path(os.path.realpath(src_root))
        return Path(os.path.realpath(self.root))

    def image_path(self, image_id: str) -> Path:
        """The real file of a pool image; it must lie inside the dataset root."""
        raw = self._raw_path(image_id)
        if not raw.is_absolute():
            raw = self.root / raw
        try:
            real = Path(os.path.realpath(raw))
        except (OSError, ValueError) as err:
            raise NotFoundError(f"image file of {image_id!r} cannot be resolved: {err}") from None
        if not real.is_relative_to(self.allowed_root()):
            raise ForbiddenError(f"image {image_id!r} resolves outside the dataset root")
        if not real.is_file():
            raise NotFoundError(f"image file of {image_id!r} is missing")
        return real

    def image_size(self, image_id: str) -> tuple[int, int]:
        """(width, height) from the file header, cached."""
        if image_id not in self._sizes:
            from PIL import Image

            path = self.image_path(image_id)
            try:
                with Image.open(path) as im:
                    self._sizes[image_id] = im.size
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                raise NotFoundError(f"image of {image_id!r} cannot be read: {err}") from err
        return self._sizes[image_id]

    def image_relpath(self, image_id: str) -> str:
        """The image's path relative to the dataset root, '/'-separated (names for tools)."""
        real = self.image_path(image_id)
        return real.relative_to(self.allowed_root()).as_posix()
