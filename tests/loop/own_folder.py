"""A user's own image folder (the ``folder`` dataset), built in a test in a second.

Scenes of three classes a person tells apart at a glance: sky (blue, top third), road (grey,
below) and a car (a red box on the road). ``truth`` is what that person would answer.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("sky", "road", "car")
SIZE = (40, 56)  # H, W: small, and not a multiple of 16 (padding is exercised)
_COLOURS = np.array([[90, 150, 230], [100, 100, 100], [200, 30, 30]], np.uint8)


def scene(name: str, size: tuple[int, int] = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, class mask) of the picture called ``name``; the same name, the same
    picture."""
    h, w = size
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    mask = np.zeros((h, w), np.uint8)
    mask[h // 3:] = 1
    y0, x0 = int(rng.integers(h // 3, h - 10)), int(rng.integers(0, w - 16))
    mask[y0:y0 + 8, x0:x0 + 14] = 2
    image = _COLOURS[mask].astype(np.float64) + rng.normal(0, 8, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_folder(root: Path, *, layout: str = "flat", masks: bool = False, n: int = 6,
                n_val: int = 3, size: tuple[int, int] = SIZE) -> Path:
    """``layout="flat"``: ``root/images`` (and ``root/masks`` with ``masks``);
    ``layout="split"``: ``root/train/images`` (``train/masks`` with ``masks``) and a
    labelled ``root/val/{images,masks}``. Always ``root/classes.txt``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("# one class per line\n" + "\n".join(CLASSES) + "\n")
    if layout == "flat":
        parts = [(root, "photo", n, masks)]
    else:
        parts = [(root / "train", "train", n, masks), (root / "val", "val", n_val, True)]
    for folder, stem, count, with_masks in parts:
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = scene(f"{stem}_{i}", size)
            Image.fromarray(image).save(folder / "images" / f"{stem}_{i}.png")
            if with_masks:
                (folder / "masks").mkdir(exist_ok=True)
                Image.fromarray(mask).save(folder / "masks" / f"{stem}_{i}.png")
    return root


def truth(image_id: str, y: int, x: int) -> int:
    """The class a person answers for pixel (y, x) of ``image_id`` (original resolution)."""
    return int(scene(image_id)[1][y, x])


def fast(**more: object) -> dict:
    """Overrides that make a folder run finish in seconds (tiny model budget)."""
    out = {"threads": 1, "model.encoder_weights": None, "train.steps": 3,
           "train.batch_size": 4, "train.eval_batch_size": 4, "acquisition.mc_samples": 3,
           "acquisition.score_batch_size": 4, "budget.initial_pixels_per_image": 4,
           "budget.pixels_per_cycle": 3, "budget.cycles": 1, "overlay_images": 2}
    out.update(more)
    return out


def set_args(overrides: dict) -> list[str]:
    """``--set key=value`` arguments for the CLI."""
    import yaml

    args = []
    for key, value in overrides.items():
        args += ["--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
                 .removesuffix("\n...").removesuffix(" ...")]
    return args
