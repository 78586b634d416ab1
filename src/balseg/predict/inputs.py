"""What ``balseg predict`` reads: image files, folders of them, or a split of the run's dataset.

Every image gets a ``key``: the name its outputs take inside the output folder. For files
and folders the key is the image's path relative to the deepest folder that holds every
input, without its extension (``a/x.png`` and ``b/x.png`` become ``a/x`` and ``b/x``: two
images with the same stem in different folders never overwrite each other). Two images
that differ only in their extension (``x.png``, ``x.jpg``) keep it in their keys
(``x_png``, ``x_jpg``). For a split the key is the image id.

Keys come from the paths as named, never from where symbolic links point: a folder of
links to images elsewhere (``links/a.png -> /data/one.png``) gives the key ``a``, and the
image is read through the link. The same file reached twice (two links, or a link and the
file) is predicted once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from balseg.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""Files a folder input contributes (case-insensitive); a file named on the command line is
read whatever its extension."""


@dataclass(frozen=True)
class Item:
    """One image to predict: its output key, its file and, for a split, its image id."""

    key: str
    path: Path
    image_id: str | None = None


def _safe_part(part: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in part) or "_"


def _safe_key(rel: PurePosixPath) -> str:
    parts = [_safe_part(p) for p in rel.parts if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


def collect_files(inputs: Sequence[Path]) -> list[Item]:
    """The images of ``inputs`` (files, and folders searched recursively), sorted by key.

    A path that does not exist, or a folder without any image, is a DataError naming it.
    """
    if not inputs:
        raise DataError("no INPUT given: name image files or folders, or use --split")
    files: list[Path] = []
    bases: list[Path] = []
    for raw in inputs:
        # absolute and normalised as written, links not followed: keys are names, not targets
        path = Path(os.path.abspath(Path(raw).expanduser()))
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in
                                       p.relative_to(path).parts))
            if not found:
                raise DataError(f"input folder {path} holds no image"
                                f" ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
            bases.append(path)
        elif path.is_file():
            files.append(path)
            bases.append(path.parent)
        else:
            raise DataError(f"input not found: {path}")
    base = Path(os.path.commonpath([str(b) for b in bases]))
    seen: dict[Path, Path] = {}  # the file itself -> the first name it was reached by
    for f in files:  # the same file named twice is predicted once
        seen.setdefault(f.resolve(), f)
    items: dict[str, list[tuple[Path, PurePosixPath]]] = {}
    for resolved, named in seen.items():
        rel = PurePosixPath(named.relative_to(base).as_posix())
        items.setdefault(_safe_key(rel.with_suffix("")), []).append((resolved, rel))
    out: list[Item] = []  # absolute paths: the manifest means the same from any folder
    for key, found_as in items.items():
        if len(found_as) == 1:
            out.append(Item(key, found_as[0][0]))
            continue
        for p, rel in found_as:  # same stem, other extensions: keep the extension in the key
            out.append(Item(_safe_key(rel.with_name(rel.name.replace(".", "_"))), p))
    keys = [i.key for i in out]
    if len(set(keys)) != len(keys):  # pragma: no cover - sanitising merged two names
        dup = next(k for k in keys if keys.count(k) > 1)
        raise DataError(f"two inputs map to the same output name {dup!r}; rename one")
    return sorted(out, key=lambda i: i.key)


def split_items(source: object) -> list[Item]:
    """Every image of a dataset split (a ``SegmentationSource``), keyed by its image id."""
    items = []
    for i in range(len(source)):  # type: ignore[arg-type]
        image_id = source.image_id(i)  # type: ignore[attr-defined]
        items.append(Item(_safe_key(PurePosixPath(image_id)), source.image_path(i),  # type: ignore[attr-defined]
                          image_id))
    keys = [i.key for i in items]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise DataError(f"two image ids of the split map to the output name {dup!r}")
    return items
