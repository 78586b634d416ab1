"""The built-in synthetic street-scene dataset (no download; the default of ``make demo``).

Each image is a procedurally drawn outdoor scene: sky, ground, brick walls, leafy
vegetation, and two rare, small classes (thin poles and the signs on them). Textures and
colours overlap on purpose (grey walls vs. poles vs. ground, olive vegetation vs. ground),
and the final blur and noise make boundaries ambiguous, so a model is uncertain where a
person's label is most useful, and random pixel sampling visibly under-samples the rare
classes (about 0.9% and 0.45% of the pixels).

The data are written once, in the generic folder layout (see ``adapters.open_folder``),
so the annotation web app can serve the same files: ``<root>/classes.txt``,
``<root>/{train,val}/{images,masks}/<split>_NNNN.png`` and ``<root>/meta.json``. Generation
goes to a temporary sibling folder that is renamed into place only when complete, so a
killed run never leaves a half dataset. Every image has its own RNG seeded by
``(seed, split, index)``: same parameters, identical bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from .adapters import open_folder
from .base import DataError, DatasetInfo, PairSource
from .paths import cache_base

VERSION = "synthetic-v1"
CLASSES = (
    ("sky", (70, 130, 180)),
    ("ground", (152, 118, 84)),
    ("wall", (150, 60, 50)),
    ("vegetation", (60, 160, 40)),
    ("pole", (250, 250, 0)),
    ("sign", (220, 20, 220)),
)
SKY, GROUND, WALL, VEGETATION, POLE, SIGN = range(len(CLASSES))
SYNTHETIC_INFO = DatasetInfo(
    "synthetic", tuple(n for n, _ in CLASSES), np.array([c for _, c in CLASSES], np.uint8)
)
DEFAULTS: dict[str, object] = {"seed": 0, "num_train": 64, "num_val": 24, "size": (96, 128)}
_SPLIT_CODE = {"train": 1, "val": 2}


def _params(seed: int, num_train: int, num_val: int, size: tuple[int, int]) -> dict:
    try:
        h, w = (int(v) for v in size)
        seed, num_train, num_val = int(seed), int(num_train), int(num_val)
    except (TypeError, ValueError):
        raise DataError(f"data.options: synthetic size must be [H, W] and seed, num_train,"
                        f" num_val integers, got size={size!r}, seed={seed!r},"
                        f" num_train={num_train!r}, num_val={num_val!r}") from None
    if h < 32 or w < 32:
        raise DataError(f"data.options: synthetic size must be at least 32x32, got {size}")
    if num_train < 1 or num_val < 1:
        raise DataError("data.options: synthetic num_train and num_val must be >= 1")
    return {
        "version": VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "size": [h, w],
    }


def default_root(
    seed: int = 0, num_train: int = 64, num_val: int = 24, size: tuple[int, int] = (96, 128)
) -> Path:
    """Where ``open_source("synthetic", None, ...)`` keeps the data: the default parameters
    get ``<cache>/synthetic-v1``; others get a folder named after them, never a clash."""
    p = _params(seed, num_train, num_val, size)
    if p == _params(**DEFAULTS):  # type: ignore[arg-type]
        return cache_base() / VERSION
    h, w = p["size"]
    return cache_base() / f"{VERSION}-s{p['seed']}-n{p['num_train']}-{p['num_val']}-{h}x{w}"


def ensure_synthetic(
    root: Path | None = None,
    *,
    seed: int = 0,
    num_train: int = 64,
    num_val: int = 24,
    size: tuple[int, int] = (96, 128),
) -> Path:
    """Generate the dataset at ``root`` unless it is already there; return ``root``.

    An existing folder generated with other parameters is a DataError (never silently
    reused or overwritten).
    """
    params = _params(seed, num_train, num_val, size)
    root = (
        Path(root).expanduser()
        if root is not None
        else default_root(seed, num_train, num_val, size)
    )
    if root.exists():
        _check_existing(root, params)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_dataset(tmp, params)
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.exists():  # a real failure, not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _check_existing(root, params)
    return root


def open_synthetic(root: Path | None, split: str, **options: object) -> PairSource:
    """Generate on first use, then read it like any folder dataset."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        hint = (" (require_masks is an option of data.dataset: folder)"
                if "require_masks" in unknown else "")
        raise DataError(f"data.options: unknown synthetic options {sorted(unknown)}; valid:"
                        f" {sorted(DEFAULTS)}{hint}")
    opts = {**DEFAULTS, **options}
    path = ensure_synthetic(root, **opts)  # type: ignore[arg-type]
    if split not in _SPLIT_CODE:
        raise DataError(f"synthetic split '{split}' not found in {path}: use train or val")
    return open_folder(path, split, name="synthetic")


