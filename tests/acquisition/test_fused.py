"""The fused (torch.compile) BalEnt kernel: same formula as the eager path, safe fallback."""

import logging

import pytest
import torch

from balseg.acquisition import MCMoments, _fused, balent, balentacq
from balseg.acquisition.scores import MU_FLOOR, VAR_CAP, VAR_FLOOR


def _samples(t=6, c=5, n=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(c, n, generator=g, dtype=torch.float64) * 3
    noise = torch.randn(t, c, n, generator=g, dtype=torch.float64) * 0.7
    probs = (base + noise).softmax(1)
    probs[:, :, :10] = torch.nn.functional.one_hot(torch.arange(10) % c, c).T.double()
    return probs


@pytest.fixture
def backend(monkeypatch):
    def use(name):
        monkeypatch.setenv("BALSEG_ACQ_BACKEND", name)
    monkeypatch.setattr(_fused, "_failed", False)
    return use


@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("acq", [False, True])
def test_pure_formula_equals_the_eager_path(backend, compat, acq):
    """The out-of-place transcription the compiler sees, run eagerly, is the same BalEnt."""
    backend("eager")
    probs = _samples()
    moments = MCMoments(probs.shape[1], (probs.shape[2],))
    for sample in probs:
        moments.update(sample)
    assert len(moments.chunk_slices()) == 1
    stats = moments.chunk_stats(0)
    m, m2 = stats.mean.clone(), stats.m2.clone()
    want = (balentacq if acq else balent)(moments, official_compat=compat)
    got = _fused.balent_chunk_pure(m, m2, probs.shape[0], compat, acq, MU_FLOOR, VAR_FLOOR,
                                   VAR_CAP)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_compiled_kernel_matches_eager_and_keeps_the_ranking(backend):
    """Two compiles (~1 min cold): scores within 1e-7 of the eager path with the same
    ranking; the streaming accumulator (eager sums, fused BalEnt) agrees with the tensor
    route (fused sums) to rounding; bad input is still refused with the eager message."""
    if not _fused._can_compile(torch.device("cpu")):
        pytest.skip("no C++ compiler on PATH: the fused kernel is unavailable here")
    probs = _samples(t=8, c=7, n=20000, seed=1)
    backend("eager")
    want = balentacq(probs)
    want_compat = balentacq(probs, official_compat=True)
    backend("compile")
    got = balentacq(probs)
    got_compat = balentacq(probs, official_compat=True)
    moments = MCMoments(7, (20000,))
    for sample in probs:
        moments.update(sample)
    assert torch.allclose(balentacq(moments), got, rtol=1e-7, atol=1e-12)
    got32 = balentacq(probs.float())  # a float32 input: the kernel's other dtype
    bad = probs.clone()
    bad[3, 2, 777] = float("nan")
    backend("eager")
    assert torch.allclose(got32, balentacq(probs.float()), rtol=1e-7, atol=1e-12)
    with pytest.raises(ValueError) as eager_err:
        balentacq(bad)
    backend("compile")
    with pytest.raises(ValueError) as fused_err:
        balentacq(bad)
    assert str(fused_err.value) == str(eager_err.value)
    assert "nan" in str(fused_err.value).lower()
    for g, w in ((got, want), (got_compat, want_compat)):
        assert torch.isfinite(g).all()
        assert torch.allclose(g, w, rtol=1e-7, atol=1e-12)
        top = torch.topk(w, 500).indices
        assert torch.equal(torch.topk(g, 500).indices.sort().values, top.sort().values)


def test_chunk_moments_formula_equals_the_accumulator(backend):
    """The one-pass sums (run eagerly) are the accumulator's, clamping included."""
    backend("eager")
    probs = _samples(t=5, c=4, n=300)
    assert probs[0, :, 5].tolist() == [0.0, 1.0, 0.0, 0.0]  # a one-hot pixel
    probs[0, 0, 5] = -1e-7  # within tolerance outside [0, 1]: clamped, as MCMoments does
    probs[0, 1, 5] = 1.0 + 1e-7
    moments = MCMoments(4, (300,))
    moments.update_many(probs)
    s1, s2, vals = _fused.chunk_moments_pure(probs, True)
    st = moments.chunk_stats(0)
    assert torch.allclose(s1 / 5, st.mean, rtol=0, atol=1e-15)
    assert torch.allclose(s2 - s1 * s1 / 5, st.m2, rtol=0, atol=1e-14)
    lo, hi, s_lo, s_hi = vals.tolist()
    assert lo == pytest.approx(-1e-7) and hi == pytest.approx(1.0 + 1e-7)
    assert s1[0, 5] == 0.0 and s1[1, 5] == 5.0  # clamped before summing
    assert s_lo == pytest.approx(1.0, abs=1e-6) and s_hi == pytest.approx(1.0, abs=1e-6)
    assert _fused.chunk_moments_pure(probs, False)[1] is None


def test_compile_failure_falls_back_to_eager_with_one_warning(backend, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    probs = _samples(n=200)
    backend("eager")
    want = balentacq(probs)
    monkeypatch.setattr(_fused, "_compiled", {})
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(_fused, "AUTO_MIN_VALUES", 1)
    monkeypatch.setattr(_fused, "_can_compile", lambda device: True)
    backend("auto")
    with caplog.at_level(logging.WARNING, logger="balseg.acquisition._fused"):
        assert torch.equal(balentacq(probs), want)
        assert torch.equal(balentacq(probs), want)
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "no compiler" in caplog.records[0].message
    # asked for explicitly, a broken compiler is an error, not a silent slow path
    monkeypatch.setattr(_fused, "_failed", False)
    backend("compile")
    with pytest.raises(RuntimeError, match="no compiler"):
        balentacq(probs)


def test_auto_compiles_only_large_calls(backend, monkeypatch):
    backend("auto")
    monkeypatch.setattr(_fused, "_can_compile", lambda device: True)
    cpu = torch.device("cpu")
    assert not _fused.use_compiled(_fused.AUTO_MIN_VALUES - 1, cpu)
    assert _fused.use_compiled(_fused.AUTO_MIN_VALUES, cpu)
    backend("eager")
    assert not _fused.use_compiled(10**9, cpu)


def test_unknown_backend_is_a_clear_error(backend):
    backend("fast")
    with pytest.raises(ValueError, match=r"BALSEG_ACQ_BACKEND='fast'.*auto, compile, eager"):
        balentacq(_samples(n=50))
