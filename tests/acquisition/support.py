"""Test inputs and an independent float64 reference for BalEnt (numpy + scipy only)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats


def dirichlet_samples(rng: np.random.Generator, samples: int, classes: int, pixels: int,
                      concentration: float) -> np.ndarray:
    """MC-like samples ``[T, C, N]``: per pixel a random mean, samples Dirichlet around it."""
    means = rng.dirichlet(np.ones(classes), size=pixels)  # [N, C]
    alpha = concentration * means + 1e-3
    draws = np.stack([rng.dirichlet(a, size=samples) for a in alpha], axis=-1)  # [T, C, N]
    return draws / draws.sum(axis=1, keepdims=True)


def softmax_samples(generator: torch.Generator, samples: int, classes: int,
                    shape: tuple[int, ...], scale: float = 3.0, noise: float = 1.0,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[T, C, *shape]`` softmax of fixed random logits plus per-sample noise."""
    base = torch.randn(classes, *shape, generator=generator, dtype=torch.float64) * scale
    noisy = base + noise * torch.randn(samples, classes, *shape, generator=generator,
                                       dtype=torch.float64)
    return noisy.softmax(dim=1).to(dtype)


def reference_balent(probs: np.ndarray, official_compat: bool = False) -> np.ndarray:
    """BalEnt of ``[T, C, N]`` as specified, on scipy.stats.beta(...).entropy(), float64.

    Written from the definition, independently of balseg: mean and unbiased variance over
    T, mean clamped to [1e-9, 1 - 1e-9], variance floored at 1e-9 then capped at
    (1 - 1e-3) mu (1 - mu), moment fit, h of Beta(alpha + 1, beta), H of the plain mean.
    """
    p = probs.astype(np.float64)
    mean = p.mean(axis=0)
    var = p.var(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h_mean = -np.where(mean > 0, mean * np.log(mean), 0.0).sum(axis=0)
    mu = np.clip(mean, 1e-9, 1 - 1e-9)
    var = np.minimum(np.maximum(var, 1e-9), (1 - 1e-3) * mu * (1 - mu))
    alpha = mu**2 * (1 - mu) / var - mu
    beta = alpha * (1 - mu) / mu
    h = stats.beta(alpha + 1, beta).entropy()
    if official_compat:
        from scipy.special import betaln

        ln_b = betaln(alpha + 1, beta)
        h = h - ln_b + np.log(np.exp(ln_b) + 1e-32)
    mj = np.minimum(mu * h, 0).sum(axis=0) + h_mean
    return mj / (h_mean + math.log(2))


def reference_balentacq(probs: np.ndarray) -> np.ndarray:
    be = reference_balent(probs)
    with np.errstate(divide="ignore"):
        return np.where(be > 0, 1 / be, be)


def two_class_pair(d: float, repeats: int = 1) -> torch.Tensor:
    """T = 2 * repeats samples of one pixel: [0.5 + d, 0.5 - d] and [0.5 - d, 0.5 + d].

    Both classes have mean 1/2 and unbiased variance 2 d^2 repeats / (2 repeats - 1).
    """
    a = [0.5 + d, 0.5 - d]
    b = [0.5 - d, 0.5 + d]
    return torch.tensor([a, b] * repeats, dtype=torch.float64).reshape(2 * repeats, 2, 1)