def _check_existing(root: Path, params: dict) -> None:
    meta = root / "meta.json"
    if not meta.is_file() and (root / "classes.txt").is_file():
        raise DataError(
            f"{root} holds a classes.txt and looks like a folder dataset (your own images):"
            " set data.dataset: folder (configs/folder.yaml is an example); the default"
            " dataset is the built-in synthetic one")
    try:
        found = json.loads(meta.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{root} exists but is not a balseg synthetic dataset ({meta} unreadable: {exc});"
            " for your own images set data.dataset: folder; for the synthetic dataset choose"
            " an empty or new data.root"
        ) from exc
    if found != params:
        raise DataError(
            f"synthetic dataset at {root} was generated with {found}, not {params}; "
            "choose another root or delete it"
        )


def _remove_stale_tmp(root: Path) -> None:
    """Delete temp folders left by killed generations (their process is gone)."""
    for tmp in root.parent.glob(f".{root.name}.tmp-*"):
        try:
            os.kill(int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0]), 0)
            continue  # its process still runs (or is another user's): leave it
        except (ValueError, IndexError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        if time.time() - tmp.stat().st_mtime > 60:
            shutil.rmtree(tmp, ignore_errors=True)


def _write_dataset(out: Path, params: dict) -> None:
    size = tuple(params["size"])
    out.mkdir()
    lines = [f"{name} {r} {g} {b}" for name, (r, g, b) in CLASSES]
    (out / "classes.txt").write_text("\n".join(lines) + "\n")
    for split in ("train", "val"):
        (out / split / "images").mkdir(parents=True)
        (out / split / "masks").mkdir()
        for i in range(params[f"num_{split}"]):
            rng = np.random.default_rng([params["seed"], _SPLIT_CODE[split], i])
            image, label = render_scene(rng, size)  # type: ignore[arg-type]
            stem = f"{split}_{i:04d}"
            Image.fromarray(image).save(out / split / "images" / f"{stem}.png")
            Image.fromarray(label).save(out / split / "masks" / f"{stem}.png")
    (out / "meta.json").write_text(json.dumps(params, sort_keys=True) + "\n")


# --- rendering -------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise: a random grid of spacing ``cell`` px, bilinearly upsampled (~N(0,1))."""
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.standard_normal((gh, gw))
    ys, xs = np.arange(h) / cell, np.arange(w) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    g00, g01 = grid[y0][:, x0], grid[y0][:, x0 + 1]
    g10, g11 = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    out = (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy
    return out / out.std() if out.std() > 0 else out


def _blur(img: np.ndarray) -> np.ndarray:
    """3x3 binomial blur (edge-replicated), mixing colours across class boundaries."""
    k = np.array([0.25, 0.5, 0.25])
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    p = k[0] * p[:-2] + k[1] * p[1:-1] + k[2] * p[2:]
    return k[0] * p[:, :-2] + k[1] * p[:, 1:-1] + k[2] * p[:, 2:]


def render_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One (HxWx3 uint8 image, HxW uint8 label) scene drawn from ``rng``."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    lab = np.zeros((h, w), np.uint8)

    # Sky above a wobbly horizon, ground below.
    horizon = h * rng.uniform(0.35, 0.55) + 3.0 * _smooth_noise(rng, 1, w, w / 3)[0]
    ground = yy >= horizon[None, :]
    lab[ground] = GROUND
    top = np.array([rng.uniform(60, 110), rng.uniform(110, 160), rng.uniform(190, 240)])
    sky_col = top[None, None] + (yy / h)[..., None] * np.array([70.0, 60.0, 10.0])
    clouds = np.clip(_smooth_noise(rng, h, w, rng.uniform(12, 30)) - 0.3, 0, None)
    img[:] = sky_col + clouds[..., None] * rng.uniform(15, 40)
    # Ground: grey-brown, medium-grain texture; some scenes are almost grey (like walls).
    g_col = rng.uniform([95, 85, 70], [150, 130, 110])
    if rng.random() < 0.3:
        g_col[:] = g_col.mean()
    g_tex = 14 * _smooth_noise(rng, h, w, 2.5) + 8 * _smooth_noise(rng, h, w, 9)
    img[ground] = (g_col[None, None] + g_tex[..., None])[ground]

    # One to three brick walls standing on the ground, reaching into the sky.
    for _ in range(rng.integers(1, 4)):
        x0 = rng.uniform(-0.1, 0.8) * w
        x1 = x0 + rng.uniform(0.2, 0.5) * w
        y_top = rng.uniform(0.05, 0.3) * h
        y_bot = float(np.median(horizon)) + rng.uniform(0, 0.12) * h
        m = (xx >= x0) & (xx < x1) & (yy >= y_top) & (yy < y_bot)
        if rng.random() < 0.4:  # grey concrete: close to poles and grey ground
            col = np.full(3, rng.uniform(110, 160))
        else:
            col = rng.uniform([120, 50, 35], [185, 100, 80])
        bh, bw = rng.integers(4, 7), rng.integers(8, 14)
        row = ((yy - y_top) // bh).astype(int)
        mortar = ((yy - y_top) % bh < 1) | (((xx - x0) + (row % 2) * bw / 2) % bw < 1)
        tex = col[None, None] + 6 * _smooth_noise(rng, h, w, 1.5)[..., None]
        tex[mortar] = tex[mortar] * 0.7 + 60
        img[m] = tex[m]
        lab[m] = WALL

    # Vegetation: leafy blobs with fuzzy edges around the horizon and over the ground.
    band = np.exp(-(((yy - horizon[None, :]) / (0.22 * h)) ** 2))
    blob = _smooth_noise(rng, h, w, rng.uniform(10, 22)) + 1.5 * band - rng.uniform(1.2, 2.0)
    veg = blob + 0.3 * _smooth_noise(rng, h, w, 2) > 0
    v_col = rng.uniform([40, 90, 20], [110, 150, 60])
    if rng.random() < 0.3:  # dry, olive vegetation: close to the ground's colour
        v_col = np.array([115.0, 110, 70]) + rng.uniform(-10, 10, 3)
    leaves = 28 * _smooth_noise(rng, h, w, 1.2) + 10 * _smooth_noise(rng, h, w, 4)
    img[veg] = (v_col[None, None] + leaves[..., None] * np.array([0.6, 1.0, 0.5]))[veg]
    lab[veg] = VEGETATION

    # Rare classes: thin grey poles and small saturated signs on them.
    for _ in range(rng.integers(0, 4)):
        pw = rng.integers(1, 4) if w >= 96 else 1
        px = rng.uniform(0.03, 0.95) * w
        p_bot = min(h - 1.0, float(horizon[int(np.clip(px, 0, w - 1))]) + rng.uniform(0.1, 0.4) * h)
        p_top = p_bot - rng.uniform(0.3, 0.55) * h
        m = (xx >= px) & (xx < px + pw) & (yy >= p_top) & (yy < p_bot)
        shade = rng.uniform(95, 150) + 15 * ((xx - px) / max(pw, 1))
        img[m] = np.repeat(shade[m][:, None], 3, axis=1)
        lab[m] = POLE
        if rng.random() < 0.75:
            r = rng.uniform(2.5, 4.5) * h / 96
            cy, cx = p_top + r * 0.8, px + pw / 2
            shape = rng.integers(0, 3)
            if shape == 0:
                s = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
            elif shape == 1:
                s = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                s = np.abs(yy - cy) + np.abs(xx - cx) <= 1.3 * r
            palette = ([200, 30, 30], [30, 60, 190], [230, 200, 30])
            s_col = np.array(palette[rng.integers(0, 3)], float) + rng.uniform(-20, 20, 3)
            img[s] = s_col
            lab[s] = SIGN

    # Global illumination, blur (ambiguous boundaries) and sensor noise.
    img = _blur(img) * rng.uniform(0.75, 1.2) + rng.uniform(-15, 15)
    img += rng.normal(0, 4.0, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), lab
