"""Per-pixel acquisition scores from MC-dropout probabilities (higher = more worth labeling).

Every score takes either the samples ``probs [T, C, *S]`` (float32 or float64, any device)
or an ``MCMoments`` that the samples were streamed into, and returns ``[*S]``: float64
for a tensor or a default accumulator (the accumulator's dtype otherwise), on the input's
device. Both routes run the same arithmetic on the same pixel chunks, so a default
(float64) accumulator gives the same scores as the tensor, bit for bit. Entropies are in
nats.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from balseg.acquisition._beta import Scratch, beta_entropy, ln_beta
from balseg.acquisition._checks import (
    as_float_tensor,
    check_probs_shape,
    check_values,
    values_ok,
)
from balseg.acquisition._fused import fused_balent_chunk, fused_chunk_moments, use_compiled
from balseg.acquisition.moments import ChunkStats, MCMoments, chunk_slices
from balseg.acquisition.registry import get_spec

LN2 = math.log(2.0)
MU_FLOOR = 1e-9
"""Means are clamped to [MU_FLOOR, 1 - MU_FLOOR] before the Beta fit."""
VAR_FLOOR = 1e-9
"""Variances are floored here before the Beta fit."""
VAR_CAP = 1.0 - 1e-3
"""Variances are capped at VAR_CAP * mu (1 - mu): the fit's alpha + beta stays >= ~1e-3."""
_LOG_1E_32 = math.log(1e-32)

ProbsOrMoments = Tensor | MCMoments

def required_stats(name: str) -> tuple[str, ...]:
    """The ``MCMoments`` statistics score ``name`` needs (from the registry).

    ``MCMoments(C, S, stats=required_stats(name))`` skips the rest: per sample, entropy
    then costs one sum instead of four statistics (a log per value among them).
    """
    return get_spec(name).stats


def _need_samples(count: int, at_least: int, name: str) -> None:
    if count == 0:
        raise ValueError(f"{name}: no MC samples (T = 0)")
    if count < at_least:
        raise ValueError(f"{name} is variance-based and needs at least {at_least} MC samples, "
                         f"got T = {count}")


@torch.no_grad()
def _reduce(
    x: ProbsOrMoments,
    name: str,
    fn: Callable[[ChunkStats], Tensor],
) -> Tensor:
    """Apply ``fn`` (chunk statistics -> [n] float64 scores) chunk by chunk; what the score
    needs (statistics, minimum samples) comes from its registry entry."""
    spec = get_spec(name)
    need, min_samples = spec.stats, spec.min_samples
    if isinstance(x, MCMoments):
        missing = [s for s in need if s not in x.stats]
        if missing:
            raise ValueError(f"{name} needs stats {missing}; this MCMoments tracks {x.stats}")
        _need_samples(x.count, min_samples, name)
        out = torch.empty(x.num_pixels, dtype=torch.float64, device=x.device)
        for k, sl in enumerate(x.chunk_slices()):
            out[sl] = fn(x.chunk_stats(k))
        if x.dtype != torch.float64:  # e.g. 1/BalEnt of a tiny BalEnt must not become inf
            big = torch.finfo(x.dtype).max
            out.clamp_(-big, big)
        return out.to(x.dtype).reshape(x.spatial_shape)

    probs = as_float_tensor(x, "probs")
    check_probs_shape(probs)
    t, c, spatial = probs.shape[0], probs.shape[1], tuple(probs.shape[2:])
    _need_samples(t, min_samples, name)
    n = math.prod(spatial)
    flat = probs.reshape(t, c, n)
    out = torch.empty(n, dtype=torch.float64, device=probs.device)

    def on_bad() -> None:
        check_values(probs, 1, "probs")  # raises, with indices into the whole tensor

    slices = chunk_slices(c, n, probs.device)
    if need and set(need) <= {"sum", "sumsq"} and n and _fused_wanted(probs):
        done = _reduce_fused(flat, slices, need, fn, out, on_bad)
        if done:
            return out.reshape(spatial)
    local: MCMoments | None = None
    for sl in slices:
        # one accumulator per chunk: exactly the arithmetic MCMoments does on that chunk
        size = sl.stop - sl.start
        if local is None or local.num_pixels != size:
            local = MCMoments(c, (size,), device=probs.device, stats=need)
        else:
            local.reset()
        local._update_one_chunk(flat[:, :, sl], on_bad)
        out[sl] = fn(local.chunk_stats(0))
    return out.reshape(spatial)


