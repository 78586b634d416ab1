"""Input checks shared by the accumulator and the score functions.

Bad probabilities are the most common way to get silently wrong acquisitions (logits
passed instead of softmax outputs, a NaN from a diverged model), so every sample is
checked before it is used, and the error says what is wrong and where.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# Values may stray this far outside [0, 1] (interpolation, rounding); they are clamped.
RANGE_TOL = 1e-6
# |sum_c p_c - 1| allowed per pixel and sample: loose enough for float16 softmax outputs
# upcast to float32 (about 2.5e-4 worst case), tight enough to catch unnormalised scores.
SUM_TOL = 1e-3


def as_float_tensor(x: object, name: str) -> Tensor:
    """Accept a torch tensor (or a NumPy array) of a floating dtype."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must hold probabilities in a floating dtype, got {x.dtype}")
    return x


def check_probs_shape(probs: Tensor) -> None:
    """``[T, C, *S]`` with at least one spatial dimension and at least two classes."""
    if probs.ndim < 3:
        raise ValueError(
            f"probs must have shape [T, C, *S] (MC samples, classes, at least one spatial "
            f"dimension), got rank {probs.ndim} shape {tuple(probs.shape)}; "
            "for a single pixel use shape [T, C, 1]")
    if probs.shape[0] < 1:
        raise ValueError(f"probs has no MC samples (T = 0), shape {tuple(probs.shape)}")
    if probs.shape[1] < 2:
        raise ValueError(f"probs needs at least two classes on dim 1, shape {tuple(probs.shape)}")


def value_stats(x: Tensor, class_dim: int) -> tuple[float, float, float, float]:
    """(min, max, smallest class sum, largest class sum) of ``x``; one host sync."""
    if x.numel() == 0:
        return 0.0, 0.0, 1.0, 1.0
    # aminmax copies a strided input first; two plain reductions do not
    lo, hi = torch.aminmax(x) if x.is_contiguous() else (x.amin(), x.amax())
    s_lo, s_hi = torch.aminmax(_class_sum(x, class_dim))
    vals = torch.stack([lo.double(), hi.double(), s_lo.double(), s_hi.double()]).tolist()
    return vals[0], vals[1], vals[2], vals[3]


def values_ok(lo: float, hi: float, s_lo: float, s_hi: float) -> bool:
    """Whether ``value_stats`` describe valid probabilities (NaN compares False)."""
    return (lo >= -RANGE_TOL and hi <= 1.0 + RANGE_TOL
            and s_lo >= 1.0 - SUM_TOL and s_hi <= 1.0 + SUM_TOL)


def check_values(x: Tensor, class_dim: int, name: str) -> tuple[float, float]:
    """Raise ValueError unless ``x`` holds finite probabilities summing to 1 over ``class_dim``.

    Returns (min, max) so callers know whether clamping to [0, 1] is needed. Two
    reductions and one host sync on the good path; the diagnosis only runs on bad input.
    """
    lo, hi, s_lo, s_hi = value_stats(x, class_dim)
    if not values_ok(lo, hi, s_lo, s_hi):
        raise ValueError(_diagnose(x, class_dim, name))
    return lo, hi


def _class_sum(x: Tensor, class_dim: int) -> Tensor:
    # float32 sums are exact enough for a 1e-3 check (C * 6e-8); a float64 reduction of a
    # float32 tensor is about 10x slower on CPU, so only half precision is upcast.
    wide = x.dtype in (torch.float32, torch.float64)
    return x.sum(dim=class_dim) if wide else x.sum(dim=class_dim, dtype=torch.float32)


def _first_index(mask: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(mask)[0].tolist())


def _diagnose(x: Tensor, class_dim: int, name: str) -> str:
    n_nan = int(torch.isnan(x).sum())
    if n_nan:
        return (f"{name} contains {n_nan} NaN value(s), first at index "
                f"{_first_index(torch.isnan(x))} (shape {tuple(x.shape)})")
    n_inf = int(torch.isinf(x).sum())
    if n_inf:
        return (f"{name} contains {n_inf} infinite value(s), first at index "
                f"{_first_index(torch.isinf(x))} (shape {tuple(x.shape)})")
    bad = (x < -RANGE_TOL) | (x > 1.0 + RANGE_TOL)
    if bool(bad.any()):
        return (f"{name} must hold probabilities in [0, 1]: {int(bad.sum())} value(s) outside, "
                f"min {float(x.min()):.6g}, max {float(x.max()):.6g}, first at index "
                f"{_first_index(bad)}; pass softmax outputs, not logits")
    sums = _class_sum(x, class_dim)
    dev = (sums - 1.0).abs()
    worst = _first_index(dev == dev.max())
    total = float(sums[worst])
    return (f"{name} must sum to 1 over the class dimension (dim {class_dim}) within "
            f"{SUM_TOL:g}: {int((dev > SUM_TOL).sum())} pixel(s) do not, worst sums to "
            f"{total:.6g} at index {worst} (class dimension removed)")
