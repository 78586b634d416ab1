"""Per-cycle pictures of what the model doubts and which pixels it asked about.

Two PNGs per image and cycle, at the image's original resolution (what a person sees):
``uncertainty``, the score map as a heat map with a colour bar underneath (score values at
both ends), and ``queries``, the image with every pixel queried so far as a dot coloured
by its cycle, with a legend underneath (the pixels this cycle chose are outlined in white).

Pure functions of their inputs (no loop object): the loop hands over the images, score
maps and queries.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.nn import functional as F

from balseg.fsutil import atomic_write_bytes
from balseg.rundir import RunDir

_CYCLE_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
                  (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
                  (188, 189, 34), (23, 190, 207))
_STRIP = 22


@dataclass
class OverlayItem:
    """One pool image: its id, original-size RGB, its score map over the working valid
    area, and its queries as (y, x, cycle) in original coordinates."""

    image_id: str
    image: np.ndarray  # [H0, W0, 3] uint8
    scores: torch.Tensor  # [h, w] float
    queries: Sequence[tuple[int, int, int]]


def cycle_colour(cycle: int) -> tuple[int, int, int]:
    return _CYCLE_COLOURS[cycle % len(_CYCLE_COLOURS)]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _strip(width: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    strip = Image.new("RGB", (width, _STRIP), (255, 255, 255))
    return strip, ImageDraw.Draw(strip)


def _stack(top: Image.Image, bottom: Image.Image) -> Image.Image:
    out = Image.new("RGB", (top.width, top.height + bottom.height), (255, 255, 255))
    out.paste(top, (0, 0))
    out.paste(bottom, (0, top.height))
    return out


def uncertainty_picture(scores: torch.Tensor, size: tuple[int, int], label: str
                        ) -> Image.Image:
    """Heat map (magma) of ``scores`` resized to ``size`` (H0, W0), with a colour bar."""
    from matplotlib import colormaps

    s = scores.double()[None, None]
    if tuple(s.shape[-2:]) != tuple(size):
        s = F.interpolate(s, size=tuple(size), mode="bilinear", align_corners=False)
    s = s[0, 0]
    finite = s[torch.isfinite(s)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
    norm = ((s - lo) / (hi - lo if hi > lo else 1.0)).clamp(0, 1).nan_to_num(0.0).numpy()
    cmap = colormaps["magma"]
    heat = Image.fromarray((cmap(norm)[..., :3] * 255).astype(np.uint8))
    strip, draw = _strip(heat.width)
    font = ImageFont.load_default()
    left = f"{lo:.3g}"
    right = f"{hi:.3g}"
    lw = int(draw.textlength(left, font=font)) + 6
    rw = int(draw.textlength(right, font=font)) + 6
    bar_w = max(1, heat.width - lw - rw)
    ramp = (cmap(np.linspace(0, 1, bar_w))[:, :3] * 255).astype(np.uint8)
    strip.paste(Image.fromarray(np.repeat(ramp[None], 10, axis=0)), (lw, 2))
    draw.text((2, 2), left, fill=(0, 0, 0), font=font)
    draw.text((lw + bar_w + 4, 2), right, fill=(0, 0, 0), font=font)
    if bar_w > 80:
        draw.text((lw + 2, 12), label[: bar_w // 6], fill=(0, 0, 0), font=font)
    return _stack(heat, strip)


def queries_picture(image: np.ndarray, queries: Sequence[tuple[int, int, int]],
                    new_cycle: int) -> Image.Image:
    """The image with its queried pixels as dots coloured by cycle, and a legend."""
    base = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(base)
    r = max(2, round(min(base.size) / 120))
    for y, x, c in sorted(queries, key=lambda q: q[2]):
        cx, cy = x + 0.5, y + 0.5
        outline = (255, 255, 255) if c == new_cycle else (0, 0, 0)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=outline, fill=cycle_colour(c))
    strip, sdraw = _strip(base.width)
    font = ImageFont.load_default()
    x = 4
    for c in sorted({q[2] for q in queries}):
        text = f"cycle {c}" + (" (new)" if c == new_cycle else "")
        sdraw.ellipse((x, 6, x + 10, 16), fill=cycle_colour(c),
                      outline=(0, 0, 0) if c != new_cycle else (255, 0, 0))
        sdraw.text((x + 14, 5), text, fill=(0, 0, 0), font=font)
        x += 22 + int(sdraw.textlength(text, font=font))
        if x > base.width - 40:
            break
    return _stack(base, strip)


def write_overlays(rundir: RunDir, cycle: int, items: Sequence[OverlayItem],
                   score_name: str) -> list[str]:
    """Write both pictures of every item for ``cycle`` (the model of ``cycle`` scored the
    pool and chose the queries of ``cycle + 1``); returns the file names."""
    written = []
    for item in items:
        h0, w0 = item.image.shape[:2]
        pictures = {
            "uncertainty": uncertainty_picture(item.scores, (h0, w0), f"{score_name} score"),
            "queries": queries_picture(item.image, [q for q in item.queries
                                                    if q[2] <= cycle + 1], cycle + 1),
        }
        for kind, img in pictures.items():
            path = rundir.overlay(cycle, item.image_id, kind)
            atomic_write_bytes(path, _png(img))
            written.append(path.name)
    return written
