"""Memory and time of one active-learning cycle as the pool grows (issue 15).

For each pool size N: a folder dataset of N synthetic street scenes at the given size (a few
unique renders, hard-linked N times: decoding and scoring cost the same, generation does
not), and one `balseg run` of one cycle, each in a fresh process: decode the pool into the
prepared-data cache, train 20 steps, evaluate 50 images, score the whole pool with MC
dropout (T = 10) selecting per batch, train 20 steps again, evaluate again. Reported per N:
the peak resident set (the kernel's VmHWM) of every process, the disk the cache and the run
use, and seconds per pool image of decoding and of scoring + selection.

    .venv/bin/python benchmarks/bench_scale.py --pools 250 1000 4000 --size 512 1024 \\
        --work 256 512 --out /work/scale --legacy-src /tmp/old/src \\
        --json benchmarks/results/scale.json
    .venv/bin/python benchmarks/bench_scale.py --pools 1000 --size 512 1024 --work 256 512 \\
        --procs 2 --out /work/scale --legacy-src /tmp/old/src --json benchmarks/results/scale.json
    .venv/bin/python benchmarks/bench_scale.py --pools 20000 --size 384 384 --work 384 384 \\
        --out /work/scale --json benchmarks/results/scale.json      # ADE20K-shaped, ~12 GB

``--legacy-src`` runs the same cycle with another checkout's ``src`` (the in-memory path
before issue 15, e.g. a worktree of commit 50fcfcc) for a side-by-side figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
UNIQUE = 24  # distinct renders per split


def make_pool(root: Path, n: int, size: tuple[int, int], n_val: int) -> Path:
    """``root/N<n>`` in the folder layout: train (n images) and val (n_val), hard links to a
    few renders so that generation does not dominate the benchmark."""
    from balseg.data.synthetic import CLASSES, render_scene

    base = root / "renders" / f"{size[0]}x{size[1]}"
    if not (base / "done").exists():
        shutil.rmtree(base, ignore_errors=True)
        (base / "images").mkdir(parents=True)
        (base / "masks").mkdir()
        for i in range(UNIQUE):
            image, label = render_scene(np.random.default_rng([7, i]), size)
            Image.fromarray(image).save(base / "images" / f"{i:03d}.png")
            Image.fromarray(label).save(base / "masks" / f"{i:03d}.png")
        (base / "done").write_text("")
    pool = root / f"N{n}-{size[0]}x{size[1]}"
    if (pool / "done").exists():
        return pool
    shutil.rmtree(pool, ignore_errors=True)
    lines = [f"{name} {r} {g} {b}" for name, (r, g, b) in CLASSES]
    pool.mkdir(parents=True)
    (pool / "classes.txt").write_text("\n".join(lines) + "\n")
    for split, count in (("train", n), ("val", n_val)):
        for kind in ("images", "masks"):
            (pool / split / kind).mkdir(parents=True)
        for i in range(count):
            for kind in ("images", "masks"):
                os.link(base / kind / f"{i % UNIQUE:03d}.png",
                        pool / split / kind / f"{split}_{i:06d}.png")
    (pool / "done").write_text("")
    return pool


def config(pool: Path, work: tuple[int, int], name: str) -> dict:
    return {
        "name": name, "seed": 0, "threads": 2, "overlay_images": 2,
        "data": {"dataset": "folder", "root": str(pool), "pool_split": "train",
                 "eval_splits": ["val"], "size": list(work)},
        "model": {"encoder_weights": "offline-lite0", "dropout_p": 0.1},
        "train": {"steps": 20, "warm_start": True, "warm_steps": 20, "batch_size": 8,
                  "eval_batch_size": 8, "augment": {"scale": None, "color_jitter": 0.0}},
        "acquisition": {"strategy": "balentacq", "selection": "pixelpick", "mc_samples": 10,
                        "score_batch_size": 8, "score_resolution": "classifier"},
        "budget": {"initial_pixels_per_image": 10, "pixels_per_cycle": 10, "cycles": 1},
    }


WORKER = r"""
import os, sys, json, runpy
out = sys.argv.pop(1)
def report():
    fields = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS"):
            fields[k] = int(v.split()[0]) * 1024
    rank = os.environ.get("RANK", "0")
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump(fields, f)
import atexit
atexit.register(report)
sys.argv = ["balseg", *sys.argv[1:]]
from balseg.cli import main
try:
    main()
