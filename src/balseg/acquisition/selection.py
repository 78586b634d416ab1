"""Which pixels of one image to query, given their scores.

All rules work on the candidate pixels only (True = may be queried: not yet queried, not
padding), never return a pixel twice, and are deterministic given the generator (ties go
to the lower flat index y * W + x). Picks come back in priority order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from balseg.strategy import SELECTIONS as METHODS


def _check_args(scores: Tensor, k: int, candidates: Tensor | None, method: str,
                top_fraction: float, min_spacing: int, power: bool, power_beta: float) -> None:
    if not isinstance(scores, Tensor) or scores.ndim != 2:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a 2-D tensor [H, W], got {shape}")
    if scores.is_complex() or scores.dtype == torch.bool:
        raise ValueError(f"scores must be real numbers, got {scores.dtype}")
    if bool(torch.isnan(scores).any()):
        raise ValueError(f"scores contain {int(torch.isnan(scores).sum())} NaN value(s)")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    if candidates is not None:
        if not isinstance(candidates, Tensor) or candidates.dtype != torch.bool:
            raise ValueError("candidates must be a bool tensor (True = may be queried)")
        if candidates.shape != scores.shape:
            raise ValueError(f"candidates shape {tuple(candidates.shape)} != scores shape "
                             f"{tuple(scores.shape)}")
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; valid: {', '.join(METHODS)}")
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    if isinstance(min_spacing, bool) or not isinstance(min_spacing, int) or min_spacing < 0:
        raise ValueError(f"min_spacing must be an int >= 0, got {min_spacing!r}")
    if power and method != "topk":
        raise ValueError("power=True is a stochastic top-k; it cannot be combined with "
                         f"method={method!r}")
    if power and not bool(torch.isfinite(scores).all()):
        raise ValueError("power=True needs finite scores (it samples ~ score^power_beta)")
    if not (math.isfinite(power_beta) and power_beta > 0):
        raise ValueError(f"power_beta must be a finite number > 0, got {power_beta}")


def _uniform(n: int, generator: torch.Generator | None) -> Tensor:
    """n float64 uniforms on the CPU, drawn on the generator's own device."""
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, generator=generator, device=where, dtype=torch.float64).cpu()


def _ordered_top(keys: Tensor, m: int) -> Tensor:
    """Positions of the m largest keys, by key descending then position ascending."""
    n = keys.numel()
    m = min(m, n)
    if m == 0:
        return torch.zeros(0, dtype=torch.long)
    if m < n:
        thr = torch.topk(keys, m).values[-1]
        above = torch.nonzero(keys > thr).flatten()
        tied = torch.nonzero(keys == thr).flatten()[: m - above.numel()]
        pos = torch.cat([above, tied])
    else:
        pos = torch.arange(n)
    # stable sort keeps ascending positions among equal keys
    order = torch.sort(keys[pos], descending=True, stable=True).indices
    return pos[order]


def _power_keys(values: Tensor, beta: float, generator: torch.Generator | None) -> Tensor:
    """Gumbel-top-k keys for sampling without replacement with probability ~ s^beta.

    Kirsch et al. (TMLR 2023): key = beta * ln s + Gumbel(0, 1). A score <= 0 has weight
    0 (key -inf, picked only after every positive one). Scores that can be negative
    (margin, BalEntAcq below zero) are shifted by the candidates' minimum first, so the
    weights are (s - min s)^beta: the order of the scores is kept and the lowest pixel
    gets weight 0.
    """
    s = values.to(torch.float64)
    low = float(s.min()) if s.numel() else 0.0
    if low < 0:
        s = s - low
    u = _uniform(s.numel(), generator).clamp_(min=1e-300)
    gumbel = u.log_().neg_().log_().neg_()
    return torch.log(s).mul_(beta).add_(gumbel)


