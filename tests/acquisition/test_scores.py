"""Baseline scores, edge cases and input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from balseg.acquisition import (
    SCORE_NAMES,
    MCMoments,
    bald,
    balentacq,
    entropy,
    get_score,
    least_confidence,
    margin,
    mean_std,
    random,
    variation_ratio,
)
from tests.acquisition.support import softmax_samples


def call(name: str, x, **kw):
    if name == "random":
        kw.setdefault("seed", 0)
    return get_score(name)(x, **kw)


def test_score_names_and_get_score():
    assert SCORE_NAMES == ("balentacq", "balent", "entropy", "bald", "margin",
                           "least_confidence", "mean_std", "variation_ratio", "random")
    assert get_score("bald") is bald
    assert get_score("balentacq") is balentacq
    with pytest.raises(ValueError, match=r"unknown acquisition score 'magic'.*balentacq.*random"):
        get_score("magic")


def test_baselines_on_known_numbers():
    # one pixel, C = 3, T = 2
    p = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]], dtype=torch.float64).reshape(2, 3, 1)
    mean = np.array([0.4, 0.4, 0.2])
    h_mean = -(mean * np.log(mean)).sum()
    h_samples = [-(q * np.log(q)).sum() for q in ([0.6, 0.3, 0.1], [0.2, 0.5, 0.3])]
    assert entropy(p).item() == pytest.approx(h_mean, rel=1e-14)
    assert bald(p).item() == pytest.approx(h_mean - np.mean(h_samples), rel=1e-12)
    assert margin(p).item() == pytest.approx(0.0, abs=1e-15)  # 0.4 and 0.4 tie
    assert least_confidence(p).item() == pytest.approx(0.6)
    stds = np.std([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]], axis=0, ddof=1)
    assert mean_std(p).item() == pytest.approx(stds.mean(), rel=1e-13)
    assert variation_ratio(p).item() == pytest.approx(0.5)  # votes: class 0, class 1


def test_margin_and_ties_in_variation_ratio():
    p = torch.tensor([[0.7, 0.2, 0.1]] * 3 + [[0.1, 0.2, 0.7]], dtype=torch.float64)
    p = p.reshape(4, 3, 1)
    assert margin(p).item() == pytest.approx(-(0.55 - 0.25))
    assert variation_ratio(p).item() == pytest.approx(0.25)
    # a two-way tie in one sample splits its vote: votes 1.5 / 0.5 -> VR = 1 - 1.5/2
    q = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64).reshape(2, 2, 1)
    assert variation_ratio(q).item() == pytest.approx(0.25)
    assert variation_ratio(q.flip(1)).item() == pytest.approx(0.25)


def test_random_is_seeded_and_shaped():
    p = softmax_samples(torch.Generator().manual_seed(0), 3, 4, (5, 6))
    a = random(p, seed=3)
    assert a.shape == (5, 6) and a.dtype == torch.float64
    assert torch.equal(a, random(p, seed=3))
    assert not torch.equal(a, random(p, seed=4))
    assert ((a >= 0) & (a < 1)).all()
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(random(p, generator=g1), random(p, generator=g2))
    m = MCMoments(4, (5, 6))
    assert torch.equal(random(m, seed=3), a)  # same numbers from the accumulator
    with pytest.raises(ValueError, match="either generator or seed"):
        random(p, seed=1, generator=g1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_shape_dtype_device(dtype):
    p = softmax_samples(torch.Generator().manual_seed(1), 4, 3, (2, 5, 7), dtype=dtype)
    for name in SCORE_NAMES:
        s = call(name, p)
        assert s.shape == (2, 5, 7), name
        assert s.dtype == torch.float64, name
        assert s.device == p.device, name
        assert torch.isfinite(s).all(), name


def edge_inputs() -> dict[str, torch.Tensor]:
    """Valid but extreme inputs, [T, C, N]."""
    onehot = torch.zeros(5, 4, 6, dtype=torch.float64)
    onehot[:, 0] = 1.0  # every sample certain of class 0: zero variance, mean exactly 1 / 0
    flip = torch.zeros(4, 2, 3, dtype=torch.float64)
    flip[0::2, 0] = 1.0  # samples certain of different classes: var > mu (1 - mu) unbiased
    flip[1::2, 1] = 1.0
    same = torch.full((3, 2, 4), 0.5, dtype=torch.float64)  # uniform, zero variance
    g = torch.Generator().manual_seed(5)
    ade = softmax_samples(g, 3, 150, (16,), scale=30.0, noise=2.0, dtype=torch.float32)
    assert (ade == 0).any()  # float32 softmax underflows to exact zeros
    exact = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]],
                         dtype=torch.float64).reshape(3, 3, 1)
    tiny = torch.tensor([[1.0 - 1e-12, 1e-12], [1.0, 0.0]], dtype=torch.float64).reshape(2, 2, 1)
    return {"onehot": onehot, "flip": flip, "same": same, "ade150": ade, "exact": exact,
            "tiny": tiny}


@pytest.mark.parametrize("case", list(edge_inputs()))
@pytest.mark.parametrize("compat", [False, True])
def test_extreme_valid_inputs_give_finite_scores(case, compat):
    p = edge_inputs()[case]
    for name in SCORE_NAMES:
        kw = {"official_compat": compat} if name.startswith("balent") else {}
        s = call(name, p, **kw)
        assert torch.isfinite(s).all(), (case, name, s)


def test_extreme_inputs_rank_sensibly():
    e = edge_inputs()
    # a certain pixel carries no information: lowest BalEntAcq, zero BALD / entropy
    certain = balentacq(e["onehot"])
    assert (certain < 0).all()
    assert (bald(e["onehot"]) == 0).all() and (entropy(e["onehot"]) == 0).all()
    # full disagreement between samples: maximal BALD for C = 2
    assert bald(e["flip"]) == pytest.approx(torch.full((3,), math.log(2), dtype=torch.float64))
    # uniform with zero variance: entropy ln 2, no epistemic part
    assert entropy(e["same"]) == pytest.approx(torch.full((4,), math.log(2), dtype=torch.float64))
    assert (bald(e["same"]) == 0).all() and (mean_std(e["same"]) == 0).all()


def test_bad_inputs_raise_clear_errors():
    good = softmax_samples(torch.Generator().manual_seed(2), 3, 4, (5,))
    nan = good.clone()
    nan[1, 2, 3] = float("nan")
    inf = good.clone()
    inf[0, 0, 0] = float("inf")
    logits = torch.randn(3, 4, 5, dtype=torch.float64) * 3
    unnormalised = good * 0.9
    for name in SCORE_NAMES:
        with pytest.raises(ValueError, match=r"NaN value\(s\), first at index \(1, 2, 3\)"):
            call(name, nan)
        with pytest.raises(ValueError, match="infinite"):
            call(name, inf)
        with pytest.raises(ValueError, match=r"\[0, 1\].*not logits"):
            call(name, logits)
        with pytest.raises(ValueError, match="must sum to 1 over the class dimension"):
            call(name, unnormalised)
        with pytest.raises(ValueError, match="rank 2"):
            call(name, good[0])
        with pytest.raises(ValueError, match="floating"):
            call(name, (good * 10).long())
        with pytest.raises(ValueError, match="at least two classes"):
            call(name, torch.ones(3, 1, 5))
        with pytest.raises(ValueError, match=r"torch\.Tensor"):
            call(name, [[0.5, 0.5]])


@pytest.mark.parametrize("name", ["balent", "balentacq", "mean_std"])
def test_variance_scores_need_two_samples(name):
    one = softmax_samples(torch.Generator().manual_seed(2), 1, 4, (5,))
    with pytest.raises(ValueError, match="needs at least 2 MC samples, got T = 1"):
        call(name, one)
    m = MCMoments(4, (5,))
    m.update(one[0])
    with pytest.raises(ValueError, match="got T = 1"):
        call(name, m)


def test_single_sample_scores_that_allow_it():
    one = softmax_samples(torch.Generator().manual_seed(2), 1, 4, (5,))
    # BALD of one sample is 0 everywhere; the registry says it needs two (as the config
    # always did), and the function now agrees instead of ranking every pixel equally
    with pytest.raises(ValueError, match="at least 2 MC samples"):
        bald(one)
    assert (variation_ratio(one) == 0).all()
    torch.testing.assert_close(entropy(one), -(one[0] * one[0].log()).sum(0))


def test_numpy_input_is_accepted():
    p = softmax_samples(torch.Generator().manual_seed(2), 3, 4, (5,))
    assert torch.equal(balentacq(p.numpy()), balentacq(p))


def test_gradients_are_not_tracked():
    logits = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    s = balentacq(logits.softmax(1))
    assert not s.requires_grad
