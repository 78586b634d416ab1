"""The output folder of ``balseg predict``: its files, its manifest and its resume rules.

``<out>/`` holds, per image key ``k`` (docs/predict.md):

| file | content |
| --- | --- |
| ``masks/k.png`` | class ids (8-bit grey, the run's ids 0..C-1) at the original size |
| ``color/k.png`` | the same mask in the run's palette (RGB) |
| ``overlay/k.png`` | the colour mask blended over the image, its classes' legend under it |
| ``uncertainty/k.png`` + ``k.json`` | the score, 16-bit: ``value = lo + v / 65535 * (hi - lo)`` |
| ``uncertainty/k.npy`` | the score as float32 (``--uncertainty-format npy``) |

plus ``manifest.csv`` (one row per image), ``classes.txt`` (``name R G B`` per class: with
``masks/`` it is the ``folder`` dataset's layout) and ``predict.json`` (the run, cycle and
settings the folder's predictions were made with).

Every file is written atomically. An image is done when all its files exist and the
manifest has its row; a resumed command redoes the others. The manifest is rewritten
(atomically) every few seconds and at the end, from the rows it already held and the new
ones: killed at any point, the folder is consistent and the next run completes it.
"""

from __future__ import annotations

import csv
import io
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from balseg.errors import BalsegWarning, ConfigError, DataError
from balseg.fsutil import atomic_write_bytes

MANIFEST = "manifest.csv"
STATE = "predict.json"
CLASSES = "classes.txt"
MASKS, COLOR, OVERLAY, UNCERTAINTY = "masks", "color", "overlay", "uncertainty"
UNCERTAINTY_FORMATS = ("png", "npy")
STATE_FORMAT = 1
SETTINGS = ("checkpoint", "uncertainty", "mc_samples", "with_answers", "class_names")
"""What must match for a resumed command to add to a folder (else ``--overwrite``): the
checkpoint is identified by its content's hash, so a moved run directory still matches."""
OVERLAY_ALPHA = 0.5


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast; masks compress well anyway
    return buf.getvalue()


def colorize(classes: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """HxW class ids -> HxWx3 uint8 colours (ids outside the palette are black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = palette
    return lut[classes]


def blend(image: np.ndarray, colors: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    mixed = image.astype(np.float32) * (1 - alpha) + colors.astype(np.float32) * alpha
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def overlay_picture(image: np.ndarray, classes: np.ndarray, colors: np.ndarray,
                    palette: np.ndarray, class_names: Sequence[str]) -> Image.Image:
    """The colour mask blended over the image (at its size) and, under it, a legend of the
    classes it shows, the largest first (none without class names)."""
    from balseg.pictures import stack, swatch_legend

    picture = Image.fromarray(blend(image, colors))
    if not class_names:
        return picture
    counts = np.bincount(classes.ravel(), minlength=len(class_names))[: len(class_names)]
    shown = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c]]
    entries = [(tuple(int(v) for v in palette[c][:3]), f"{class_names[c]}"
                f" {100 * counts[c] / classes.size:.0f}%", (0, 0, 0)) for c in shown]
    return stack(picture, swatch_legend(picture.width, entries))


def quantize16(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(uint16 map, lo, hi) with ``value = lo + q / 65535 * (hi - lo)`` over finite values;
    non-finite values become 0 (the sidecar says how many)."""
    finite = np.isfinite(values)
    if finite.any():
        lo, hi = float(values[finite].min()), float(values[finite].max())
    else:
        lo, hi = 0.0, 0.0
    span = hi - lo
    q = np.zeros(values.shape, np.uint16)
    if span > 0:
        scaled = (values[finite].astype(np.float64) - lo) / span * 65535.0
        q[finite] = np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)
    return q, lo, hi


def read_uncertainty(path: Path) -> np.ndarray:
    """The float32 score map of ``uncertainty/k.png`` (with its sidecar) or ``k.npy``."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path)
    meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    q = np.array(Image.open(path)).astype(np.float64)
    return (meta["lo"] + q / 65535.0 * (meta["hi"] - meta["lo"])).astype(np.float32)


class Layout:
    """The files of one image key under ``out``, given the command's options."""

    def __init__(self, out: Path, *, overlay: bool, uncertainty: str | None,
                 uncertainty_format: str = "png", class_names: Sequence[str] = ()) -> None:
        if uncertainty_format not in UNCERTAINTY_FORMATS:
            raise ConfigError(f"--uncertainty-format {uncertainty_format!r}: one of"
                              f" {', '.join(UNCERTAINTY_FORMATS)}")
        self.out = Path(out)
        self.overlay = overlay
        self.uncertainty = uncertainty
        self.uncertainty_format = uncertainty_format
        self.class_names = list(class_names)

    def path(self, kind: str, key: str, suffix: str = ".png") -> Path:
        return self.out / kind / f"{key}{suffix}"

    def files(self, key: str) -> list[Path]:
        files = [self.path(MASKS, key), self.path(COLOR, key)]
        if self.overlay:
            files.append(self.path(OVERLAY, key))
        if self.uncertainty:
            if self.uncertainty_format == "npy":
                files.append(self.path(UNCERTAINTY, key, ".npy"))
            else:
                files += [self.path(UNCERTAINTY, key), self.path(UNCERTAINTY, key, ".json")]
        return files

    def complete(self, key: str) -> bool:
        return all(p.is_file() for p in self.files(key))

    def write(self, key: str, image: np.ndarray, classes: np.ndarray,
              uncertainty: np.ndarray | None, palette: np.ndarray,
              sidecar: dict[str, Any]) -> None:
        """Every file of one image (each atomically; the mask first)."""
        atomic_write_bytes(self.path(MASKS, key), _png(Image.fromarray(classes)))
        colors = colorize(classes, palette)
        atomic_write_bytes(self.path(COLOR, key), _png(Image.fromarray(colors)))
        if self.overlay:
            atomic_write_bytes(self.path(OVERLAY, key), _png(overlay_picture(
                image, classes, colors, palette, self.class_names)))
        if self.uncertainty and uncertainty is not None:
            if self.uncertainty_format == "npy":
                buf = io.BytesIO()
                np.save(buf, uncertainty.astype(np.float32))
                atomic_write_bytes(self.path(UNCERTAINTY, key, ".npy"), buf.getvalue())
            else:
                q, lo, hi = quantize16(uncertainty)
                meta = {**sidecar, "lo": lo, "hi": hi,
                        "non_finite": int((~np.isfinite(uncertainty)).sum()),
                        "decode": "value = lo + pixel / 65535 * (hi - lo)"}
                # the sidecar before the PNG: a PNG on disk always has its scale
                atomic_write_bytes(self.path(UNCERTAINTY, key, ".json"),
                                   json.dumps(meta, indent=1).encode())
                atomic_write_bytes(self.path(UNCERTAINTY, key), _png(Image.fromarray(q)))


