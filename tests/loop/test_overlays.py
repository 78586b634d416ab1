"""Overlays: at the original image resolution, with a legend of the cycles' colours and a
colour bar that says what bright means (issues 18 and 29)."""

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from balseg.loop import ActiveLearningLoop, parse_config
from balseg.loop.overlays import (
    cycle_colour,
    dot_radius,
    legend,
    queries_picture,
    score_rank,
    uncertainty_picture,
)
from balseg.pictures import font_px

from .conftest import tiny_config


def colours(img: Image.Image) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in px) for px in np.asarray(img).reshape(-1, 3)}


def magma(x: float) -> np.ndarray:
    return np.array([int(255 * v) for v in colormaps["magma"](x)[:3]])


def test_uncertainty_map_shows_the_rank_within_the_image_not_the_raw_score():
    """BalEntAcq's scores are negative and skewed: the map shows each pixel's rank (0 =
    the image's lowest score, 1 = its highest), so bright always means 'wanted'."""
    scores = -torch.logspace(1, -1, 16 * 24).reshape(16, 24)  # -10 .. -0.1, most near 0
    img = uncertainty_picture(scores, (16, 24), "balentacq")
    heat = np.asarray(img)[:16].astype(int)
    assert np.abs(heat[-1, -1] - magma(1.0)).max() <= 1  # the highest score: brightest
    assert np.abs(heat[0, 0] - magma(0.0)).max() <= 1  # the lowest: darkest
    # the median pixel is mid-way up the colour map, whatever the scores' scale
    assert np.abs(heat[8, 0] - magma(0.5)).max() <= 12
    rank = score_rank(scores)
    assert float(rank.min()) == 0.0 and float(rank.max()) == 1.0
    assert float(score_rank(torch.full((4, 4), -3.0)).mean()) == 0.5  # nothing stands out


def test_uncertainty_map_is_at_original_size_with_a_colour_bar_in_words():
    scores = torch.linspace(0, 2, 16 * 24).reshape(16, 24)  # working resolution
    img = uncertainty_picture(scores, (300, 400), "entropy")
    assert img.width == 400 and img.height > 300
    strip = np.asarray(img)[300:]
    bar = strip[:font_px(400)]  # the ramp across the width
    assert np.abs(bar[0, 0].astype(int) - magma(0.0)).max() <= 1
    assert np.abs(bar[0, -1].astype(int) - magma(1.0)).max() <= 1
    assert (bar == bar[:1]).all()
    text = strip[font_px(400):]
    assert (text < 100).any()  # the words under it: 0 = confident ... 1 = most wanted
    # the strip grows with the picture: text about 1/30 of the width, never under 12 px
    small = uncertainty_picture(scores, (30, 40), "entropy")
    assert small.height - 30 < img.height - 300


def test_query_dots_and_legend_scale_with_the_image():
    queries = [(40 + 30 * c, 50 + 60 * c, c) for c in range(4)]
    small = queries_picture(np.full((360, 480, 3), 128, np.uint8), queries, new_cycle=3)
    large = queries_picture(np.full((720, 960, 3), 128, np.uint8),
                            [(2 * y, 2 * x, c) for y, x, c in queries], new_cycle=3)
    assert dot_radius(480, 360) >= 7 and dot_radius(960, 720) >= 2 * dot_radius(480, 360) - 1
    # a dot covers its radius around the queried pixel in its cycle's colour
    y, x, c = queries[1]
    r = dot_radius(480, 360)
    patch = np.asarray(small)[y - r // 2: y + r // 2 + 1, x - r // 2: x + r // 2 + 1]
    assert (patch == cycle_colour(c)).all(axis=-1).all()
    assert large.height - 720 > small.height - 360  # the legend's text is larger too
    shown = colours(small.crop((0, 360, 480, small.height)))
    assert all(cycle_colour(c) in shown for c in range(4))


@pytest.mark.parametrize("width", [40, 53, 400])
def test_queries_picture_has_a_legend_with_every_cycle(width):
    image = np.full((37, width, 3), 128, np.uint8)
    queries = [(5 + 4 * c, 3 + 5 * c, c) for c in range(6)]
    img = queries_picture(image, queries, new_cycle=5)
    strip = legend(width, list(range(6)), 5)
    assert img.size == (width, 37 + strip.height)  # original size + the legend strip
    row = round(font_px(width) * 1.5)
    assert strip.height % row == 0 and strip.height <= 6 * row  # rows as the width needs
    shown = colours(img.crop((0, 37, width, img.height)))
    for c in range(6):
        assert cycle_colour(c) in shown, f"cycle {c} missing from the legend"
    y, x, c = queries[2]
    assert tuple(np.asarray(img)[y, x]) == cycle_colour(c)  # the dot sits on its pixel


def test_the_loop_writes_overlays_at_the_original_resolution(tmp_path):
    """Images of 48x64 trained and scored at 32x48: the pictures are 48x64 plus the strip;
    the raw scores are kept beside them."""
    raw = tiny_config(tmp_path / "synth", **{"budget.cycles": 2, "data.size": [32, 48]})
    loop = ActiveLearningLoop.from_config(parse_config(raw, source="t"), tmp_path / "run",
                                          progress=False)
    assert loop.run().status == "done"
    files = sorted((tmp_path / "run" / "overlays").glob("*.png"))
    assert len(files) == 2 * 2 * 2
    for f in files:
        with Image.open(f) as img:
            assert img.width == 64, f.name
            assert img.height > 48
            if f.name.endswith("_queries.png"):
                cycle = int(f.name.split("_")[1])
                assert img.height - 48 == legend(64, list(range(cycle + 2)), cycle + 1).height
                shown = colours(img.crop((0, 48, 64, img.height)))
                assert {cycle_colour(c) for c in range(cycle + 2)} <= shown
            else:
                scores = np.load(f.with_name(f.name.replace("_uncertainty.png",
                                                            "_scores.npy")))
                assert scores.dtype == np.float32 and scores.shape == (32, 48)
                assert (scores < 0).any()  # BalEntAcq's raw values, not the 0..1 picture


def test_a_narrow_colour_bar_writes_its_two_ends_apart():
    """On a 128-pixel picture "0 = confident" and "1 = most wanted" do not fit side by
    side: the right end goes on the line below instead of over the left one."""
    from balseg.pictures import colour_bar

    ramp = np.zeros((128, 3), np.uint8)
    strip = np.asarray(colour_bar(128, ramp, "0 = confident", "1 = most wanted"))
    px = font_px(128)
    first = strip[px + 2: px + 2 + round(px * 1.3)]  # the line under the bar
    dark = (first < 100).all(axis=-1)
    assert dark[:, :40].any() and not dark[:, 100:].any()  # the left label only
    below = strip[px + 2 + round(px * 1.3):]
    assert (below < 100).all(axis=-1)[:, 100:].any()  # the right one, right-aligned, below
