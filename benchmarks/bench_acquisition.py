"""Throughput and peak memory of the acquisition scores (figures for docs/benchmarks.md).

Every case runs in its own subprocess, so that peak memory is that case's alone:

- time: wall clock of one call, median (and min) over --repeats calls after one warm-up
  call, pooled over --rounds interleaved sweeps; pixels/s = H * W / median. Also the
  median process CPU time (user + system, all threads): on a shared machine it moves much
  less than wall time. The first (warm-up) call is reported too: it pays for first-touch
  page faults.
- peak memory: the kernel's peak resident set size (VmHWM) of the subprocess, reset
  through /proc/self/clear_refs right before the first (warm-up) call, minus the resident
  size at that moment. So it counts what the scoring allocates on top of its input (the
  input tensor itself is not counted), including memory torch or numpy allocate and free
  again. tracemalloc cannot see torch's allocations, hence the kernel counter.

Cases:
- ``full:<score>``: ``score(probs)`` on a float32 tensor [T, C, H, W] already in memory,
  with the default backend (``auto``: BalEnt runs the fused torch.compile kernel at this
  size; the warm-up call pays for compiling, or for loading Inductor's on-disk cache).
- ``eager:<score>``: the same with ``BALSEG_ACQ_BACKEND=eager`` (no compiled kernel).
- ``baseline``: BalEntAcq the way the reference code computes it: the whole float64
  [T, C, H*W] tensor materialised, numpy mean/var, scipy.special gammaln/psi, single pass.
- ``stream:<T>``: an ``MCMoments(stats=required_stats("balentacq"))`` (float64 sums of p
  and p^2) fed one sample at a time, then ``balentacq``. Two pre-generated samples are
  cycled, so the input held is the same whatever T is and generation is not timed.
  ``stream32:<T>``: the same with a float32 accumulator; ``streamall:<T>``: the default
  accumulator tracking all statistics (what a caller gets without ``stats=``).

Usage: python benchmarks/bench_acquisition.py [--height 512 --width 1024 --T 20 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

SCORES = ("entropy", "balentacq", "balent", "bald", "margin", "least_confidence",
          "mean_std", "variation_ratio", "random")


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _reset_peak() -> int:
    """Reset the peak RSS counter; returns the current RSS (KiB)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def make_sample(t: int, classes: int, height: int, width: int) -> torch.Tensor:
    """Sample t of a synthetic MC-dropout run: softmax of fixed logits plus per-sample noise.

    The fixed logits (std 3) give confident and uncertain pixels; the noise (std 1)
    plays the part of dropout. Deterministic in (t, shape).
    """
    base = torch.randn(classes, height, width, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(classes, height, width,
                        generator=torch.Generator().manual_seed(1000 + t))
    return base.mul_(3.0).add_(noise).softmax(dim=0)


def make_probs(samples: int, classes: int, height: int, width: int) -> torch.Tensor:
    probs = torch.empty(samples, classes, height, width)
    for t in range(samples):
        probs[t] = make_sample(t, classes, height, width)
    return probs


def baseline_balentacq(probs: np.ndarray) -> np.ndarray:
    """Straightforward float64 BalEntAcq on all samples at once (as the reference does)."""
    from scipy import special

    p = probs.reshape(probs.shape[0], probs.shape[1], -1).astype(np.float64)
    mean = p.mean(axis=0)
    var = p.var(axis=0, ddof=1)
    h_mean = -special.xlogy(mean, mean).sum(axis=0)
    mu = np.clip(mean, 1e-9, 1 - 1e-9)
    var = np.minimum(np.maximum(var, 1e-9), (1 - 1e-3) * mu * (1 - mu))
    alpha = mu**2 * (1 - mu) / var - mu
    beta = alpha * (1 - mu) / mu
    a = alpha + 1
    ln_b = special.gammaln(a) + special.gammaln(beta) - special.gammaln(a + beta)
    h = (ln_b - (a - 1) * special.psi(a) - (beta - 1) * special.psi(beta)
         + (a + beta - 2) * special.psi(a + beta))
    mj = np.minimum(mu * h, 0).sum(axis=0) + h_mean
    be = mj / (h_mean + math.log(2))
    return np.where(be > 0, 1 / np.where(be > 0, be, 1), be)


def run_case(case: str, args: argparse.Namespace) -> dict:
    """Run one case in this process; returns its timings and peak memory."""
    from balseg.acquisition import MCMoments, balentacq, get_score, required_stats

    c, h, w = args.classes, args.height, args.width
    kind, _, arg = case.partition(":")
    if kind == "eager":
        os.environ["BALSEG_ACQ_BACKEND"] = "eager"
    if kind in ("full", "eager", "baseline"):
        probs = make_probs(args.T, c, h, w)
        if kind in ("full", "eager"):
            fn = get_score(arg)
            kw = {"seed": 0} if arg == "random" else {}

            def call() -> object:
                return fn(probs, **kw)
        else:
            arr = probs.numpy()

            def call() -> object:
                return baseline_balentacq(arr)
    elif kind in ("stream", "stream32", "streamall"):
        samples = int(arg)
        dtype = torch.float32 if kind == "stream32" else torch.float64
        stats = None if kind == "streamall" else required_stats("balentacq")
        sample_list = [make_sample(t, c, h, w) for t in range(min(samples, 2))]

        def call() -> object:
            # 2 stored samples cycled: generation stays out of the timing, and the input
            # held is 2 samples whatever T is
            m = MCMoments(c, (h, w), dtype=dtype, stats=stats)
            for t in range(samples):
                m.update(sample_list[t % len(sample_list)])
            return balentacq(m)
    else:
        raise SystemExit(f"unknown case {case!r}")

    load = [_load1()]
    base_rss = _reset_peak()
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    peak_mib = (_status_kib("VmHWM") - base_rss) / 1024
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    load.append(_load1())
    return {"case": case, "first_s": first, "median_s": statistics.median(times),
            "min_s": min(times), "times": times, "cpu": cpu, "peak_mib": peak_mib,
            "load1": load}


def _load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _run_in_subprocess(case: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--T", str(args.T),
           "--classes", str(args.classes), "--height", str(args.height),
           "--width", str(args.width), "--repeats", str(args.repeats),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu_name() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in text.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _merge(runs: list[dict]) -> dict:
    """One case over several rounds: median and min of all timed calls, the largest peak."""
    times = [t for r in runs for t in r["times"]]
    cpu = [t for r in runs for t in r["cpu"]]
    return {"case": runs[0]["case"], "median_s": statistics.median(times), "min_s": min(times),
            "cpu_s": statistics.median(cpu),
            "first_s": statistics.median(r["first_s"] for r in runs),
            "peak_mib": max(r["peak_mib"] for r in runs),
            "load1_max": max(x for r in runs for x in r["load1"]), "calls": len(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=20, help="MC samples for the full-tensor cases")
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per case and round")
    ap.add_argument("--rounds", type=int, default=2,
                    help="sweeps over all cases (interleaved, so a burst of load on a shared "
                         "machine hits one round of each case rather than all calls of one)")
    ap.add_argument("--stream-T", default="5,10,20,40", help="T values for the streaming path")
    ap.add_argument("--scores", default=",".join(SCORES), help="full-tensor scores to time")
    ap.add_argument("--eager", default="balentacq",
                    help="scores also timed with BALSEG_ACQ_BACKEND=eager")
    ap.add_argument("--no-baseline", action="store_true", help="skip the float64 baseline")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0 = torch's default, one per core)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return

    cases = [f"full:{s}" for s in args.scores.split(",") if s]
    cases += [f"eager:{s}" for s in args.eager.split(",") if s]
    if not args.no_baseline:
        cases.append("baseline")
    cases += [f"stream:{t}" for t in args.stream_T.split(",") if t]
    cases += [f"stream32:{args.T}", f"streamall:{args.T}"]
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    for rnd in range(args.rounds):
        for case in cases:
            r = _run_in_subprocess(case, args)
            runs[case].append(r)
            print(f"round {rnd} {case:20s} median {r['median_s']:8.3f} s  min {r['min_s']:8.3f} s"
                  f"  peak +{r['peak_mib']:8.1f} MiB  load {r['load1']}", file=sys.stderr,
                  flush=True)
    load1 = Path("/proc/loadavg").read_text().split()[:3]
    results = [_merge(runs[c]) for c in cases]
    by = {r["case"]: r for r in results}
    meta = {"T": args.T, "C": args.classes, "H": args.height, "W": args.width,
            "repeats": args.repeats, "rounds": args.rounds, "threads": torch.get_num_threads(),
            "cpu": _cpu_name(), "torch": torch.__version__, "loadavg_before": load0,
            "loadavg_after": load1}
    pixels = args.height * args.width
    print(f"\nT={args.T} C={args.classes} {args.height}x{args.width}, {meta['threads']} torch "
          f"threads, {meta['cpu']}, load average {' '.join(load0)} -> {' '.join(load1)}\n")
    print("| case | median s | min s | Mpixel/s (median) | CPU s (median) | first call s |"
          " peak extra MiB | max 1-min load |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['case']} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
              f"{pixels / r['median_s'] / 1e6:.2f} | {r['cpu_s']:.3f} | {r['first_s']:.3f} | "
              f"{r['peak_mib']:.0f} | {r['load1_max']:.1f} |")
    if "full:balentacq" in by:
        acq = by["full:balentacq"]
        if "baseline" in by:
            base = by["baseline"]
            print(f"\nBalEntAcq speed-up over the float64 baseline (target >= 10x): "
                  f"{base['median_s'] / acq['median_s']:.1f}x median, "
                  f"{base['min_s'] / acq['min_s']:.1f}x min, "
                  f"{base['cpu_s'] / acq['cpu_s']:.1f}x CPU time, "
                  f"{base['first_s'] / acq['first_s']:.1f}x first call")
        if "eager:balentacq" in by:
            eag = by["eager:balentacq"]
            print(f"Fused kernel over the eager path: {eag['median_s'] / acq['median_s']:.1f}x"
                  f" median (first call, compile included: {acq['first_s']:.1f} s)")
        if "full:entropy" in by:
            ent = by["full:entropy"]
            print(f"BalEntAcq / entropy cost (target <= 3x): "
                  f"{acq['median_s'] / ent['median_s']:.2f}x median, "
                  f"{acq['min_s'] / ent['min_s']:.2f}x min, "
                  f"{acq['cpu_s'] / ent['cpu_s']:.2f}x CPU time")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results, "runs": runs},
                                        indent=1))


if __name__ == "__main__":
    main()
