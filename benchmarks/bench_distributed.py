"""Pool-scoring throughput with 1 and N processes (gloo on CPU, NCCL on GPUs), one run.

Each process scores its shard (``images[rank::world]``) with last-layer MC dropout, as
``balseg run`` does under torchrun; the time is rank 0's, barrier to barrier.

    .venv/bin/python benchmarks/bench_distributed.py --images 32 --procs 1 2
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, args.threads // world))
    from balseg.distributed import barrier, init_distributed, shard, shutdown
    from balseg.mc import score_pool
    from balseg.models import ModelSpec, build_model

    ctx = init_distributed("cpu") if world > 1 else None
    torch.manual_seed(0)
    model = build_model(ModelSpec(encoder_weights=None, num_classes=args.classes))
    model = model.to(memory_format=torch.channels_last).eval()
    images = torch.randint(0, 256, (args.images, 3, args.height, args.width), dtype=torch.uint8)
    mine = list(range(args.images)) if ctx is None else shard(range(args.images), ctx)
    times = []
    for repeat in range(args.repeats + 1):  # the first is a warm-up (oneDNN kernels)
        if ctx is not None:
            barrier(ctx, "start")
        start = time.perf_counter()
        score_pool(model, images, mine, valid_hw=(args.height, args.width),
                   strategy=args.strategy, samples=args.samples, seed=0, cycle=0,
                   mean=(0.5,) * 3, std=(0.5,) * 3, batch_size=args.batch)
        if ctx is not None:
            barrier(ctx, "stop")
        if repeat:
            times.append(time.perf_counter() - start)
    if rank == 0:
        out[world] = statistics.median(times)
    if ctx is not None:
        shutdown(ctx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--height", type=int, default=192)
    ap.add_argument("--width", type=int, default=240)
    ap.add_argument("--classes", type=int, default=11)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads shared by all ranks")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--strategy", default="balentacq")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    manager = mp.Manager()
    out = manager.dict()
    for world in args.procs:
        mp.spawn(_worker, args=(world, _free_port(), args, out), nprocs=world, join=True)
    print(f"# {args.images} images {args.height}x{args.width}, C={args.classes}, "
          f"T={args.samples}, {args.strategy}, {args.threads} CPU threads shared by all ranks")
    print("| processes | seconds (median) | images/s | speed-up |")
    print("| --- | --- | --- | --- |")
    base = out[args.procs[0]]
    for world in args.procs:
        t = out[world]
        print(f"| {world} | {t:.2f} | {args.images / t:.2f} | {base / t:.2f}x |")


if __name__ == "__main__":
    main()