def manifest_columns(class_names: Sequence[str], with_answers: bool) -> list[str]:
    cols = ["image", "path", "width", "height", "mean_confidence", "mean_uncertainty"]
    if with_answers:
        cols.append("answered_pixels")
    return cols + [f"fraction_{name}" for name in class_names]


def manifest_row(key: str, path: str, classes: np.ndarray, confidence: np.ndarray,
                 uncertainty: np.ndarray | None, class_names: Sequence[str],
                 answered: int | None = None) -> dict[str, Any]:
    """One manifest row: mean confidence and uncertainty, and the share of each class."""
    h, w = classes.shape
    counts = np.bincount(classes.ravel(), minlength=len(class_names))[: len(class_names)]
    row: dict[str, Any] = {"image": key, "path": path, "width": w, "height": h,
                           "mean_confidence": f"{float(confidence.mean()):.6f}"}
    if uncertainty is not None:
        finite = uncertainty[np.isfinite(uncertainty)]
        row["mean_uncertainty"] = f"{float(finite.mean()):.6g}" if finite.size else "nan"
    else:
        row["mean_uncertainty"] = ""
    if answered is not None:
        row["answered_pixels"] = answered
    for name, n in zip(class_names, counts, strict=True):
        row[f"fraction_{name}"] = f"{n / (h * w):.6f}"
    return row


class Manifest:
    """``manifest.csv``: rows by image key, merged with what the folder already held."""

    def __init__(self, out: Path, columns: list[str]) -> None:
        self.path = Path(out) / MANIFEST
        self.columns = columns
        self.rows: dict[str, dict[str, Any]] = {}
        self._written = time.monotonic()

    def load(self) -> None:
        """The rows already there; an unreadable or foreign manifest is set aside with a
        warning (its images are then redone)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as err:
            warnings.warn(f"{self.path}: unreadable ({err}); it is rebuilt", BalsegWarning,
                          stacklevel=2)
            return
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames != self.columns:
            warnings.warn(f"{self.path} has other columns than this command writes; it is"
                          " rebuilt and its images redone", BalsegWarning, stacklevel=2)
            return
        for row in reader:
            if row.get("image") and None not in row.values():
                self.rows[row["image"]] = row

    def add(self, row: dict[str, Any]) -> None:
        self.rows[row["image"]] = row

    def discard(self, keys: Sequence[str]) -> None:
        for k in keys:
            self.rows.pop(k, None)

    def write(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        for key in sorted(self.rows):
            writer.writerow(self.rows[key])
        atomic_write_bytes(self.path, buf.getvalue().encode("utf-8"))
        self._written = time.monotonic()

    def write_if_due(self, every_s: float = 10.0) -> None:
        if time.monotonic() - self._written >= every_s:
            self.write()


def read_state(out: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads((Path(out) / STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{Path(out) / STATE}: unreadable ({err}); delete it or use"
                        " --overwrite") from None
    return raw if isinstance(raw, dict) else None


def check_state(out: Path, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """Refuse to add predictions made with other settings to a folder (the manifest would
    mix them); ``--overwrite`` skips this check."""
    if old is None:
        return
    hint = "use --overwrite to redo them, or another --out"
    if old.get("checkpoint") != new.get("checkpoint"):
        raise ConfigError(f"{out} holds predictions of another checkpoint (cycle"
                          f" {old.get('cycle')} of {old.get('run')}): {hint}")
    for key in SETTINGS:
        if old.get(key) != new.get(key):
            raise ConfigError(f"{out} holds predictions made with {key} = {old.get(key)!r},"
                              f" not {new.get(key)!r}: {hint}")


def write_state(out: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(Path(out) / STATE,
                       json.dumps({"format": STATE_FORMAT, **state}, indent=1).encode())


def write_classes(out: Path, class_names: Sequence[str], palette: np.ndarray) -> None:
    lines = [f"{name} {r} {g} {b}" for name, (r, g, b) in zip(class_names, palette.tolist(),
                                                              strict=True)]
    atomic_write_bytes(Path(out) / CLASSES, ("\n".join(lines) + "\n").encode("utf-8"))
