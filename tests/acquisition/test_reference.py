"""BalEnt / BalEntAcq against an independent scipy reference and hand-checked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

from balseg.acquisition import (
    bald,
    balent,
    balentacq,
    entropy,
    least_confidence,
    margin,
    mean_std,
    variation_ratio,
)
from balseg.acquisition._beta import beta_entropy
from tests.acquisition.support import (
    dirichlet_samples,
    reference_balent,
    reference_balentacq,
    two_class_pair,
)

LN2 = math.log(2.0)
EULER = 0.5772156649015329


def digamma_int(n: int) -> float:
    """psi(n) = H_{n-1} - gamma for a positive integer n."""
    return sum(1.0 / k for k in range(1, n)) - EULER


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("concentration", [0.5, 5.0, 50.0, 500.0, 5000.0])
def test_matches_scipy_reference_and_keeps_ranking(dtype, concentration):
    rng = np.random.default_rng(int(concentration * 10))
    probs = dirichlet_samples(rng, samples=8, classes=5, pixels=200,
                              concentration=concentration)
    x = torch.from_numpy(probs).to(dtype)
    x = x / x.sum(dim=1, keepdim=True)
    data = x.double().numpy()  # the reference sees exactly the values balseg sees

    ref = reference_balent(data)
    got = balent(x).numpy()
    assert got.dtype == np.float64
    rel = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-3)
    assert rel.max() < 1e-9, rel.max()

    ref_acq = reference_balentacq(data)
    got_acq = balentacq(x).numpy()
    keep = np.abs(ref) > 1e-6  # BalEntAcq jumps at BalEnt = 0
    np.testing.assert_allclose(got_acq[keep], ref_acq[keep], rtol=1e-8)
    assert (np.argsort(got_acq, kind="stable") == np.argsort(ref_acq, kind="stable")).all()


def test_compat_matches_scipy_reference():
    rng = np.random.default_rng(7)
    data = np.concatenate([dirichlet_samples(rng, 6, 4, 100, c) for c in (2.0, 200.0, 2e4)],
                          axis=2)
    ref = reference_balent(data, official_compat=True)
    got = balent(torch.from_numpy(data), official_compat=True).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_hand_checked_two_classes_beta_2_1():
    # T = 4: class 0 takes 0.75, 0.25, 0.75, 0.25 -> mu = 1/2, unbiased var = 1/12.
    # alpha = mu^2 (1 - mu) / var - mu = 1, beta = 1: h(Beta(2, 1)) = 1/2 - ln 2 for
    # both classes, MJEnt = 2 * 1/2 * h + ln 2 = 1/2, H = ln 2.
    p = two_class_pair(0.25, repeats=2)
    assert balent(p).item() == pytest.approx(0.5 / (2 * LN2), rel=1e-13)
    assert balentacq(p).item() == pytest.approx(4 * LN2, rel=1e-13)
    # not 0.5 / (2 H + ln 2): the reference's old double-counted denominator
    assert balent(p).item() != pytest.approx(0.5 / (3 * LN2), rel=1e-3)

    h_sample = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert entropy(p).item() == pytest.approx(LN2, rel=1e-14)
    assert bald(p).item() == pytest.approx(LN2 - h_sample, rel=1e-13)
    assert margin(p).item() == 0.0
    assert least_confidence(p).item() == pytest.approx(0.5)
    assert mean_std(p).item() == pytest.approx(math.sqrt(1 / 12), rel=1e-13)
    assert variation_ratio(p).item() == pytest.approx(0.5)


def test_hand_checked_two_classes_beta_4_3():
    # T = 2, d^2 = 1/56: unbiased var = 2 d^2 = 1/28, alpha = beta = 3 -> Beta(4, 3),
    # h = ln B(4, 3) - 3 psi(4) - 2 psi(3) + 5 psi(7), B(4, 3) = 3! 2! / 6! = 1/60.
    p = two_class_pair(math.sqrt(1 / 56))
    h = -math.log(60) - 3 * digamma_int(4) - 2 * digamma_int(3) + 5 * digamma_int(7)
    assert h == pytest.approx(-0.3443445622, abs=1e-9)
    assert balent(p).item() == pytest.approx((h + LN2) / (2 * LN2), rel=1e-12)


def test_official_compat_changes_sign():
    # mu = 1/2 with alpha + beta = 200: B(101, 100) ~ e^-139.6 is far below the 1e-32
    # floor, so compat raises h from about -1.9 to above 0 and clamps it away.
    p = two_class_pair(math.sqrt(0.125 / 201))
    exact = balent(p).item()
    compat = balent(p, official_compat=True).item()
    h_exact = float(beta_entropy(torch.tensor([101.0], dtype=torch.float64),
                                 torch.tensor([100.0], dtype=torch.float64),
                                 torch.tensor([201.0], dtype=torch.float64)))
    assert exact == pytest.approx((h_exact + LN2) / (2 * LN2), rel=1e-10)
    assert exact < 0 < compat
    assert compat == pytest.approx(0.5, rel=1e-12)  # MJEnt = H = ln 2
    assert balentacq(p).item() == pytest.approx(exact, rel=1e-12)
    assert balentacq(p, official_compat=True).item() == pytest.approx(2.0, rel=1e-12)


def test_compat_equals_exact_when_beta_function_is_large():
    p = two_class_pair(0.25, repeats=2)  # B(2, 1) = 1/2, the 1e-32 floor is invisible
    assert balent(p, official_compat=True).item() == pytest.approx(balent(p).item(), rel=1e-15)


def test_beta_entropy_against_scipy_over_the_domain():
    # a = alpha + 1 >= 1, b and a + b anywhere the clamps allow (b >= 1e-12, a+b <= 2.5e8);
    # scipy's form is accurate where its terms do not cancel (a + b up to ~1e4 here).
    rng = np.random.default_rng(3)
    a = 1 + 10 ** rng.uniform(-12, 3, size=2000)
    b = 10 ** rng.uniform(-12, 3, size=2000)
    got = beta_entropy(*(torch.from_numpy(v) for v in (a, b, a + b))).numpy()
    ref = (special.betaln(a, b) - (a - 1) * special.psi(a) - (b - 1) * special.psi(b)
           + (a + b - 2) * special.psi(a + b))
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-11)
    assert beta_entropy(torch.tensor([2.0]).double(), torch.tensor([1.0]).double(),
                        torch.tensor([3.0]).double()).item() == pytest.approx(0.5 - LN2, abs=1e-14)


@pytest.mark.parametrize(("a", "b", "ref"), [
    # mpmath, 50 digits: log(beta(a, b)) - (a-1) digamma(a) - (b-1) digamma(b)
    #                    + (a+b-2) digamma(a+b)
    (1e8, 1.5e8, -8.9631053847508826327),
    (2.5e8, 1.0, -18.336971479826520537),
    (4e6, 6e6, -7.3536675256501214385),  # scipy 1.17.1 beta(a, b).entropy() returns 0.0
    (1000.0, 1e7, -11.24576283744917959),  # likewise
    (1.000000000001, 1e-12, -999999999971.368999),
    (1.5, 0.5, -0.54841729471054513527),
])
def test_beta_entropy_extreme_parameters(a, b, ref):
    # the textbook form loses ~1e-6 absolute at a + b ~ 1e8 (cancellation); this one not
    args = [torch.tensor([v], dtype=torch.float64) for v in (a, b, a + b)]
    assert beta_entropy(*args).item() == pytest.approx(ref, rel=1e-14, abs=1e-13)
