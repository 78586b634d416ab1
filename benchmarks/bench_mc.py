"""Cost of MC-dropout scoring against one deterministic forward pass of the same batch.

Target (issue "main job"): last-layer MC with T=20, streamed into BalEntAcq, costs at most
1.5x one deterministic forward pass; full-mode MC is measured beside it.

    .venv/bin/python benchmarks/bench_mc.py --height 192 --width 240 --batch 8 --samples 20
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from balseg.mc import normalize, score_pool
from balseg.models import ModelSpec, build_model


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, oneDNN kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--height", type=int, default=192)
    ap.add_argument("--width", type=int, default=240)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--classes", type=int, default=11)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--strategy", default="balentacq")
    ap.add_argument("--skip-full", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.height, args.width), dtype=torch.uint8)
    hw = (args.height, args.width)
    mean_std = dict(mean=(0.5,) * 3, std=(0.5,) * 3)
    rows = []
    for mode in ("last_layer", "full"):
        if mode == "full" and args.skip_full:
            continue
        model = build_model(ModelSpec(encoder_weights=None, num_classes=args.classes,
                                      mc_mode=mode)).to(memory_format=torch.channels_last)
        model.eval()

        def forward(model=model) -> None:
            with torch.no_grad():
                model(normalize(images, **mean_std)).softmax(1)

        def mc(model=model, resolution="label") -> None:
            score_pool(model, images, range(args.batch), valid_hw=hw, strategy=args.strategy,
                       samples=args.samples, seed=0, cycle=0, batch_size=args.batch,
                       resolution=resolution, **mean_std)

        t_fwd = median_time(forward, args.repeats)
        t_mc = median_time(mc, args.repeats if mode == "last_layer" else 1)
        rows.append((f"{mode}, label resolution", t_fwd, t_mc))
        if mode == "last_layer":
            t_low = median_time(lambda: mc(resolution="classifier"), args.repeats)
            rows.append(("last_layer, classifier resolution", t_fwd, t_low))
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"batch {args.batch} x {args.height}x{args.width}, C={args.classes}, "
          f"T={args.samples}, {args.strategy}")
    print("| MC mode | forward (s/batch) | MC scoring (s/batch) | ratio | images/s scored |")
    print("| --- | --- | --- | --- | --- |")
    for mode, t_fwd, t_mc in rows:
        print(f"| {mode} | {t_fwd:.3f} | {t_mc:.3f} | {t_mc / t_fwd:.2f}x |"
              f" {args.batch / t_mc:.1f} |")


if __name__ == "__main__":
    main()
