"""Differential entropy of Beta(a, b), fast and without cancellation, in float64.

The textbook form ln B(a, b) - (a-1) psi(a) - (b-1) psi(b) + (a+b-2) psi(a+b) costs six
scalar special-function calls per (class, pixel) (torch.lgamma alone is ~20 ns per value
on one core for small arguments), and loses absolute precision for large a + b: its terms
grow like (a+b) ln(a+b) and cancel down to O(1) (absolute error ~5e-7 at a + b = 2.5e8,
the largest the 1e-9 variance floor allows).

With G(x) = ln Gamma(x) - (x-1) psi(x) + x the entropy is exactly
h = G(a) + G(b) - G(a+b) - psi(a+b) (the +x terms cancel since a + b - (a+b) = 0), and
G(x) = ln(x)/2 + O(1) has no large terms. G and psi are evaluated together with vectorised
tensor ops: the argument is shifted up by 10 (Gamma(x+10) = Gamma(x) P(x) with
P(x) = x (x+1) ... (x+9)) and the asymptotic series at z = x + 10 is summed to 7 terms
(truncation < 5e-16); the logs of all three arguments are merged into two calls. Error
against mpmath: < 1e-14 relative (to max(1, |h|)) for 1e-13 <= a, b <= 1e9 (tested).
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import Tensor

_M = 10  # argument shift
_B2K = [Fraction(1, 6), Fraction(-1, 30), Fraction(1, 42), Fraction(-1, 30), Fraction(5, 66),
        Fraction(-691, 2730), Fraction(7, 6)]  # B_2 .. B_14: next terms < 5e-16 at z >= 10
# psi(z) = ln z - 1/(2z) - sum_k B_2k / (2k) z^-2k
_PSI_COEF = [float(b / (2 * k)) for k, b in enumerate(_B2K, start=1)]
# G(z) = ln(z)/2 + (1 + ln 2 pi)/2 - 1/(2z) + sum_k B_2k/(2k-1) z^(1-2k) - sum_k B_2k/(2k) z^-2k
_G_COEF = [float(b / (2 * k - 1)) for k, b in enumerate(_B2K, start=1)]
_G_CONST = 0.5 * (1.0 + math.log(2.0 * math.pi))
# r(x) of _parts without psi: t * sum_j _R_COEF[j] t^j, the two series interleaved
_R_COEF = [c for o, e in zip(_G_COEF, _PSI_COEF, strict=True) for c in (o, -(_M + 1) * e)]
_R_COEF[0] -= 0.5 * (_M + 1)
# P(x) = Q(y) with y = x (x + 9): the factors pair up as (x+j)(x+9-j) = y + j (9 - j)
_Q_COEF = [40320.0, 12176.0, 1308.0, 60.0, 1.0]  # Q(y) / y, lowest degree first
_DQ_COEF = [40320.0, 24352.0, 3924.0, 240.0, 5.0]  # dQ/dy

_CONSTS: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}


def _const(value: float, like: Tensor) -> Tensor:
    """A cached 0-dim tensor (creating one per op costs more than a small op)."""
    key = (value, like.dtype, like.device)
    t = _CONSTS.get(key)
    if t is None:
        t = _CONSTS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return t


class Scratch:
    """Reusable temporaries of one shape: a fresh large tensor is a fresh mmap on CPU,
    whose page faults cost more than the arithmetic. ``reset()`` hands them all out again."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.shape, self.dtype, self.device = shape, dtype, device
        self._bufs: list[Tensor] = []
        self._next = 0

    def reset(self) -> None:
        self._next = 0

    def new(self) -> Tensor:
        if self._next == len(self._bufs):
            self._bufs.append(torch.empty(self.shape, dtype=self.dtype, device=self.device))
        t = self._bufs[self._next]
        self._next += 1
        return t


def _poly(u: Tensor, coefs: list[float], out: Tensor) -> Tensor:
    """sum_k coefs[k] u^k (len(coefs) >= 2) by Horner's rule, one fused op per degree."""
    torch.addcmul(_const(coefs[-2], u), u, _const(coefs[-1], u), out=out)
    for c in reversed(coefs[:-2]):
        torch.addcmul(_const(c, u), out, u, out=out)
    return out


def _parts(x: Tensor, ws: Scratch, *, with_psi: bool) -> tuple[Tensor, ...]:
    """For x > 0 returns (r, z, p, s, t, e) with z = x + 10, t = 1/z,
    p = x (x+1) ... (x+9), s = sum_k 1/(x+k) = p'/p, e = sum_k B_2k/(2k) t^2k
    (only ``with_psi``, else None), and
    G(x) = (10 + 1/2) ln z - ln p + r,  psi(x) = ln z - t/2 - e - s."""
    y = torch.add(x, float(_M - 1), out=ws.new()).mul_(x)
    p = _poly(y, _Q_COEF, ws.new()).mul_(y)
    s = _poly(y, _DQ_COEF, ws.new())
    w = torch.mul(x, 2.0, out=y).add_(float(_M - 1))  # y is no longer needed
    s.mul_(w).div_(p)  # p'/p = (2x + 9) Q'(y) / Q(y)
    z = torch.add(x, float(_M), out=ws.new())
    t = torch.reciprocal(z, out=ws.new())
    # G(x) = G(z) + M (psi(z) - 1) - ln p + (x - 1) s  (shift identities of Gamma and psi)
    e = None
    if with_psi:
        t2 = torch.mul(t, t, out=w)
        e = _poly(t2, _PSI_COEF, ws.new()).mul_(t2)  # sum_k B_2k/(2k) t^2k
        r = _poly(t2, _G_COEF, ws.new()).mul_(t)  # sum_k B_2k/(2k-1) t^(2k-1)
        r.sub_(e, alpha=_M + 1).sub_(t, alpha=0.5 * (_M + 1))
    else:
        r = _poly(t, _R_COEF, ws.new()).mul_(t)  # the same, one Horner pass in t
    r.add_(_G_CONST - _M).addcmul_(torch.sub(x, 1.0, out=w), s)
    return r, z, p, s, t, e


def beta_entropy(a: Tensor, b: Tensor, ab: Tensor, ws: Scratch | None = None) -> Tensor:
    """Differential entropy of Beta(a, b) (float64, elementwise; a, b > 0, ab = a + b).

    Arguments up to ~1e17 keep the merged products below float64 overflow. The result
    lives in ``ws`` when given.
    """
    if ws is None:
        ws = Scratch(tuple(a.shape), a.dtype, a.device)
    ra, za, pa, _, _, _ = _parts(a, ws, with_psi=False)
    rb, zb, pb, _, _, _ = _parts(b, ws, with_psi=False)
    rs, zs, ps, ss, ts, es = _parts(ab, ws, with_psi=True)
    assert es is not None
    # h = G(a) + G(b) - G(ab) - psi(ab), with psi(ab) = ln zs - ts/2 - es - ss
    h = ra.add_(rb).sub_(rs).add_(es).add_(ss).add_(ts, alpha=0.5)
    za.mul_(zb).div_(zs)
    h.add_(za.log_(), alpha=_M + 0.5)
    pa.mul_(pb).mul_(zs).div_(ps)
    return h.sub_(pa.log_())


def ln_beta(a: Tensor, b: Tensor, ab: Tensor) -> Tensor:
    """ln B(a, b) with ab = a + b, through torch.lgamma."""
    return torch.lgamma(a).add_(torch.lgamma(b)).sub_(torch.lgamma(ab))
