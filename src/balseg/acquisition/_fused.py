"""BalEnt per chunk as one fused kernel (torch.compile), with an eager fallback.

The eager path (``scores._balent_chunk``) spends most of its time moving ~120 temporaries
of [C, n] float64 through memory; Inductor turns the same arithmetic into one vectorised
loop that reads the mean and the second moment once. Same formulas as ``_beta`` (the
cancellation-free Beta entropy) and ``scores.balent``; results agree with the eager path
to ~1e-9 relative with the same pixel ranking (tested), not bit for bit (the compiler
may contract a * b + c and uses its own vectorised log).

Backend choice: ``BALSEG_ACQ_BACKEND`` = ``auto`` (default), ``compile`` or ``eager``.
``auto`` compiles when the call is large enough to repay the one-off compile (a few seconds
with a warm Inductor cache, ~30 s cold) and a C++ compiler is on PATH (CPU) or the input is
on CUDA; any compile failure logs one warning and falls back to eager for the process.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable

import torch
from torch import Tensor

from balseg.acquisition._beta import _DQ_COEF, _G_COEF, _G_CONST, _M, _PSI_COEF, _Q_COEF, _R_COEF

log = logging.getLogger(__name__)

BACKENDS = ("auto", "compile", "eager")
AUTO_MIN_VALUES = 1 << 22
"""``auto`` compiles calls with at least this many (class, pixel) values (4M: a 512 x 512
image with 19 classes), below which the eager path is fast enough."""

_LN2 = math.log(2.0)
_LOG_1E_32 = math.log(1e-32)
_compiled: Callable[..., Tensor] | None = None
_failed = False


def _horner(u: Tensor, coefs: list[float]) -> Tensor:
    acc = u * coefs[-1] + coefs[-2]
    for c in reversed(coefs[:-2]):
        acc = acc * u + c
    return acc


def _parts(x: Tensor, with_psi: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(r, z, p, s, t, e) of ``_beta._parts``, without scratch buffers."""
    y = (x + float(_M - 1)) * x
    p = _horner(y, _Q_COEF) * y
    s = _horner(y, _DQ_COEF) * (x * 2.0 + float(_M - 1)) / p
    z = x + float(_M)
    t = 1.0 / z
    if with_psi:
        t2 = t * t
        e = _horner(t2, _PSI_COEF) * t2
        r = _horner(t2, _G_COEF) * t - e * float(_M + 1) - t * (0.5 * (_M + 1))
    else:
        e = torch.zeros_like(x)
        r = _horner(t, _R_COEF) * t
    r = r + (_G_CONST - _M) + (x - 1.0) * s
    return r, z, p, s, t, e


def beta_entropy_pure(a: Tensor, b: Tensor, ab: Tensor) -> Tensor:
    """``_beta.beta_entropy`` in out-of-place ops (what the compiler fuses)."""
    ra, za, pa, _, _, _ = _parts(a, False)
    rb, zb, pb, _, _, _ = _parts(b, False)
    rs, zs, ps, ss, ts, es = _parts(ab, True)
    h = ra + rb - rs + es + ss + ts * 0.5
    h = h + torch.log(za * zb / zs) * (_M + 0.5)
    return h - torch.log(pa * pb * zs / ps)


def balent_chunk_pure(mean: Tensor, m2: Tensor, count: int, official_compat: bool,
                      acq: bool, mu_floor: float, var_floor: float, var_cap: float) -> Tensor:
    """BalEnt (or BalEntAcq with ``acq``) of one chunk from the mean and the sum of squared
    deviations ``m2`` ([C, n], float64); see ``scores.balent`` for the definition."""
    tiny = torch.finfo(mean.dtype).tiny
    h_mean = -(torch.clamp(mean, min=tiny).log() * mean).sum(0)
    var = m2 / (count - 1)
    mu = mean.clamp(mu_floor, 1.0 - mu_floor)
    one_minus = 1.0 - mu
    q = mu * one_minus
    var = torch.minimum(var.clamp(min=var_floor), q * var_cap)
    nu = q / var - 1.0
    a = mu * nu + 1.0
    beta = one_minus * nu
    ab = nu + 1.0
    h = beta_entropy_pure(a, beta, ab)
    if official_compat:
        gap = _LOG_1E_32 - (torch.lgamma(a) + torch.lgamma(beta) - torch.lgamma(ab))
        h = h + torch.nn.functional.softplus(gap)
    mj = (h * mu).clamp(max=0.0).sum(0) + h_mean
    b = mj / (h_mean + _LN2)
    if acq:
        big = torch.finfo(b.dtype).max
        b = torch.where(b > 0, (1.0 / b).clamp(max=big), b)
    return b


def backend() -> str:
    name = os.environ.get("BALSEG_ACQ_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"BALSEG_ACQ_BACKEND={name!r}: expected one of {', '.join(BACKENDS)}")
    return name


def _can_compile(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))


def use_compiled(values: int, device: torch.device) -> bool:
    """Whether a call over ``values`` (class, pixel) values runs the fused kernel."""
    name = backend()
    if name == "eager" or _failed:
        return False
    if name == "compile":
        return True
    return values >= AUTO_MIN_VALUES and _can_compile(device)


def fused_balent_chunk(mean: Tensor, m2: Tensor, count: int, official_compat: bool,
                       acq: bool, mu_floor: float, var_floor: float,
                       var_cap: float) -> Tensor | None:
    """The compiled kernel's result, or None if compiling failed (then eager, for good)."""
    global _compiled, _failed
    if _failed:
        return None
    try:
        if _compiled is None:
            _compiled = torch.compile(balent_chunk_pure, dynamic=True, fullgraph=True)
        return _compiled(mean, m2, count, official_compat, acq, mu_floor, var_floor, var_cap)
    except Exception as err:  # compiler missing or broken: never fail a score over speed
        if backend() == "compile":
            raise
        _failed = True
        log.warning("balseg: fused BalEnt kernel unavailable (%s: %s); using the eager path",
                    type(err).__name__, err)
        return None
