"""Copy the small, re-derivable part of bench run directories into the repository.

Keeps config.yaml, dataset.json, metrics.jsonl/csv and labels.sqlite (every query and
answer) of each finished or partial run; leaves checkpoints and overlays behind.

    .venv/bin/python benchmarks/collect_runs.py /work/bench/runs benchmarks/results/camvid-cpu
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
from pathlib import Path

KEEP = ("config.yaml", "dataset.json", "metrics.jsonl", "metrics.csv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    args = ap.parse_args()
    for config in sorted(args.src.glob("*/*/config.yaml")):
        run = config.parent
        if not (run / "metrics.jsonl").exists():
            continue
        out = args.dst / run.relative_to(args.src)
        out.mkdir(parents=True, exist_ok=True)
        for name in KEEP:
            if (run / name).exists():
                shutil.copy2(run / name, out / name)
        if (run / "labels.sqlite").exists():  # a consistent copy even while a run writes
            with sqlite3.connect(run / "labels.sqlite") as src, \
                    sqlite3.connect(out / "labels.sqlite") as dst:
                src.backup(dst)
                # one self-contained file: readers of the copy need no -wal/-shm sidecars
                dst.execute("PRAGMA journal_mode=DELETE")
        print(out)


if __name__ == "__main__":
    main()
