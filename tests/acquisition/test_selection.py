"""select_pixels: top-k, PixelPick, spacing, stochastic power acquisition."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balseg.acquisition import select_pixels, select_pixels_batched


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rows(yx: torch.Tensor) -> list[tuple[int, int]]:
    return [tuple(r) for r in yx.tolist()]


def test_topk_is_the_k_highest_in_order():
    scores = torch.rand(7, 9, generator=gen(0), dtype=torch.float64)
    yx = select_pixels(scores, 5)
    assert yx.dtype == torch.long and yx.shape == (5, 2)
    order = torch.argsort(scores.flatten(), descending=True)[:5]
    assert rows(yx) == [(int(i) // 9, int(i) % 9) for i in order]


def test_ties_go_to_the_lower_raster_index():
    scores = torch.zeros(4, 5)
    scores[3, 4] = 1.0
    assert rows(select_pixels(scores, 4)) == [(3, 4), (0, 0), (0, 1), (0, 2)]
    scores = torch.tensor([[1.0, 2.0, 2.0], [2.0, 0.0, 2.0]])
    assert rows(select_pixels(scores, 3)) == [(0, 1), (0, 2), (1, 0)]


def test_only_candidates_and_k_capped_by_availability():
    scores = torch.arange(12.0).reshape(3, 4)
    cand = torch.zeros(3, 4, dtype=torch.bool)
    cand[0, 1] = cand[2, 0] = cand[1, 3] = True
    assert rows(select_pixels(scores, 10, candidates=cand)) == [(2, 0), (1, 3), (0, 1)]
    assert select_pixels(scores, 0).shape == (0, 2)
    assert select_pixels(scores, 3, candidates=torch.zeros(3, 4, dtype=torch.bool)).shape == (0, 2)


def test_pixelpick_samples_uniformly_from_the_top_fraction():
    scores = torch.rand(20, 20, generator=gen(1), dtype=torch.float64)
    top = set(torch.argsort(scores.flatten(), descending=True)[:40].tolist())  # 10% of 400
    seen = set()
    for seed in range(30):
        yx = select_pixels(scores, 5, method="pixelpick", top_fraction=0.1, generator=gen(seed))
        flat = {y * 20 + x for y, x in rows(yx)}
        assert len(flat) == 5 and flat <= top
        seen |= flat
    assert len(seen) > 30  # not always the same pixels: most of the 40 get drawn
    a = select_pixels(scores, 5, method="pixelpick", top_fraction=0.1, generator=gen(3))
    b = select_pixels(scores, 5, method="pixelpick", top_fraction=0.1, generator=gen(3))
    assert torch.equal(a, b)
    # fewer top pixels than k: the pool is widened to k, so k pixels still come back
    assert select_pixels(scores, 9, method="pixelpick", top_fraction=0.01,
                         generator=gen(0)).shape == (9, 2)


def greedy_reference(scores: torch.Tensor, k: int, spacing: int) -> list[tuple[int, int]]:
    """Plain-Python greedy: best first, skip anything closer than ``spacing``."""
    h, w = scores.shape
    order = sorted(range(h * w), key=lambda i: (-float(scores.flatten()[i]), i))
    kept: list[tuple[int, int]] = []
    for i in order:
        y, x = divmod(i, w)
        if all(max(abs(y - a), abs(x - b)) >= spacing for a, b in kept):
            kept.append((y, x))
        if len(kept) == k:
            break
    return kept


@pytest.mark.parametrize("spacing", [2, 3, 7])
def test_min_spacing_is_greedy_in_score_order(spacing):
    scores = torch.rand(25, 31, generator=gen(spacing), dtype=torch.float64)
    yx = select_pixels(scores, 12, min_spacing=spacing)
    assert rows(yx) == greedy_reference(scores, 12, spacing)
    pts = yx.tolist()
    for i, (y1, x1) in enumerate(pts):
        for y2, x2 in pts[i + 1:]:
            assert max(abs(y1 - y2), abs(x1 - x2)) >= spacing


def test_min_spacing_can_leave_fewer_than_k():
    scores = torch.rand(5, 5, generator=gen(0))
    assert select_pixels(scores, 10, min_spacing=5).shape == (1, 2)
    assert select_pixels(scores, 10, min_spacing=3).shape[0] <= 4


def test_power_sampling_follows_score_to_the_beta():
    # two pixels with scores 1 and 3: P(first pick = second pixel) = 3^b / (1 + 3^b)
    scores = torch.tensor([[1.0, 3.0]])
    for beta in (1.0, 2.0):
        g = gen(int(beta))
        wins = sum(
            select_pixels(scores, 1, power=True, power_beta=beta, generator=g)[0, 1].item()
            for _ in range(2000))
        expected = 3**beta / (1 + 3**beta)
        assert abs(wins / 2000 - expected) < 4 * math.sqrt(expected * (1 - expected) / 2000)


def test_power_is_deterministic_and_approaches_topk_for_large_beta():
    scores = torch.rand(16, 16, generator=gen(4), dtype=torch.float64) + 0.1
    a = select_pixels(scores, 8, power=True, generator=gen(5))
    assert torch.equal(a, select_pixels(scores, 8, power=True, generator=gen(5)))
    assert not torch.equal(a, select_pixels(scores, 8, power=True, generator=gen(6)))
    sharp = select_pixels(scores, 8, power=True, power_beta=1e4, generator=gen(5))
    assert torch.equal(sharp, select_pixels(scores, 8))


def test_power_with_negative_scores_shifts_them():
    # margin-like scores in [-1, 0]: the lowest pixel gets weight 0 and comes last
    scores = torch.tensor([[-1.0, -0.5, -0.2, -0.9]])
    for seed in range(20):
        yx = select_pixels(scores, 4, power=True, generator=gen(seed))
        assert rows(yx)[-1] == (0, 0)
        assert sorted(rows(yx)) == [(0, 0), (0, 1), (0, 2), (0, 3)]


def test_batched_helper_and_device():
    scores = torch.rand(3, 6, 6, generator=gen(7))
    cand = torch.rand(3, 6, 6, generator=gen(8)) > 0.3
    out = select_pixels_batched(scores, 4, candidates=cand, method="pixelpick",
                                top_fraction=0.5, generator=gen(1))
    again = select_pixels_batched(scores, 4, candidates=cand, method="pixelpick",
                                  top_fraction=0.5, generator=gen(1))
    assert len(out) == 3
    for b in range(3):
        assert torch.equal(out[b], again[b])
        assert cand[b][out[b][:, 0], out[b][:, 1]].all()


def test_selection_errors():
    s = torch.rand(4, 4)
    bad = s.clone()
    bad[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        select_pixels(bad, 2)
    with pytest.raises(ValueError, match=r"2-D tensor \[H, W\]"):
        select_pixels(s[None], 2)
    with pytest.raises(ValueError, match="k must be"):
        select_pixels(s, -1)
    with pytest.raises(ValueError, match="unknown selection method"):
        select_pixels(s, 2, method="best")
    with pytest.raises(ValueError, match="cannot be combined"):
        select_pixels(s, 2, method="pixelpick", power=True)
    with pytest.raises(ValueError, match="bool tensor"):
        select_pixels(s, 2, candidates=torch.ones(4, 4))
    with pytest.raises(ValueError, match="candidates shape"):
        select_pixels(s, 2, candidates=torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="top_fraction"):
        select_pixels(s, 2, method="pixelpick", top_fraction=0.0)
    with pytest.raises(ValueError, match="power_beta"):
        select_pixels(s, 2, power=True, power_beta=0.0)
    with pytest.raises(ValueError, match="finite"):
        select_pixels(torch.tensor([[1.0, float("inf")]]), 1, power=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 9), w=st.integers(1, 9), k=st.integers(0, 30),
    seed=st.integers(0, 2**16), levels=st.integers(1, 5),
    method=st.sampled_from(["topk", "pixelpick", "contour", "power"]),
    spacing=st.integers(0, 3), cand_p=st.floats(0.0, 1.0),
)
def test_never_a_duplicate_or_a_non_candidate(h, w, k, seed, levels, method, spacing, cand_p):
    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        g = gen(seed)
        scores = torch.randint(0, levels, (h, w), generator=g).double() - 1.0  # ties, < 0
        cand = torch.rand(h, w, generator=g) < cand_p
        kw = {"power": True} if method == "power" else {"method": method}
        yx = select_pixels(scores, k, candidates=cand, min_spacing=spacing, generator=g, **kw)
        return yx, cand

    yx, cand = draw()
    picked = rows(yx)
    assert len(set(picked)) == len(picked)
    assert all(cand[y, x] for y, x in picked)
    available = int(cand.sum())
    if spacing <= 1:
        assert len(picked) == min(k, available)
    else:
        assert 0 < len(picked) <= min(k, available) or min(k, available) == 0
    assert torch.equal(draw()[0], yx)  # deterministic given the generator


def test_classes_method_spreads_picks_over_the_predicted_classes():
    """Three predicted classes, the top-scored region mostly class 0: pixelpick would draw
    mostly class 0; 'classes' takes one of each class present in the pool before a second."""
    h, w = 20, 20
    scores = torch.zeros(h, w)
    scores[:10] = 1.0  # the uncertain region: rows 0-9
    classes = torch.zeros(h, w, dtype=torch.long)
    classes[:10, 16:18] = 1  # 20 pixels of class 1 inside the region
    classes[:10, 18:] = 2  # and 20 of class 2
    out = select_pixels(scores, 6, method="classes", top_fraction=0.25, classes=classes,
                        generator=torch.Generator().manual_seed(0))
    picked = classes[out[:, 0], out[:, 1]].tolist()
    assert sorted(picked) == [0, 0, 1, 1, 2, 2]  # two rounds over three classes
    assert set(picked[:3]) == {0, 1, 2}
    assert (out[:, 0] < 10).all()  # from the pool only
    again = select_pixels(scores, 6, method="classes", top_fraction=0.25, classes=classes,
                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="needs the predicted classes"):
        select_pixels(scores, 6, method="classes")


def test_contour_method_draws_the_edge_of_the_high_score_region_first():
    """A 10x10 high-score block in a 30x30 image is the pool (100 of 900 = top 1/9):
    'contour' takes its 36 edge pixels before any of its 64 inside pixels, at random."""
    h = w = 30
    scores = torch.zeros(h, w)
    scores[10:20, 10:20] = 1.0
    edge = torch.zeros(h, w, dtype=torch.bool)
    edge[10:20, 10:20] = True
    edge[11:19, 11:19] = False
    out = select_pixels(scores, 36, method="contour", top_fraction=1 / 9, generator=gen(0))
    assert all(edge[y, x] for y, x in rows(out))  # all 36 edge pixels, nothing inside
    assert len(set(rows(out))) == 36
    more = select_pixels(scores, 40, method="contour", top_fraction=1 / 9, generator=gen(0))
    inside = [(y, x) for y, x in rows(more) if not edge[y, x]]
    assert len(inside) == 4 and all(11 <= y < 19 and 11 <= x < 19 for y, x in inside)
    # random along the edge: two generators give two different first picks (not raster order)
    firsts = {rows(select_pixels(scores, 1, method="contour", top_fraction=1 / 9,
                                 generator=gen(s)))[0] for s in range(8)}
    assert len(firsts) > 1
    assert torch.equal(select_pixels(scores, 5, method="contour", top_fraction=1 / 9,
                                     generator=gen(3)),
                       select_pixels(scores, 5, method="contour", top_fraction=1 / 9,
                                     generator=gen(3)))


def test_contour_edges_face_candidates_only():
    """A queried (non-candidate) pixel next to the region does not make an edge: the block's
    left column borders only queried pixels, so the 28 pixels that face candidates (top and
    bottom rows, right column) come first, and none of the left column's inner 8."""
    h = w = 30
    scores = torch.zeros(h, w)
    scores[10:20, 10:20] = 1.0
    cand = torch.ones(h, w, dtype=torch.bool)
    cand[:, :10] = False  # everything left of the block was asked about already
    fraction = 100 / int(cand.sum())
    facing = ({(y, x) for y in (10, 19) for x in range(10, 20)}
              | {(y, 19) for y in range(11, 19)})
    out = select_pixels(scores, 28, candidates=cand, method="contour", top_fraction=fraction,
                        generator=gen(1))
    assert set(rows(out)) == facing