def _reduce_fused(flat: Tensor, slices: list[slice], need: tuple[str, ...],
                  fn: Callable[[ChunkStats], Tensor], out: Tensor,
                  on_bad: Callable[[], None]) -> bool:
    """The tensor route with one compiled pass per chunk; False if the kernel is unavailable
    (before any chunk was written: the caller then runs the eager route)."""
    t, c = flat.shape[0], flat.shape[1]
    scratch: dict[int, Scratch] = {}
    for sl in slices:
        res = fused_chunk_moments(flat[:, :, sl], "sumsq" in need)
        if res is None:
            return False
        s1, s2, vals = res
        lo, hi, s_lo, s_hi = vals.tolist()
        if not values_ok(lo, hi, s_lo, s_hi):
            on_bad()
            raise ValueError("bad probabilities")  # on_bad should have raised
        size = sl.stop - sl.start
        ws = scratch.get(size)
        if ws is None:
            ws = scratch[size] = Scratch((c, size), torch.float64, flat.device)
        ws.reset()
        mean = torch.div(s1, t, out=ws.new())
        m2 = None
        if s2 is not None:  # sum (p - mean)^2 = sum p^2 - (sum p)^2 / T, as MCMoments does
            m2 = torch.addcmul(s2, s1, mean, value=-1.0, out=ws.new())
        out[sl] = fn(ChunkStats(count=t, scratch=ws, mean=mean, m2=m2, entropy_sum=None,
                                votes=None))
    return True


def _entropy_of(p: Tensor, ws: Scratch) -> Tensor:
    """-sum_c p_c ln p_c over dim 0; 0 ln 0 = 0 via the clamp (2x faster than xlogy)."""
    tmp = torch.clamp(p, min=torch.finfo(p.dtype).tiny, out=ws.new())
    return tmp.log_().mul_(p).sum(0).neg_()


def entropy(probs_or_moments: ProbsOrMoments) -> Tensor:
    """Predictive entropy H(mean_t p_t): total uncertainty, aleatoric included."""
    return _reduce(probs_or_moments, "entropy", lambda s: _entropy_of(s.mean, s.scratch))


def bald(probs_or_moments: ProbsOrMoments) -> Tensor:
    """BALD mutual information H(mean_t p_t) - mean_t H(p_t) (clamped at 0 against rounding)."""

    def fn(s: ChunkStats) -> Tensor:
        return _entropy_of(s.mean, s.scratch).sub_(s.entropy_sum.div_(s.count)).clamp_(min=0.0)

    return _reduce(probs_or_moments, "bald", fn)


def margin(probs_or_moments: ProbsOrMoments) -> Tensor:
    """Negative gap between the two largest mean probabilities (in [-1, 0])."""

    def fn(s: ChunkStats) -> Tensor:
        # two max reductions: topk along the class dim is several times slower
        mean = s.mean
        top = mean.amax(0)
        is_top = mean == top
        tied = is_top.sum(0) > 1
        second = mean.masked_fill_(is_top, -math.inf).amax(0)
        return torch.where(tied, top, second).sub_(top)

    return _reduce(probs_or_moments, "margin", fn)


def least_confidence(probs_or_moments: ProbsOrMoments) -> Tensor:
    """1 - the largest mean probability."""
    return _reduce(probs_or_moments, "least_confidence",
                   lambda s: torch.rsub(s.mean.amax(0), 1.0))


def mean_std(probs_or_moments: ProbsOrMoments) -> Tensor:
    """Mean over classes of the (unbiased) standard deviation over samples; needs T >= 2."""

    def fn(s: ChunkStats) -> Tensor:
        return s.m2.clamp_(min=0.0).div_(s.count - 1).sqrt_().mean(0)

    return _reduce(probs_or_moments, "mean_std", fn)


def variation_ratio(probs_or_moments: ProbsOrMoments) -> Tensor:
    """1 - (share of samples voting for the modal argmax class); a k-way tie splits a vote."""
    return _reduce(probs_or_moments, "variation_ratio",
                   lambda s: torch.rsub(s.votes.amax(0).div_(s.count), 1.0))


def _fused_wanted(x: ProbsOrMoments) -> bool:
    """Whether this call runs the fused (compiled) BalEnt kernel; see ``_fused``."""
    if isinstance(x, MCMoments):
        if x.device is None:
            return False
        return use_compiled(x.num_pixels * x.num_classes, x.device)
    if isinstance(x, Tensor) and x.dim() >= 2:
        return use_compiled(x[0].numel(), x.device)
    return False


def _balent_chunk(s: ChunkStats, official_compat: bool, *, fused: bool = False,
                  acq: bool = False) -> Tensor:
    if fused:
        assert s.mean is not None and s.m2 is not None
        out = fused_balent_chunk(s.mean, s.m2, s.count, official_compat, acq,
                                 MU_FLOOR, VAR_FLOOR, VAR_CAP)
        if out is not None:
            return out
    b = _balent_chunk_eager(s, official_compat)
    if acq:  # clamp: a subnormal BalEnt would otherwise give inf
        return torch.where(b > 0, b.reciprocal().clamp_(max=torch.finfo(b.dtype).max), b)
    return b