def _round_robin(labels: Tensor, keys: Tensor) -> Tensor:
    """Keys that order pixels class by class in turns: the highest-keyed pixel of every
    class first (classes by that key), then each class's second, and so on."""
    order = torch.sort(keys, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    for c in torch.unique(labels):
        members = order[labels[order] == c]  # this class's pixels, best key first
        rank[members] = torch.arange(members.numel())
    return keys - 2.0 * rank.to(keys.dtype)  # keys lie in [0, 1): rank dominates


def _contour_first(pool: Tensor, candidates: Tensor | None, shape: tuple[int, int],
                   keys: Tensor) -> Tensor:
    """Keys that put the pool's contour first: pool pixels with a candidate pixel outside
    the pool among their 8 neighbours (the edge of the high-score region), in key order,
    then the rest of the pool. Queried and padding pixels are not outside: a region does
    not gain an edge where a pixel was already asked about."""
    h, w = shape
    inside = torch.zeros(h * w, dtype=torch.bool)
    inside[pool] = True
    outside = ~inside if candidates is None else candidates.reshape(-1).cpu() & ~inside
    near = F.max_pool2d(outside.view(1, 1, h, w).float(), 3, stride=1, padding=1)
    on_edge = near.view(-1)[pool] > 0
    return keys + on_edge.to(keys.dtype)  # keys lie in [0, 1): the edge dominates


def _greedy_spaced(order: Tensor, ys: Tensor, xs: Tensor, shape: tuple[int, int], k: int,
                   spacing: int) -> list[int]:
    """Walk ``order`` and keep a pixel unless a kept one is within Chebyshev distance
    < spacing; loops over picks (k is small), scans the order in vectorised windows."""
    blocked = torch.zeros(shape, dtype=torch.bool)
    oy, ox = ys[order], xs[order]
    r, h, w = spacing - 1, shape[0], shape[1]
    kept: list[int] = []
    pos, n = 0, order.numel()
    while len(kept) < k and pos < n:
        window = 64
        while pos < n:
            free = ~blocked[oy[pos : pos + window], ox[pos : pos + window]]
            hit = torch.nonzero(free)
            if hit.numel():
                pos += int(hit[0, 0])
                break
            pos += window
            window *= 2
        else:
            break
        y, x = int(oy[pos]), int(ox[pos])
        kept.append(pos)
        blocked[max(0, y - r) : min(h, y + r + 1), max(0, x - r) : min(w, x + r + 1)] = True
        pos += 1
    return kept


@torch.no_grad()
def select_pixels(
    scores: Tensor,
    k: int,
    *,
    candidates: Tensor | None = None,
    method: str = "topk",
    top_fraction: float = 0.05,
    min_spacing: int = 0,
    power: bool = False,
    power_beta: float = 1.0,
    generator: torch.Generator | None = None,
    classes: Tensor | None = None,
) -> Tensor:
    """Pick up to k pixels of one image; returns LongTensor ``[n, 2]`` of (y, x) rows.

    n = min(k, number of candidates), fewer only when ``min_spacing`` leaves no room.

    - ``method="topk"``: the k highest scores.
    - ``method="pixelpick"`` (PixelPick, Shin et al. 2021): the top ``top_fraction`` of
      candidates by score (at least k of them), then k uniformly at random among those.
    - ``method="classes"``: PixelPick's pool (the top ``top_fraction``), then spread over
      the predicted classes (``classes [H, W]``, the argmax of the mean prediction): one
      random pixel of each class present in the pool, in random class order, then a second
      of each, and so on. Queries reach every predicted class of the uncertain region
      instead of following its largest class.
    - ``method="contour"``: PixelPick's pool, drawn from its contour first: the pool pixels
      next to a candidate outside the pool, i.e. the edge of each high-score region, at
      random (the rest of the pool only when the edge has fewer than k pixels). Samples
      along the uncertainty contours instead of the inside of the uncertain blobs
      ("diverse samples along entropy contours", Didari et al. 2024).
    - ``power=True`` (with topk): stochastic power acquisition (Kirsch et al., TMLR 2023),
      k drawn without replacement with probability proportional to score^power_beta (see
      ``_power_keys`` for scores <= 0); with ``entropy`` or ``bald`` scores this is
      PowerEntropy / PowerBALD. A plain top-k batch from one model is otherwise dominated
      by near-duplicate pixels.
    - ``min_spacing``: picks are at Chebyshev distance >= min_spacing from each other
      (greedy in priority order); 0 or 1 = no constraint.
    - ``generator`` seeds pixelpick and power; results are deterministic given it.
    """
    _check_args(scores, k, candidates, method, top_fraction, min_spacing, power, power_beta)
    if method == "classes" and (not isinstance(classes, Tensor)
                                or classes.shape != scores.shape):
        raise ValueError("method 'classes' needs the predicted classes [H, W] of the image")
    device = scores.device
    h, w = scores.shape
    flat = scores.detach().reshape(-1).cpu()
    if candidates is None:
        cand = torch.arange(h * w)
    else:
        cand = torch.nonzero(candidates.reshape(-1).cpu()).flatten()
    values = flat[cand]
    take = min(k, cand.numel())
    if take == 0:
        return torch.zeros((0, 2), dtype=torch.long, device=device)

    if method in ("pixelpick", "classes", "contour"):
        # (the 1e-9 keeps 0.1 * 400 from rounding up to 41 through float error)
        n_top = min(cand.numel(), max(take, math.ceil(top_fraction * cand.numel() - 1e-9)))
        cand = cand[_ordered_top(values, n_top)]
        keys = _uniform(cand.numel(), generator)  # uniform keys = a random order
        if method == "classes":
            assert classes is not None
            keys = _round_robin(classes.reshape(-1).cpu()[cand], keys)
        elif method == "contour":
            keys = _contour_first(cand, candidates, (h, w), keys)
    elif power:
        keys = _power_keys(values, power_beta, generator)
    else:
        keys = values

    if min_spacing <= 1:
        picked = cand[_ordered_top(keys, take)]
    else:
        order = _ordered_top(keys, keys.numel())
        ys, xs = torch.div(cand, w, rounding_mode="floor"), cand % w
        kept = _greedy_spaced(order, ys, xs, (h, w), take, min_spacing)
        picked = cand[order[torch.tensor(kept, dtype=torch.long)]]
    yx = torch.stack([torch.div(picked, w, rounding_mode="floor"), picked % w], dim=1)
    return yx.to(device)


def select_pixels_batched(
    scores: Tensor,
    k: int,
    *,
    candidates: Tensor | None = None,
    **kwargs: object,
) -> list[Tensor]:
    """``select_pixels`` for each image of ``scores [B, H, W]``: k pixels per image.

    One shared generator (in kwargs) is consumed image after image, so the result is
    deterministic given it.
    """
    if not isinstance(scores, Tensor) or scores.ndim != 3:
        raise ValueError("scores must be a 3-D tensor [B, H, W]")
    if candidates is not None and (not isinstance(candidates, Tensor)
                                   or candidates.shape != scores.shape):
        raise ValueError("candidates must be a bool tensor shaped like scores [B, H, W]")
    return [
        select_pixels(scores[b], k, candidates=None if candidates is None else candidates[b],
                      **kwargs)  # type: ignore[arg-type]
        for b in range(scores.shape[0])
    ]
