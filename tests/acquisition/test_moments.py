"""MCMoments: streaming equals the full tensor, memory independent of T, precision."""

from __future__ import annotations

import pytest
import torch

import balseg.acquisition.moments as moments_mod
from balseg.acquisition import SCORE_NAMES, MCMoments, bald, entropy, get_score, required_stats
from tests.acquisition.support import softmax_samples


def scores_of(x) -> dict[str, torch.Tensor]:
    out = {}
    for name in SCORE_NAMES:
        kw = {"seed": 0} if name == "random" else {}
        out[name] = get_score(name)(x, **kw)
    out["balent_compat"] = get_score("balent")(x, official_compat=True)
    return out


@pytest.mark.parametrize("chunk_elems", [None, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streaming_equals_full_tensor_bit_for_bit(monkeypatch, chunk_elems, dtype):
    if chunk_elems:  # many chunks, the last one ragged
        monkeypatch.setattr(moments_mod, "_CPU_CHUNK_ELEMS", chunk_elems)
    p = softmax_samples(torch.Generator().manual_seed(0), 5, 3, (2, 9, 23), dtype=dtype)
    m = MCMoments(3, (2, 9, 23))
    for t in range(p.shape[0]):
        m.update(p[t])
    assert m.count == 5
    assert len(m.chunk_slices()) == (1 if chunk_elems is None else 7)
    full, streamed = scores_of(p), scores_of(m)
    for name, value in full.items():
        assert torch.equal(value, streamed[name]), name


def test_update_many_and_noncontiguous_samples_agree():
    p = softmax_samples(torch.Generator().manual_seed(1), 4, 5, (3, 6, 7))
    a = MCMoments(5, (3, 6, 7))
    a.update_many(p[:3])
    a.update(p[3])
    # the layout the pool scorer passes: a permuted [B, C, H, W] -> [C, B, H, W] view
    b = MCMoments(5, (3, 6, 7))
    bchw = p.permute(0, 2, 1, 3, 4).contiguous()  # [T, B, C, H, W]
    for t in range(4):
        view = bchw[t].permute(1, 0, 2, 3)
        assert not view.is_contiguous()
        b.update(view)
    for x in (a, b):
        assert torch.equal(get_score("balentacq")(x), get_score("balentacq")(p))
        assert torch.equal(bald(x), bald(p))


def test_accessors_match_torch():
    p = softmax_samples(torch.Generator().manual_seed(2), 6, 4, (5, 3))
    m = MCMoments(4, (5, 3))
    m.update_many(p)
    torch.testing.assert_close(m.mean(), p.mean(0), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(m.var(), p.var(0), rtol=1e-10, atol=1e-15)
    h = -(p * p.log()).sum(1)
    torch.testing.assert_close(m.mean_entropy(), h.mean(0), rtol=1e-13, atol=1e-15)
    votes = torch.nn.functional.one_hot(p.argmax(1), 4).sum(0).movedim(-1, 0).double()
    assert torch.equal(m.votes(), votes)


def test_float32_accumulator_avoids_cancellation():
    # mean 0.9, std 1e-5: sum p^2 - (sum p)^2 / T in plain float32 sums is noise
    g = torch.Generator().manual_seed(3)
    t, n = 40, 500
    p0 = 0.9 + 1e-5 * torch.randn(t, 1, n, generator=g, dtype=torch.float64)
    p = torch.cat([p0, 1 - p0], dim=1).float()
    exact = p.double().var(0)
    m32 = MCMoments(2, (n,), dtype=torch.float32)
    m32.update_many(p)
    rel = ((m32.var() - exact).abs() / exact).max()
    assert rel < 1e-3
    naive = (p.sum(0) ** 2 / t)  # what unshifted float32 sums would give
    naive_var = ((p * p).sum(0) - naive) / (t - 1)
    assert ((naive_var.double() - exact).abs() / exact).max() > 0.1  # the hazard is real
    s32 = get_score("balent")(m32)
    s64 = get_score("balent")(p)
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), s64, rtol=1e-4, atol=1e-4)


def test_memory_does_not_grow_with_samples():
    p = softmax_samples(torch.Generator().manual_seed(4), 2, 6, (8, 8))
    m = MCMoments(6, (8, 8))

    def held() -> int:
        return sum(t.numel() * t.element_size() for parts in m._state.values() for t in parts)

    m.update_many(p)
    before = held()
    for _ in range(30):
        m.update(p[0])
    assert held() == before
    assert before == (3 * 6 * 64 + 64) * 8  # sum, sumsq, votes [C, N] + entropy [N], float64


def test_bad_sample_is_rejected_before_anything_changes():
    p = softmax_samples(torch.Generator().manual_seed(5), 3, 4, (10,))
    m = MCMoments(4, (10,))
    m.update_many(p[:2])
    before = get_score("balentacq")(m)
    bad = p[2].clone()
    bad[1, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m.update(bad)
    with pytest.raises(ValueError, match="sum to 1"):
        m.update(p[2] * 0.5)
    assert m.count == 2
    assert torch.equal(get_score("balentacq")(m), before)


def test_constructor_and_shape_errors():
    with pytest.raises(ValueError, match="num_classes"):
        MCMoments(1, (4,))
    with pytest.raises(ValueError, match="spatial_shape"):
        MCMoments(3, ())
    with pytest.raises(ValueError, match="dtype"):
        MCMoments(3, (4,), dtype=torch.float16)
    with pytest.raises(ValueError, match="unknown stats"):
        MCMoments(3, (4,), stats=("mean",))
    m = MCMoments(3, (4, 5))
    with pytest.raises(ValueError, match=r"sample must have shape \[C, \*S\] = \[3, 4, 5\]"):
        m.update(torch.full((3, 5, 4), 1 / 3))
    with pytest.raises(ValueError, match="use update_many"):
        m.update(torch.full((2, 3, 4, 5), 1 / 3))
    with pytest.raises(ValueError, match=r"probs must have shape \[t, C, \*S\]"):
        m.update_many(torch.full((3, 4, 5), 1 / 3))
    with pytest.raises(ValueError, match="no MC samples"):
        entropy(m)


def test_scores_say_which_statistics_are_missing():
    p = softmax_samples(torch.Generator().manual_seed(6), 3, 4, (10,))
    m = MCMoments(4, (10,), stats=("sum",))
    m.update_many(p)
    torch.testing.assert_close(entropy(m), entropy(p), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"bald needs stats \['entropy'\]"):
        bald(m)
    with pytest.raises(ValueError, match="sumsq"):
        get_score("balentacq")(m)
    assert MCMoments(4, (10,), stats=("sumsq",)).stats == ("sum", "sumsq")


def test_device_is_taken_from_first_sample_and_reset_works():
    p = softmax_samples(torch.Generator().manual_seed(7), 3, 4, (10,), dtype=torch.float16)
    p = p / p.sum(1, keepdim=True)
    m = MCMoments(4, (10,))
    assert m.device is None
    m.update(p[0])
    assert m.device == torch.device("cpu")
    m.update_many(p[1:])
    first = get_score("balentacq")(m)
    assert torch.isfinite(first).all()
    m.reset()
    assert m.count == 0
    m.update_many(p)
    assert torch.equal(get_score("balentacq")(m), first)


def test_required_stats_are_enough_and_exact():
    p = softmax_samples(torch.Generator().manual_seed(8), 4, 5, (6, 7))
    for name in SCORE_NAMES:
        m = MCMoments(5, (6, 7), stats=required_stats(name))
        m.update_many(p)
        kw = {"seed": 2} if name == "random" else {}
        assert torch.equal(get_score(name)(m, **kw), get_score(name)(p, **kw)), name
    with pytest.raises(ValueError, match="unknown acquisition score"):
        required_stats("nope")


def test_error_indices_refer_to_the_callers_tensor():
    p = softmax_samples(torch.Generator().manual_seed(9), 3, 4, (5, 6))
    m = MCMoments(4, (5, 6))
    bad = p[0].clone()
    bad[2, 3, 4] = float("inf")
    with pytest.raises(ValueError, match=r"sample contains 1 infinite value\(s\), first at index "
                                         r"\(2, 3, 4\)"):
        m.update(bad)
    stack = p.clone()
    stack[1, 0, 4, 5] = -0.5
    with pytest.raises(ValueError, match=r"probs must hold probabilities.*index \(1, 0, 4, 5\)"):
        m.update_many(stack)
