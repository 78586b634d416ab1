"""Streaming accumulator of what the acquisition scores need from T MC-dropout samples.

A batch of 512x1024 images with 19 classes and T = 20 is 800 MB of float32 samples; the
scores only need a few sums per class and pixel, so samples are folded in one at a time
and dropped (memory O(C x pixels), independent of T).

Precision: the variance is ``(sum p^2 - (sum p)^2 / T) / (T - 1)``. In float32 that
difference cancels catastrophically for the small variances that matter most to BalEnt,
so the sums are kept in float64 by default (measured cost: see docs/benchmarks.md). With
``dtype=torch.float32`` (half the memory, e.g. on a GPU) the sums are taken about the first
sample (the "shifted data" algorithm: ``sum (p - p_0)`` and ``sum (p - p_0)^2``), which
removes the cancellation for the cost of one subtraction per value.

The pixels are split into chunks, each stored as its own contiguous tensors, so that a
chunk's temporaries stay in cache. The score functions feed a full ``[T, C, *S]`` tensor
through this same code, chunk by chunk; because the chunk grid depends only on (C, N,
device), a score computed from an ``MCMoments`` is bit-identical to the one computed from
the full tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from balseg.acquisition._beta import Scratch
from balseg.acquisition._checks import as_float_tensor, check_values, value_stats, values_ok
from balseg.acquisition.registry import STATS  # sum p, sum p^2, sum of entropies, argmax votes

# Elements (classes x pixels) per chunk: 1 MB per float64 buffer keeps a chunk's
# temporaries in L2/L3 on CPU; on GPUs bigger chunks amortise kernel launches (16 MB per
# buffer; the BalEnt chain holds about 30 of them).
_CPU_CHUNK_ELEMS = 1 << 17
_GPU_CHUNK_ELEMS = 1 << 21


def chunk_pixels(num_classes: int, device: torch.device) -> int:
    """Pixels per chunk (a multiple of 64)."""
    elems = _CPU_CHUNK_ELEMS if device.type == "cpu" else _GPU_CHUNK_ELEMS
    return max(64, (elems // num_classes) // 64 * 64)


def chunk_slices(num_classes: int, num_pixels: int, device: torch.device) -> list[slice]:
    """The chunk grid over the flattened spatial dims."""
    step = chunk_pixels(num_classes, device)
    return [slice(i, min(i + step, num_pixels)) for i in range(0, num_pixels, step)]


@dataclass
class ChunkStats:
    """Float64 statistics of one chunk of pixels, safe to modify; they and the scratch
    buffers (same [C, n] shape, for temporaries) are reused by the next chunk."""

    count: int
    scratch: Scratch
    mean: Tensor | None  # [C, n] mean over samples of p_c
    m2: Tensor | None  # [C, n] sum over samples of (p_c - mean_c)^2
    entropy_sum: Tensor | None  # [n] sum over samples of -sum_c p_c ln p_c
    votes: Tensor | None  # [C, n] how many samples have c as argmax (ties share a vote)


class MCMoments:
    """Sums over MC-dropout samples, one sample ``[C, *S]`` at a time.

    Args:
        num_classes: C (at least 2).
        spatial_shape: S, e.g. ``(B, H, W)``.
        dtype: accumulator dtype, float64 (default, exact enough for any variance) or
            float32 (half the memory; sums are shifted by the first sample, see module doc).
        device: where the sums live; ``None`` = the device of the first sample (samples on
            another device are copied over).
        stats: which of ``STATS`` to track (default all; ``sumsq`` implies ``sum``). The
            score functions use this to skip work a score does not need.
    """

    def __init__(
        self,
        num_classes: int,
        spatial_shape: Iterable[int],
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        stats: Iterable[str] | None = None,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        shape = tuple(int(s) for s in spatial_shape)
        if not shape or any(s < 0 for s in shape):
            raise ValueError(f"spatial_shape must be a non-empty tuple of sizes >= 0, got {shape}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        wanted = set(STATS if stats is None else stats)
        unknown = wanted - set(STATS)
        if unknown:
            raise ValueError(f"unknown stats {sorted(unknown)}; valid: {STATS}")
        if "sumsq" in wanted:
            wanted.add("sum")
        self._num_classes = num_classes
        self._shape = shape
        self._n = math.prod(shape)
        self._dtype = dtype
        self._stats = tuple(s for s in STATS if s in wanted)
        self._shifted = dtype == torch.float32 and "sumsq" in wanted
        self._count = 0
        self._device: torch.device | None = None
        self._slices: list[slice] = []
        self._state: dict[str, list[Tensor]] = {}
        self._work: dict[int, dict[str, Tensor]] = {}
        self._scratch: dict[int, Scratch] = {}
        if device is not None:
            self._allocate(torch.device(device))

    # -- properties ------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def num_pixels(self) -> int:
        return self._n

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device | None:
        """Device of the sums; None until the first sample when created with device=None."""
        return self._device

    @property
    def stats(self) -> tuple[str, ...]:
        return self._stats

    @property
    def count(self) -> int:
        """T, the number of samples folded in so far."""
        return self._count

    def __repr__(self) -> str:
        return (f"MCMoments(num_classes={self._num_classes}, spatial_shape={self._shape}, "
                f"count={self._count}, dtype={self._dtype}, device={self._device}, "
                f"stats={self._stats})")

    # -- accumulation ----------------------------------------------------------------------
    def update(self, sample: Tensor) -> None:
        """Fold in one sample ``[C, *S]`` of probabilities (checked before anything changes)."""
        x = as_float_tensor(sample, "sample")
        expected = (self._num_classes, *self._shape)
        if tuple(x.shape) != expected:
            hint = " (a stack of samples? use update_many)" if x.ndim == len(expected) + 1 else ""
            raise ValueError(
                f"sample must have shape [C, *S] = {list(expected)}, got {list(x.shape)}{hint}")
        self._update(x, single=True)

    def update_many(self, probs: Tensor) -> None:
        """Fold in a stack of samples ``[t, C, *S]``; same result as t calls to ``update``."""
        x = as_float_tensor(probs, "probs")
        expected = (self._num_classes, *self._shape)
        if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"probs must have shape [t, C, *S] = [t, {', '.join(map(str, expected))}], "
                f"got {list(x.shape)}")
        self._update(x, single=False)

    def reset(self) -> None:
        """Forget all samples (keeps the buffers)."""
        for parts in self._state.values():
            for t in parts:
                t.zero_()
        self._count = 0

    @torch.no_grad()
    def _update(self, x: Tensor, *, single: bool) -> None:
        if self._device is None:
            self._allocate(x.device)
        x = x.to(self._device)
        # checked as given, so that error messages index the caller's tensor
        lo, hi = check_values(x, 0, "sample") if single else check_values(x, 1, "probs")
        flat = x.reshape(1 if single else x.shape[0], self._num_classes, self._n)
        clamp = lo < 0.0 or hi > 1.0
        for k, sl in enumerate(self._slices):
            for t in range(flat.shape[0]):
                # chunk-major: a chunk's sums stay in cache while all samples are added
                self._load(k, flat[t, :, sl])
                self._fold(k, first=self._count == 0 and t == 0, clamp=clamp)
        self._count += flat.shape[0]

    @torch.no_grad()
    def _update_one_chunk(self, x: Tensor, on_bad: Callable[[], None]) -> None:
        """Fold in ``x`` ``[t, C, n]`` when all n pixels form one chunk (the score functions'
        route for a full tensor): each sample is checked in the contiguous work buffer it is
        loaded into, saving a strided pass; ``on_bad()`` is called (and must raise) on bad
        values, before they are folded in."""
        if self._device is None:
            self._allocate(x.device)
        if len(self._slices) > 1 or x.ndim != 3 or x.shape[1:] != (self._num_classes, self._n):
            raise ValueError("_update_one_chunk needs [t, C, n] with n pixels in one chunk")
        for t in range(x.shape[0]):
            buf = self._load(0, x[t]) if self._n else x[t]
            lo, hi, s_lo, s_hi = value_stats(buf, 0)
            if not values_ok(lo, hi, s_lo, s_hi):
                on_bad()
                raise ValueError("bad probabilities")  # on_bad should have raised
            if self._n:
                self._fold(0, first=self._count == 0 and t == 0, clamp=lo < 0.0 or hi > 1.0)
        self._count += x.shape[0]

    def _allocate(self, device: torch.device) -> None:
        c, dt = self._num_classes, self._dtype
        self._device = device
        self._slices = chunk_slices(c, self._n, device)
        names = list(self._stats) + (["shift"] if self._shifted else [])
        for name in names:
            self._state[name] = [
                torch.zeros((sl.stop - sl.start,) if name == "entropy" else (c, sl.stop - sl.start),
                            dtype=dt, device=device)
                for sl in self._slices]

    def _buffers(self, n: int) -> dict[str, Tensor]:
        work = self._work.get(n)
        if work is None:
            c, dt, dev = self._num_classes, self._dtype, self._device
            work = {"buf": torch.empty((c, n), dtype=dt, device=dev),
                    "tmp": torch.empty((c, n), dtype=dt, device=dev),
                    "row": torch.empty((1, n), dtype=dt, device=dev)}
            self._work[n] = work
        return work

    def _load(self, k: int, x: Tensor) -> Tensor:
        """Copy one sample's chunk ``x`` ([C, n], any float dtype) into the work buffer."""
        sl = self._slices[k]
        buf = self._buffers(sl.stop - sl.start)["buf"]
        buf.copy_(x)  # exact for float32 -> float64
        return buf

    def _fold(self, k: int, *, first: bool, clamp: bool) -> None:
        """Add the loaded chunk ``k`` of one sample to the sums (consumes the buffer)."""
        sl = self._slices[k]
        w = self._buffers(sl.stop - sl.start)
        buf, tmp, row, st = w["buf"], w["tmp"], w["row"], self._state
        if clamp:
            buf.clamp_(0.0, 1.0)  # values within RANGE_TOL outside [0, 1] were accepted
        if "entropy" in st:
            # -sum p ln p; 0 ln 0 = 0 via the clamp. 2x faster than torch.special.xlogy
            torch.clamp(buf, min=torch.finfo(buf.dtype).tiny, out=tmp).log_().mul_(buf)
            torch.sum(tmp, dim=0, keepdim=True, out=row)
            st["entropy"][k].sub_(row[0])
        if "votes" in st:
            # ties share the vote, so the variation ratio does not depend on class order
            torch.amax(buf, dim=0, keepdim=True, out=row)
            torch.eq(buf, row, out=tmp)  # 1.0 where a class attains the max
            torch.sum(tmp, dim=0, keepdim=True, out=row)
            st["votes"][k].addcdiv_(tmp, row)
        if "sum" in st:
            if self._shifted:
                if first:
                    st["shift"][k].copy_(buf)
                buf.sub_(st["shift"][k])
            st["sum"][k].add_(buf)
            if "sumsq" in st:
                st["sumsq"][k].addcmul_(buf, buf)

    # -- reading ---------------------------------------------------------------------------
    def chunk_slices(self) -> list[slice]:
        """The pixel chunks (slices of the flattened S) the sums are stored in."""
        if self._device is None:
            raise ValueError("MCMoments has no samples yet")
        return list(self._slices)

    @torch.no_grad()
    def chunk_stats(self, k: int) -> ChunkStats:
        """Float64 statistics of chunk ``k``, valid until the next ``chunk_stats`` call."""
        if self._count == 0:
            raise ValueError("MCMoments has no samples yet (count = 0)")
        st, t, sl = self._state, self._count, self._slices[k]
        n = sl.stop - sl.start
        ws = self._scratch.get(n)
        if ws is None:
            ws = self._scratch[n] = Scratch((self._num_classes, n), torch.float64, self._device)
        ws.reset()
        mean = m2 = ent = votes = None
        if "sum" in st:
            s1 = st["sum"][k]
            if s1.dtype != torch.float64:
                s1 = ws.new().copy_(s1)
            d = torch.div(s1, t, out=ws.new())
            mean = d.add_(st["shift"][k]) if self._shifted else d
            if "sumsq" in st:
                # sum (p - mean)^2 = sum p^2 - (sum p)^2 / T (sums about the shift if any)
                s2 = st["sumsq"][k]
                if self._shifted:
                    m2 = ws.new().copy_(s2).addcmul_(s1, torch.div(s1, t), value=-1.0)
                else:
                    m2 = torch.addcmul(s2, s1, d, value=-1.0, out=ws.new())
        if "entropy" in st:
            ent = st["entropy"][k].to(torch.float64, copy=True)
        if "votes" in st:
            votes = ws.new().copy_(st["votes"][k])
        return ChunkStats(count=t, scratch=ws, mean=mean, m2=m2, entropy_sum=ent, votes=votes)

    def _gather(self, what: str, needs: str) -> Tensor:
        if needs not in self._stats:
            raise ValueError(f"{what} needs stats {needs!r}; this MCMoments tracks {self._stats}")
        if self._count == 0:
            raise ValueError(f"{what}: MCMoments has no samples yet (count = 0)")
        field = {"sum": "mean", "sumsq": "m2", "entropy": "entropy_sum", "votes": "votes"}[needs]
        parts = [getattr(self.chunk_stats(k), field).clone() for k in range(len(self._slices))]
        if not parts:
            shape = (0,) if needs == "entropy" else (self._num_classes, 0)
            return torch.zeros(shape, dtype=torch.float64, device=self._device)
        return torch.cat(parts, dim=-1)

    def mean(self) -> Tensor:
        """Mean probability ``[C, *S]`` (float64)."""
        return self._gather("mean()", "sum").reshape(self._num_classes, *self._shape)

    def var(self) -> Tensor:
        """Unbiased sample variance ``[C, *S]`` (float64, divides by T - 1; needs T >= 2)."""
        if 0 < self._count < 2:
            raise ValueError(f"var() needs at least 2 samples, got T = {self._count}")
        m2 = self._gather("var()", "sumsq").clamp_(min=0.0)
        return m2.div_(self._count - 1).reshape(self._num_classes, *self._shape)

    def mean_entropy(self) -> Tensor:
        """Mean over samples of each sample's entropy ``[*S]`` (nats, float64)."""
        return self._gather("mean_entropy()", "entropy").div_(self._count).reshape(self._shape)

    def votes(self) -> Tensor:
        """Argmax counts ``[C, *S]`` (float64; a k-way tie gives each class 1/k)."""
        return self._gather("votes()", "votes").reshape(self._num_classes, *self._shape)
