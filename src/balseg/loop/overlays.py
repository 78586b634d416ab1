"""Per-cycle pictures of what the model doubts and which pixels it asked about.

Two PNGs per image and cycle, at the image's original resolution (what a person sees),
each with a strip underneath sized to the picture (``balseg.pictures``):

- ``uncertainty``: how much the model wants each pixel labelled, as a heat map from 0
  (confident: the lowest score in this image) to 1 (most wanted: the highest), i.e. the
  rank of the pixel's score within the image. Raw scores have no common scale (BalEntAcq's
  are negative, entropy's are in nats), and "bright = asked" must hold for every score; the
  raw map stays beside the picture as ``cycle_XXX_<image>_scores.npy`` (float32, working
  resolution);
- ``queries``: the image with every pixel queried so far as a dot coloured by its cycle
  (the pixels this cycle's model chose, the next cycle's queries, ringed in white), with a
  legend of every cycle's colour.

Pure functions of their inputs (no loop object): the loop hands over the images, score
maps and queries.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.nn import functional as F

from balseg.fsutil import atomic_write_bytes
from balseg.pictures import colour_bar, stack, swatch_legend
from balseg.rundir import RunDir

_CYCLE_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
                  (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
                  (188, 189, 34), (23, 190, 207))
WANTED_LEFT, WANTED_RIGHT = "0 = confident", "1 = most wanted"


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


def score_rank(scores: torch.Tensor) -> torch.Tensor:
    """Each pixel's score as its rank within the map, scaled to 0..1 (ties share their
    mean rank; a constant map is 0.5 everywhere; non-finite scores are 0)."""
    s = scores.double().cpu().numpy()
    finite = np.isfinite(s)
    out = np.zeros(s.shape)
    values = s[finite]
    if values.size:
        uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        mean_rank = first + (counts - 1) / 2.0
        out[finite] = mean_rank[inverse] / max(values.size - 1, 1) if uniq.size > 1 else 0.5
    return torch.from_numpy(out)


def wanted_caption(score_name: str) -> str:
    return (f"how much the model wants each pixel labelled: the rank of its {score_name}"
            " score within this image")


def uncertainty_picture(scores: torch.Tensor, size: tuple[int, int], score_name: str
                        ) -> Image.Image:
    """Heat map (magma) of the scores' rank within the image (``score_rank``), resized to
    ``size`` (H0, W0), with a colour bar saying what 0 and 1 mean."""
    from matplotlib import colormaps

    s = score_rank(scores)[None, None]
    if tuple(s.shape[-2:]) != tuple(size):
        s = F.interpolate(s, size=tuple(size), mode="bilinear", align_corners=False)
    norm = s[0, 0].clamp(0, 1).numpy()
    heat = Image.fromarray((colormaps["magma"](norm)[..., :3] * 255).astype(np.uint8))
    ramp = (colormaps["magma"](np.linspace(0, 1, heat.width))[:, :3] * 255).astype(np.uint8)
    return stack(heat, colour_bar(heat.width, ramp, WANTED_LEFT, WANTED_RIGHT,
                                  wanted_caption(score_name)))


def dot_radius(width: int, height: int) -> int:
    """Query dots grow with the picture: about 1/45 of its shorter side, at least 3 px."""
    return max(3, round(min(width, height) / 45))


def legend(width: int, cycles: Sequence[int], new_cycle: int) -> Image.Image:
    """One dot per cycle in its colour with the cycle's number; the newest cycle (the
    queries this picture's model chose) is marked "(new)"."""
    entries = [(cycle_colour(c), f"cycle {c}" + (" (new)" if c == new_cycle else ""),
                (0, 0, 0)) for c in cycles]
    return swatch_legend(width, entries)


def queries_picture(image: np.ndarray, queries: Sequence[tuple[int, int, int]],
                    new_cycle: int) -> Image.Image:
    """The image with its queried pixels as dots coloured by cycle, and a legend saying
    which colour is which cycle."""
    base = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(base)
    r = dot_radius(*base.size)
    ring = max(1, r // 3)
    for y, x, c in sorted(queries, key=lambda q: q[2]):
        cx, cy = x + 0.5, y + 0.5
        if c == new_cycle:
            draw.ellipse((cx - r - ring, cy - r - ring, cx + r + ring, cy + r + ring),
                         fill=(255, 255, 255))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(0, 0, 0),
                     fill=cycle_colour(c), width=max(1, ring // 2))
    return stack(base, legend(base.width, sorted({q[2] for q in queries}), new_cycle))


def write_overlays(rundir: RunDir, cycle: int, items: Sequence[OverlayItem],
                   score_name: str) -> list[str]:
    """Write both pictures of every item for ``cycle`` (the model of ``cycle`` scored the
    pool and chose the queries of ``cycle + 1``) and the raw score map beside them;
    returns the file names."""
    written = []
    for item in items:
        h0, w0 = item.image.shape[:2]
        pictures = {
            "uncertainty": uncertainty_picture(item.scores, (h0, w0), score_name),
            "queries": queries_picture(item.image, [q for q in item.queries
                                                    if q[2] <= cycle + 1], cycle + 1),
        }
        raw = rundir.overlay_scores(cycle, item.image_id)
        buf = io.BytesIO()
        np.save(buf, item.scores.float().cpu().numpy())
        atomic_write_bytes(raw, buf.getvalue())
        written.append(raw.name)
        for kind, img in pictures.items():
            path = rundir.overlay(cycle, item.image_id, kind)
            atomic_write_bytes(path, _png(img))
            written.append(path.name)
    return written
