"""Latency of the annotation server per click, at 1k, 10k and 100k queries (half answered).

Target (issue 17): p95 of next + answer at most 50 ms at 100k queries, and within 2x of the
1k figure. For each size this builds a run directory (images, ``dataset.json``, a label
database with that many queries, the first half answered), starts ``balseg annotate`` as
its own process on a free port, reads its resident memory once it answers, and times over
HTTP, from a client process:

- ``next + answer``: ``POST /api/next`` then ``POST /api/answer`` for the query it handed
  out (what one key press costs a person: the answer is saved, the next pixel arrives);
- ``progress``: ``GET /api/progress`` for the current image.

The label database lies in a temporary folder on the default temp disk (``--tmp`` moves
it), with SQLite's ``synchronous=FULL`` as in production: every answer is on disk before
the reply.

    .venv/bin/python benchmarks/bench_annotate.py                       # 1k, 10k, 100k
    .venv/bin/python benchmarks/bench_annotate.py --sizes 1000 --clicks 100
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from balseg.labels.store import LabelStore
from balseg.rundir import RunDir

CLASSES = ["road", "car", "sky", "building"]
IMAGE_SIDE = 320  # 102,400 pixels per image: room for 1,000 queries each


def build_run(base: Path, n_queries: int) -> Path:
    """A run directory with ``n_queries`` queries over n/1000 images (at least 4); the
    first half (cycle 0) answered by an oracle, the second half (cycle 1) open."""
    base.mkdir(parents=True, exist_ok=True)
    rundir = RunDir(base / f"run-{n_queries}")
    data = base / f"data-{n_queries}"
    rundir.path.mkdir(parents=True)
    (data / "images").mkdir(parents=True)
    n_images = max(4, n_queries // 1000)
    rng = np.random.default_rng(0)
    images = {}
    for k in range(n_images):
        rel = f"images/img_{k:04d}.png"
        Image.fromarray(rng.integers(0, 255, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
                        ).save(data / rel)
        images[f"img_{k:04d}"] = rel
    rundir.dataset.write_text(json.dumps({
        "dataset": "folder", "root": str(data), "split": "train", "class_names": CLASSES,
        "images": images}))
    per_image = -(-n_queries // n_images)
    pixels = rng.permutation(IMAGE_SIDE * IMAGE_SIDE)[:per_image]
    rows = [(f"img_{i % n_images:04d}", int(pixels[i // n_images] // IMAGE_SIDE),
             int(pixels[i // n_images] % IMAGE_SIDE), float(rng.random()))
            for i in range(n_queries)]
    half = n_queries // 2
    with LabelStore(rundir.labels, num_classes=len(CLASSES)) as store:
        first = store.add_queries(rows[:half], cycle=0, strategy="balentacq")
        store.add_queries(rows[half:], cycle=1, strategy="balentacq")
        store.add_answers([(q, q % len(CLASSES)) for q in first], source="oracle",
                          annotator="oracle")
    return rundir.path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(ms: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return statistics.median(ms), q[94]


def measure(run_dir: Path, clicks: int, warmup: int) -> dict[str, float]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "balseg", "annotate", str(run_dir),
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.perf_counter()
        with httpx.Client(base_url=url, timeout=60) as c:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"server exited: {proc.stderr.read()}")
                try:
                    if c.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            started_s = time.perf_counter() - start
            rss = rss_mib(proc.pid)
            pair, progress = [], []
            for i in range(warmup + clicks):
                t0 = time.perf_counter()
                q = c.post("/api/next", json={"annotator": "bench"}).json()["query"]
                r = c.post("/api/answer", json={"annotator": "bench", "query_id": q["id"],
                                                "label": q["id"] % len(CLASSES)})
                t1 = time.perf_counter()
                assert r.status_code == 200, r.text
                p = c.get("/api/progress", params={"annotator": "bench",
                                                   "image_id": q["image_id"]})
                t2 = time.perf_counter()
                assert p.status_code == 200, p.text
                if i >= warmup:
                    pair.append((t1 - t0) * 1000)
                    progress.append((t2 - t1) * 1000)
    finally:
        proc.terminate()
        proc.wait(30)
    p50, p95 = percentiles(pair)
    g50, g95 = percentiles(progress)
    return {"start_s": started_s, "rss_mib": rss, "next_answer_p50": p50,
            "next_answer_p95": p95, "progress_p50": g50, "progress_p95": g95}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--clicks", type=int, default=300, help="timed clicks per size")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3,
                    help="fresh run and server per repeat; the table shows the medians")
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the run directories")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for n in args.sizes:
            runs = []
            for rep in range(args.repeats):
                t = time.perf_counter()
                run_dir = build_run(Path(tmp) / f"rep{rep}", n)
                print(f"{n} queries, repeat {rep + 1}: run built in"
                      f" {time.perf_counter() - t:.1f} s", flush=True)
                runs.append(measure(run_dir, args.clicks, args.warmup))
                print(f"  {json.dumps({k: round(v, 2) for k, v in runs[-1].items()})}",
                      flush=True)
            results[n] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    base = results[min(results)]
    print(f"\nmedians of {args.repeats} repeats, {args.clicks} clicks each")
    print("\n| queries (half answered) | next + answer p50 | p95 | p95 / smallest |"
          " progress p50 | p95 | server RSS at start |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, r in results.items():
        print(f"| {n:,} | {r['next_answer_p50']:.1f} ms | {r['next_answer_p95']:.1f} ms |"
              f" {r['next_answer_p95'] / base['next_answer_p95']:.2f}x |"
              f" {r['progress_p50']:.1f} ms | {r['progress_p95']:.1f} ms |"
              f" {r['rss_mib']:.0f} MiB |")
    print(f"\nload average at the end: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
