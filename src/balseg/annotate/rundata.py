"""What the annotation tools need from a run directory: class list, colours, pool images.

Why a separate module: the web app, the CLI and the Label Studio / CVAT interop all resolve
an ``image_id`` of the label store to a file, and that is the one place where a path reaches
the file system. Every path is resolved (symlinks followed) and must lie inside the
dataset's root, so no request, export or import can be steered to another file.

``dataset.json`` (see docs/architecture.md) may carry an ``"images"`` mapping
``{image_id: path}``; relative paths are taken from the dataset root (or the run directory
when it has none). Without the mapping, ``balseg.data.open_source`` is asked lazily.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balseg.labels.store import LabelStore

DATASET_FILE = "dataset.json"
LABELS_FILE = "labels.sqlite"


class RunDataError(ValueError):
    """The run directory cannot be used (missing or malformed files); the message says why."""


class ImageAccessError(LookupError):
    """An image id that is unknown, or whose file lies outside the dataset root."""

    def __init__(self, message: str, *, forbidden: bool = False) -> None:
        super().__init__(message)
        self.forbidden = forbidden


def _default_palette(n: int) -> list[tuple[int, int, int]]:
    """Distinct colours for datasets that ship none (golden-angle hues)."""
    import colorsys

    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


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
class RunData:
    """Read-only view of a run directory for annotation (class list, palette, images)."""

    run_dir: Path
    spec: dict[str, Any]
    class_names: tuple[str, ...]
    palette: list[tuple[int, int, int]]
    root: Path
    _images: dict[str, Path] | None = None
    _source: Any = None
    _index: dict[str, int] | None = None
    _sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, run_dir: str | Path) -> RunData:
        run_dir = Path(run_dir)
        ds = run_dir / DATASET_FILE
        if not run_dir.is_dir():
            raise RunDataError(f"run directory does not exist: {run_dir}")
        if not ds.is_file():
            raise RunDataError(f"{ds} is missing: is {run_dir} a balseg run directory?")
        try:
            spec = json.loads(ds.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunDataError(f"cannot read {ds}: {err}") from err
        if not isinstance(spec, dict):
            raise RunDataError(f"{ds} must hold a JSON object")
        root = _resolve_root(run_dir, spec.get("root"))
        data = cls(run_dir=run_dir, spec=spec, class_names=(), palette=[], root=root)
        images = spec.get("images")
        if images is not None:
            if not isinstance(images, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in images.items()
            ):
                raise RunDataError(f"{ds}: 'images' must map image ids to path strings")
            data._images = {k: root / v for k, v in images.items()}
        names = spec.get("class_names")
        if names is None:
            names = list(data._open_source().info.class_names)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise RunDataError(f"{ds}: 'class_names' must be a non-empty list of strings")
        data.class_names = tuple(names)
        palette = spec.get("palette")
        if palette is None and spec.get("class_names") is None:
            palette = [list(map(int, c)) for c in data._open_source().info.palette]
        if palette is None:
            data.palette = _default_palette(len(names))
        else:
            try:
                data.palette = [(int(c[0]), int(c[1]), int(c[2])) for c in palette]
            except (TypeError, ValueError, IndexError) as err:
                raise RunDataError(f"{ds}: 'palette' must be a list of [r, g, b]") from err
            if len(data.palette) < len(names):
                raise RunDataError(
                    f"{ds}: 'palette' has {len(data.palette)} colours for {len(names)} classes"
                )
        return data

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def open_store(self) -> LabelStore:
        """The run's label database; refused when absent (the app must not invent a run)."""
        path = self.run_dir / LABELS_FILE
        if not path.is_file():
            raise RunDataError(
                f"{path} is missing: start the run first (balseg run) so it writes its queries"
            )
        return LabelStore(path, num_classes=self.num_classes)

    # -- images ---------------------------------------------------------------------------
    def _open_source(self) -> Any:
        """The dataset adapter, opened on first use (it may be slow or heavy to import)."""
        with self._lock:
            if self._source is None:
                from balseg.data import open_source  # lazy: only runs without "images"

                s = self.spec
                try:
                    self._source = open_source(
                        s["dataset"], s.get("root"), s.get("split"), **(s.get("options") or {})
                    )
                except KeyError as err:
                    raise RunDataError(f"dataset.json lacks {err}") from err
            return self._source

    def _raw_path(self, image_id: str) -> Path:
        if self._images is not None:
            try:
                return self._images[image_id]
            except KeyError:
                raise ImageAccessError(f"no image with id {image_id!r} in this run") from None
        src = self._open_source()
        with self._lock:
            if self._index is None:
                self._index = {src.image_id(i): i for i in range(len(src))}
        if image_id not in self._index:
            raise ImageAccessError(f"no image with id {image_id!r} in this run")
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
        real = Path(os.path.realpath(raw))
        root = self.allowed_root()
        if not real.is_relative_to(root):
            raise ImageAccessError(
                f"image {image_id!r} resolves outside the dataset root", forbidden=True
            )
        if not real.is_file():
            raise ImageAccessError(f"image file of {image_id!r} is missing")
        return real

    def image_size(self, image_id: str) -> tuple[int, int]:
        """(width, height) from the file header, cached."""
        if image_id not in self._sizes:
            from PIL import Image

            try:
                with Image.open(self.image_path(image_id)) as im:
                    self._sizes[image_id] = im.size
            except OSError as err:
                raise ImageAccessError(f"image of {image_id!r} cannot be read: {err}") from err
        return self._sizes[image_id]

    def image_relpath(self, image_id: str) -> str:
        """The image's path relative to the dataset root, '/'-separated (names for tools)."""
        real = self.image_path(image_id)
        return real.relative_to(self.allowed_root()).as_posix()