except SystemExit as e:
    if e.code:
        raise
"""


def du(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_cycle(pool: Path, work: tuple[int, int], out: Path, name: str, procs: int,
              src: Path) -> dict:
    run_dir = out / "runs" / name
    cache = out / "cache" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    cfg_path = out / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(config(pool, work, name)))
    worker = out / "worker.py"
    worker.write_text(WORKER)
    stats = out / f"{name}.mem"
    for old in out.glob(f"{name}.mem.rank*.json"):
        old.unlink()
    env = {**os.environ, "PYTHONPATH": str(src), "BALSEG_CACHE": str(cache),
           "OMP_NUM_THREADS": str(max(1, 2 // procs))}
    args = [str(worker), str(stats), "run", str(cfg_path), "--run-dir", str(run_dir), "--quiet"]
    if procs > 1:
        args[2:2] = []
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={procs}", *args]
        cfg = config(pool, work, name)
        cfg["threads"] = max(1, 2 // procs)
        cfg["train"]["freeze_bn"] = True
        cfg_path.write_text(yaml.safe_dump(cfg))
    else:
        cmd = [sys.executable, *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    mem = [json.loads(p.read_text()) for p in sorted(out.glob(f"{name}.mem.rank*.json"))]
    prepared = [json.loads(m.read_text()) for m in (cache / "prepared").glob("*/meta.json")]
    n = int(name.split("-")[1].removeprefix("N"))
    decode = sum(m.get("build_seconds", 0.0) for m in prepared
                 if len(m["image_ids"]) == n)
    score = next(r["score_time_s"] for r in rows if r["cycle"] == 0)
    cache_mb, run_mb = round(du(cache) / 2**20), round(du(run_dir) / 2**20)
    shutil.rmtree(cache, ignore_errors=True)  # the next pool needs the disk
    return {
        "name": name, "pool": n, "procs": procs, "wall_s": round(wall, 1),
        "peak_rss_mb": [round(m["VmHWM"] / 2**20) for m in mem],
        "peak_rss_total_mb": round(sum(m["VmHWM"] for m in mem) / 2**20),
        "cache_mb": cache_mb, "run_dir_mb": run_mb,
        "decode_s_per_image": round(decode / n, 4) if decode else None,
        "score_select_s_per_image": round(score / n, 4) if score else None,
        "train_s": [round(r["train_time_s"], 1) for r in rows if r.get("train_time_s")],
        "miou": [round(r["miou"], 4) for r in rows],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pools", type=int, nargs="+", default=[250, 1000, 4000])
    p.add_argument("--size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    p.add_argument("--work", type=int, nargs=2, default=[256, 512], metavar=("H", "W"))
    p.add_argument("--val", type=int, default=50)
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("/tmp/balseg-scale"))
    p.add_argument("--legacy-src", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="append the results here")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(a.out).free
    print(f"free disk in {a.out}: {free / 1e9:.1f} GB")
    results = []
    for n in a.pools:
        pool = make_pool(a.out / "data", n, tuple(a.size), a.val)
        tag = f"{a.size[0]}x{a.size[1]}-{a.work[0]}x{a.work[1]}"
        variants = [("streaming", REPO / "src")]
        if a.legacy_src is not None:
            variants.append(("legacy", a.legacy_src))
        for kind, src in variants:
            name = f"{kind}-N{n}-{tag}-p{a.procs}"
            res = run_cycle(pool, tuple(a.work), a.out, name, a.procs, src)
            res["path"] = kind
            results.append(res)
            print(json.dumps(res), flush=True)
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
              "command": " ".join(sys.argv), "results": results}
    if a.json is not None:
        existing = json.loads(a.json.read_text()) if a.json.exists() else []
        a.json.write_text(json.dumps([*existing, record], indent=1) + "\n")


if __name__ == "__main__":
    main()
