"""Where each strategy's queries land, from the label databases of bench runs.

Per strategy, averaged over its runs (every query of cycles >= 1): the share answered void,
the share answered with one of the ``--rare`` classes, and the mean distance from a queried
pixel to the nearest other pixel queried in the same image and cycle (original
resolution), a measure of selection diversity. Prints a Markdown table.

    .venv/bin/python benchmarks/query_stats.py benchmarks/results/camvid-cpu --rare 2 6 9 10
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from balseg.labels import LabelStore


def run_stats(db_path: Path, rare: set[int]) -> tuple[float, float, float] | None:
    with LabelStore(db_path, readonly=True) as store:
        queries = [q for q in store.queries() if q.cycle > 0]
        answered = {(iid, y, x): c for iid, y, x, c in store.resolved_labels()}
    if not queries:
        return None
    labels = [answered.get((q.image_id, q.y, q.x)) for q in queries]
    void = sum(c is None for c in labels) / len(queries)
    rare_share = sum(c in rare for c in labels) / len(queries)
    groups: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for q in queries:
        groups[(q.image_id, q.cycle)].append((q.y, q.x))
    nearest = []
    for pts in groups.values():
        if len(pts) < 2:
            continue
        p = np.asarray(pts, dtype=float)
        d = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        nearest.append(d.min(1).mean())
    return 100 * void, 100 * rare_share, float(np.mean(nearest)) if nearest else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="folder of <strategy>/seed<s>/labels.sqlite")
    ap.add_argument("--rare", type=int, nargs="*", default=[], help="class ids counted as rare")
    args = ap.parse_args()
    by: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for db in sorted(args.root.glob("*/seed*/labels.sqlite")):
        stats = run_stats(db, set(args.rare))
        if stats is not None:
            by[db.parent.parent.name].append(stats)
    if not by:
        raise SystemExit(f"no run with queries after cycle 0 under {args.root}")
    print("| strategy | queries answered void (%) | answered with a rare class (%) |"
          " distance to the nearest query, same image and cycle (px) | runs |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, rows in sorted(by.items()):
        v, r, d = np.mean(rows, axis=0)
        print(f"| {name} | {v:.1f} | {r:.1f} | {d:.0f} | {len(rows)} |")


if __name__ == "__main__":
    main()
