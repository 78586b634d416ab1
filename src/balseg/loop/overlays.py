"""Per-cycle pictures of what the model doubts and which pixels it asked about.

Two PNGs per image and cycle, at the image's original resolution (what a person sees),
each with a strip underneath: ``uncertainty``, the score map as a heat map with a colour
bar (score values at both ends), and ``queries``, the image with every pixel queried so far
as a dot coloured by its cycle (the pixels this cycle chose outlined in white), with a
legend of every cycle's colour, on as many rows as the image's width needs.

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
_STRIP = 22  # height of the colour bar strip
_ROW = 16  # height of one row of the cycle legend


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


def _stack(top: Image.Image, bottom: Image.Image) -> Image.Image:
    out = Image.new("RGB", (top.width, top.height + bottom.height), (255, 255, 255))
    out.paste(top, (0, 0))
    out.paste(bottom, (0, top.height))
    return out


def colour_bar(width: int, lo: float, hi: float, label: str) -> Image.Image:
    """``_STRIP`` pixels high: the colour map across the whole width, the score values of
    its two ends underneath (and the score's name between them where it fits)."""
    from matplotlib import colormaps

    strip = Image.new("RGB", (width, _STRIP), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    ramp = (colormaps["magma"](np.linspace(0, 1, width))[:, :3] * 255).astype(np.uint8)
    strip.paste(Image.fromarray(np.repeat(ramp[None], 8, axis=0)), (0, 0))
    left, right = f"{lo:.3g}", f"{hi:.3g}"
    rw = int(draw.textlength(right, font=font))
    draw.text((1, 9), left, fill=(0, 0, 0), font=font)
    draw.text((max(0, width - rw - 1), 9), right, fill=(0, 0, 0), font=font)
    lw = int(draw.textlength(left, font=font))
    room = width - lw - rw - 12
    if room > 0 and draw.textlength(label, font=font) <= room:
        x = (width - int(draw.textlength(label, font=font))) // 2
        draw.text((x, 9), label, fill=(80, 80, 80), font=font)
    return strip


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
    heat = Image.fromarray((colormaps["magma"](norm)[..., :3] * 255).astype(np.uint8))
    return _stack(heat, colour_bar(heat.width, lo, hi, label))


def legend(width: int, cycles: Sequence[int], new_cycle: int) -> Image.Image:
    """One dot per cycle in its colour with the cycle's number ("cycle 0", or just "3" where
    space is short), wrapped onto as many rows of ``_ROW`` pixels as the width needs; the
    newest cycle's dot is outlined in red and marked "new"."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = []
    for c in cycles:
        text = f"cycle {c}" if width >= 120 else str(c)
        if c == new_cycle:
            text += " new"
        entries.append((c, text, 14 + int(probe.textlength(text, font=font)) + 6))
    rows: list[list[tuple[int, str, int]]] = [[]]
    x = 2
    for entry in entries:
        if rows[-1] and x + entry[2] > width:
            rows.append([])
            x = 2
        rows[-1].append(entry)
        x += entry[2]
    strip = Image.new("RGB", (width, _ROW * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        x, y = 2, r * _ROW
        for c, text, w in row:
            draw.ellipse((x, y + 3, x + 10, y + 13), fill=cycle_colour(c),
                         outline=(255, 0, 0) if c == new_cycle else (0, 0, 0))
            draw.text((x + 13, y + 2), text, fill=(0, 0, 0), font=font)
            x += w
    return strip


def queries_picture(image: np.ndarray, queries: Sequence[tuple[int, int, int]],
                    new_cycle: int) -> Image.Image:
    """The image with its queried pixels as dots coloured by cycle, and a legend saying
    which colour is which cycle."""
    base = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(base)
    r = max(2, round(min(base.size) / 120))
    for y, x, c in sorted(queries, key=lambda q: q[2]):
        cx, cy = x + 0.5, y + 0.5
        outline = (255, 255, 255) if c == new_cycle else (0, 0, 0)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=outline, fill=cycle_colour(c))
    return _stack(base, legend(base.width, sorted({q[2] for q in queries}), new_cycle))


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