def _balent_chunk_eager(s: ChunkStats, official_compat: bool) -> Tensor:
    ws, mu = s.scratch, s.mean
    h_mean = _entropy_of(mu, ws)  # H of the unclamped mean: equals entropy()
    var = s.m2.div_(s.count - 1)
    mu.clamp_(MU_FLOOR, 1.0 - MU_FLOOR)
    one_minus = torch.neg(mu, out=ws.new()).add_(1.0)
    q = torch.mul(mu, one_minus, out=ws.new())  # Bernoulli variance: the most a Beta can have
    var.clamp_(min=VAR_FLOOR)
    cap = torch.mul(q, VAR_CAP, out=ws.new())
    torch.minimum(var, cap, out=var)
    nu = q.div_(var).sub_(1.0)  # alpha + beta = mu (1 - mu) / var - 1 > 0
    a = torch.mul(mu, nu, out=cap).add_(1.0)  # alpha + 1, alpha = mu^2 (1 - mu) / var - mu
    beta = one_minus.mul_(nu)  # = alpha (1 - mu) / mu
    ab = nu.add_(1.0)  # a + b
    h = beta_entropy(a, beta, ab, ws)
    if official_compat:
        # ln(B + 1e-32) - ln B = softplus(ln 1e-32 - ln B)
        gap = ln_beta(a, beta, ab).neg_().add_(_LOG_1E_32)
        h.add_(torch.logaddexp(gap, torch.zeros((), dtype=gap.dtype, device=gap.device)))
    mj = h.mul_(mu).clamp_(max=0.0).sum(0).add_(h_mean)
    return mj.div_(h_mean.add_(LN2))


def balent(probs_or_moments: ProbsOrMoments, *, official_compat: bool = False) -> Tensor:
    """Balanced Entropy BalEnt = MJEnt / (H + ln 2) (Woo, ICLR 2023); needs T >= 2.

    Per pixel and class: mu_c, var_c = mean and unbiased variance (divide by T - 1) over
    the samples; H = -sum_c mean_c ln mean_c of the plain mean (the same number as
    ``entropy``); h_c = differential entropy of Beta(alpha_c + 1, beta_c) with the moment
    fit alpha_c = mu_c^2 (1 - mu_c) / var_c - mu_c, beta_c = alpha_c (1 - mu_c) / mu_c;
    MJEnt = H + sum_c min(mu_c h_c, 0). Natural logs.

    Keeping the fit valid: mu_c is clamped to [1e-9, 1 - 1e-9]; var_c is floored at 1e-9,
    then capped at (1 - 1e-3) mu_c (1 - mu_c), so var_c < mu_c (1 - mu_c) strictly and
    alpha_c + beta_c >= ~1e-3. The cap wins where the floor exceeds it (means within ~1e-9
    of 0 or 1) and also binds for samples that disagree completely (the unbiased variance
    of one-hot samples exceeds mu (1 - mu)). Why 1e-3: a class with mean and variance on
    the floors near 0 (an absent class) then adds about -1e-6 nats, so even 140 absent
    ADE20K classes shift MJEnt by only ~1e-4; a class with mean on the floor near 1
    (every sample certain) gives BalEnt ~ -1e12: finite, and last in the ranking, as a
    pixel without information should be.

    h_c is computed to double precision with the cancellation-free form in ``_beta`` (no
    floor on ln B). ``official_compat=True`` uses ln(B(a, b) + 1e-32) as the reference
    implementation does; that floor is active whenever alpha + beta exceeds ~100
    (confident, consistent samples), so the two modes can differ even in sign. The
    reference's old denominator bug (H added twice) is not reproduced.
    """
    fused = _fused_wanted(probs_or_moments)
    return _reduce(probs_or_moments, "balent",
                   lambda s: _balent_chunk(s, official_compat, fused=fused))


def balentacq(probs_or_moments: ProbsOrMoments, *, official_compat: bool = False) -> Tensor:
    """BalEntAcq = 1 / BalEnt where BalEnt > 0, else BalEnt; see ``balent``. Needs T >= 2.

    Pixels with a small positive BalEnt come first; all pixels with BalEnt <= 0 rank
    below every positive one.
    """

    fused = _fused_wanted(probs_or_moments)
    return _reduce(probs_or_moments, "balentacq",
                   lambda s: _balent_chunk(s, official_compat, fused=fused, acq=True))


def random(
    probs_or_moments: ProbsOrMoments,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> Tensor:
    """Uniform [0, 1) scores ``[*S]``: the random-sampling baseline.

    ``seed`` draws from a fresh CPU generator, so a seed gives the same scores on every
    device; ``generator`` draws from that generator (on its own device); neither = torch's
    global RNG. The samples are still checked, so a bad input fails here as elsewhere.
    """
    if generator is not None and seed is not None:
        raise ValueError("random: pass either generator or seed, not both")
    if isinstance(probs_or_moments, MCMoments):
        spatial = probs_or_moments.spatial_shape
        device = probs_or_moments.device or torch.device("cpu")
        dtype = probs_or_moments.dtype
    else:
        probs = as_float_tensor(probs_or_moments, "probs")
        check_probs_shape(probs)
        check_values(probs, 1, "probs")
        spatial, device, dtype = tuple(probs.shape[2:]), probs.device, torch.float64
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    where = generator.device if generator is not None else device
    # an accumulator's dtype is drawn directly (float32: the numbers torch.rand gives by
    # default, which is what the pool scorer asks for)
    r = torch.rand(spatial, generator=generator, device=where, dtype=dtype)
    return r.to(device=device)


def get_score(name: str) -> Callable[..., Tensor]:
    """The score function called ``name`` (any registered score)."""
    return get_spec(name).fn
