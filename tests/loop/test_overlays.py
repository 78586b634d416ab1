"""Overlays: at the original image resolution, with a legend of the cycles' colours and a
colour bar of the scores (issue 18)."""

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from balseg.loop import ActiveLearningLoop, parse_config
from balseg.loop.overlays import (
    _ROW,
    _STRIP,
    cycle_colour,
    legend,
    queries_picture,
    uncertainty_picture,
)

from .conftest import tiny_config


def colours(img: Image.Image) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in px) for px in np.asarray(img).reshape(-1, 3)}


def test_uncertainty_map_is_at_original_size_with_a_colour_bar():
    scores = torch.linspace(0, 2, 16 * 24).reshape(16, 24)  # working resolution
    img = uncertainty_picture(scores, (37, 53), "balentacq score")
    assert img.size == (53, 37 + _STRIP)
    bar = np.asarray(img)[37:45]  # the colour map across the width, 8 px high
    ends = [tuple(int(255 * v) for v in colormaps["magma"](x)[:3]) for x in (0.0, 1.0)]
    assert tuple(bar[0, 0]) == ends[0] and tuple(bar[0, -1]) == ends[1]
    assert (bar == bar[:1]).all()  # the same ramp in every row of the bar
    text = np.asarray(img)[45:]
    assert (text < 100).any()  # the two end values are written under it


@pytest.mark.parametrize("width", [40, 53, 400])
def test_queries_picture_has_a_legend_with_every_cycle(width):
    image = np.full((37, width, 3), 128, np.uint8)
    queries = [(5 + 4 * c, 3 + 5 * c, c) for c in range(6)]
    img = queries_picture(image, queries, new_cycle=5)
    strip = legend(width, list(range(6)), 5)
    assert img.size == (width, 37 + strip.height)  # original size + the legend strip
    assert strip.height % _ROW == 0 and (strip.height > _ROW) == (width < 400)
    shown = colours(img.crop((0, 37, width, img.height)))
    for c in range(6):
        assert cycle_colour(c) in shown, f"cycle {c} missing from the legend"
    y, x, c = queries[2]
    assert tuple(np.asarray(img)[y, x]) == cycle_colour(c)  # the dot sits on its pixel


def test_the_loop_writes_overlays_at_the_original_resolution(tmp_path):
    """Images of 48x64 trained and scored at 32x48: the pictures are 48x64 plus the strip."""
    raw = tiny_config(tmp_path / "synth", **{"budget.cycles": 2, "data.size": [32, 48]})
    loop = ActiveLearningLoop.from_config(parse_config(raw, source="t"), tmp_path / "run",
                                          progress=False)
    assert loop.run().status == "done"
    files = sorted((tmp_path / "run" / "overlays").glob("*.png"))
    assert len(files) == 2 * 2 * 2
    for f in files:
        with Image.open(f) as img:
            assert img.width == 64, f.name
            extra = img.height - 48
            if f.name.endswith("_uncertainty.png"):
                assert extra == _STRIP
            else:
                cycle = int(f.name.split("_")[1])
                assert extra == legend(64, list(range(cycle + 2)), cycle + 1).height
                shown = colours(img.crop((0, 48, 64, img.height)))
                assert {cycle_colour(c) for c in range(cycle + 2)} <= shown
