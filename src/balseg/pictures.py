"""Strips drawn under a picture, sized to it: swatch legends and colour bars (PIL only).

Why sized to the picture: the loop's overlays and ``balseg predict``'s overlays are written
at the image's original resolution and shown scaled (the report shows them a few hundred
pixels wide); a legend in a fixed 11-pixel font is unreadable on a 2048-pixel frame and
huge on a 64-pixel one. ``font_px(width)`` is the one rule both use: about a thirtieth of
the width, never under 12 pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)


def font_px(width: int) -> int:
    """Legend text height for a picture ``width`` pixels wide."""
    return max(12, round(width / 30))


def font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError):  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def stack(top: Image.Image, *below: Image.Image) -> Image.Image:
    """``top`` with each of ``below`` pasted under it, as one RGB picture."""
    height = top.height + sum(b.height for b in below)
    out = Image.new("RGB", (top.width, height), WHITE)
    out.paste(top, (0, 0))
    y = top.height
    for b in below:
        out.paste(b, (0, y))
        y += b.height
    return out


def swatch_legend(width: int, entries: Sequence[tuple[RGB, str, RGB]],
                  px: int | None = None) -> Image.Image:
    """One round swatch per entry (fill colour, text, outline colour) followed by its text,
    wrapped onto as many rows as ``width`` needs; text ``px`` high (``font_px``)."""
    px = px or font_px(width)
    f = font(px)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_h = round(px * 1.5)
    dot = px
    gap = max(4, px // 2)
    sized = [(fill, text, outline, dot + gap // 2 + int(probe.textlength(text, font=f)) + gap)
             for fill, text, outline in entries]
    rows: list[list[tuple[RGB, str, RGB, int]]] = [[]]
    x = gap // 2
    for entry in sized:
        if rows[-1] and x + entry[3] > width:
            rows.append([])
            x = gap // 2
        rows[-1].append(entry)
        x += entry[3]
    strip = Image.new("RGB", (width, row_h * len(rows)), WHITE)
    draw = ImageDraw.Draw(strip)
    line = max(1, px // 8)
    for r, row in enumerate(rows):
        x, y = gap // 2, r * row_h + (row_h - dot) // 2
        for fill, text, outline, w in row:
            draw.ellipse((x, y, x + dot, y + dot), fill=fill, outline=outline, width=line)
            draw.text((x + dot + gap // 2, r * row_h + (row_h - px) // 2 - px // 8), text,
                      fill=BLACK, font=f)
            x += w
    return strip


def colour_bar(width: int, ramp: np.ndarray, left: str, right: str, caption: str = "",
               px: int | None = None) -> Image.Image:
    """The colour ramp (``[width, 3]`` uint8) across the whole width, ``left`` and ``right``
    written under its two ends and ``caption`` under them, wrapped to the width (left out
    where it would take more than three lines)."""
    px = px or font_px(width)
    f = font(px)
    bar_h = max(8, px)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = _wrap(caption, width - 4, draw, f) if caption else []
    if len(lines) > 3:  # too narrow a picture for the words: the two ends must do
        lines = []
    line_h = round(px * 1.3)
    lw, rw = (int(draw.textlength(t, font=f)) for t in (left, right))
    apart = lw + rw + px > width  # too narrow for both ends on one line: right one below
    rows = 1 + int(apart) + len(lines)
    strip = Image.new("RGB", (width, bar_h + line_h * rows + px // 3), WHITE)
    strip.paste(Image.fromarray(np.repeat(np.asarray(ramp, np.uint8)[None], bar_h, axis=0)),
                (0, 0))
    draw = ImageDraw.Draw(strip)
    y = bar_h + px // 6
    draw.text((2, y), left, fill=BLACK, font=f)
    draw.text((max(2, width - rw - 2), y + line_h * int(apart)), right, fill=BLACK, font=f)
    for k, text in enumerate(lines):
        draw.text((2, y + line_h * (k + 1 + int(apart))), text, fill=(60, 60, 60), font=f)
    return strip


def _wrap(text: str, width: int, draw: ImageDraw.ImageDraw, f: object) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=f) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines
