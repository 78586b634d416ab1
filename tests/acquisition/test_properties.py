"""Property tests (hypothesis) over adversarial but valid MC samples."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from balseg.acquisition import SCORE_NAMES, MCMoments, balent, get_score

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def mc_probs(draw) -> torch.Tensor:
    """[T, C, N] probabilities with exact zeros and ones, tiny values, repeats, float32/64."""
    t = draw(st.integers(2, 6))
    c = draw(st.integers(2, 6))
    n = draw(st.integers(1, 6))
    weights = draw(arrays(np.float64, (t, c, n), elements=st.one_of(
        st.just(0.0), st.just(1.0), st.floats(1e-300, 1e3))))
    if draw(st.booleans()):  # all samples identical: zero variance
        weights = np.broadcast_to(weights[:1], weights.shape).copy()
    total = weights.sum(axis=1, keepdims=True)
    empty = total[:, 0] == 0
    weights[:, 0][empty] = 1.0  # an all-zero column becomes one-hot
    probs = torch.from_numpy(weights / weights.sum(axis=1, keepdims=True))
    if draw(st.booleans()):
        probs = probs.float()
        probs = probs / probs.sum(dim=1, keepdim=True)
    return probs


def all_scores(x) -> dict[str, torch.Tensor]:
    out = {}
    for name in SCORE_NAMES:
        kw = {"seed": 1} if name == "random" else {}
        out[name] = get_score(name)(x, **kw)
    out["balent_compat"] = balent(x, official_compat=True)
    return out


def assert_close_scores(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                        balent_ref: torch.Tensor) -> None:
    for name, value in a.items():
        other = b[name]
        if name == "balentacq":  # 1/BalEnt jumps at BalEnt = 0: compare away from it
            keep = balent_ref.abs() > 1e-6
            value, other = value[keep], other[keep]
        torch.testing.assert_close(value, other, rtol=1e-9, atol=1e-11, msg=name)


@SETTINGS
@given(mc_probs())
def test_all_scores_finite(probs):
    for name, value in all_scores(probs).items():
        assert torch.isfinite(value).all(), (name, value)


@SETTINGS
@given(mc_probs(), st.randoms(use_true_random=False))
def test_invariant_to_permuting_classes(probs, rnd):
    perm = list(range(probs.shape[1]))
    rnd.shuffle(perm)
    base = all_scores(probs)
    permuted = all_scores(probs[:, perm])
    assert torch.equal(base["variation_ratio"], permuted["variation_ratio"])
    assert_close_scores(base, permuted, base["balent"])


@SETTINGS
@given(mc_probs(), mc_probs())
def test_a_pixel_does_not_depend_on_the_others(probs, others):
    t = min(probs.shape[0], others.shape[0])
    c = probs.shape[1]
    if others.shape[1] != c:
        others = torch.full((t, c, 3), 1.0 / c, dtype=probs.dtype)
    batch = torch.cat([others[:t].to(probs.dtype), probs[:t]], dim=2)
    alone = all_scores(probs[:t])
    together = all_scores(batch)
    k = others.shape[2]
    tail = {name: value[k:] for name, value in together.items() if name != "random"}
    alone.pop("random")
    assert_close_scores(alone, tail, alone["balent"])


@SETTINGS
@given(mc_probs())
def test_streaming_equals_full_tensor(probs):
    m = MCMoments(probs.shape[1], tuple(probs.shape[2:]))
    for sample in probs:
        m.update(sample)
    full, streamed = all_scores(probs), all_scores(m)
    for name, value in full.items():
        assert torch.equal(value, streamed[name]), name
