"""Constant cost per click, measured without a clock: SQLite virtual-machine steps.

Timings vary with the machine and its load, so no test here times anything (the latency
benchmark is ``benchmarks/bench_annotate.py``). What does not vary is how much work SQLite
does: its progress handler counts virtual-machine instructions. A statement that scans all
queries or all answers costs twenty times more with twenty times the queries; an indexed
lookup or a counter read costs the same. Every click (next, answer, progress, review,
undo, skip) must cost about the same with 1,000 and with 20,000 queries, half answered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from balseg.annotate.service import AnnotationService

from .annotate_support import make_run

pytestmark = pytest.mark.slow
STEP = 1  # the handler runs every STEP instructions (counted per statement)


def big_run(base: Path, n: int) -> AnnotationService:
    """n queries over 20 images in two cycles, the first half answered by an oracle."""
    per = n // 20
    queries = [(f"img/{i % 20:02d}", (i // 20) // 200, (i // 20) % 200) for i in range(n)]
    sizes = {f"img/{k:02d}": (200, per // 200 + 1) for k in range(20)}
    run = make_run(base, queries=queries[: n // 2], sizes=sizes)
    with run.store() as s:
        s.add_queries([(i, y, x, None) for i, y, x in queries[n // 2:]], cycle=1,
                      strategy="s")
        s.add_answers([(q, q % 3) for q in range(1, n // 2 + 1)], source="oracle",
                      annotator="oracle")
    return AnnotationService(run.dir, lease_ttl_s=600)


def clicks(svc: AnnotationService) -> dict[str, Callable[[], object]]:
    """One of each request the page makes, in the order a person makes them."""
    held: dict[str, object] = {}

    def nxt() -> object:
        held["q"] = svc.next_for("alice")[0]
        return held["q"]

    return {
        "next": nxt,
        "progress": lambda: svc.progress("alice", query=held["q"]),
        "answer": lambda: svc.answer("alice", held["q"].id, 1),  # type: ignore[union-attr]
        "undo": lambda: svc.undo("alice"),
        "answer again": lambda: svc.answer("alice", held["q"].id, 2),  # type: ignore[union-attr]
        "next after answer": nxt,
        "skip": lambda: svc.skip("alice", held["q"].id),  # type: ignore[union-attr]
        "review next": lambda: svc.review_next("bob", after=0),
        "review answer": lambda: svc.answer("bob", 1, 0, review=True),
        "progress without a query": lambda: svc.progress("alice", image_id="img/03"),
    }


def vm_steps(svc: AnnotationService) -> dict[str, int]:
    out = {}
    conn = svc.store._conn
    for name, click in clicks(svc).items():
        count = [0]

        def tick(count: list[int] = count) -> int:
            count[0] += 1
            return 0

        conn.set_progress_handler(tick, STEP)
        try:
            click()
        finally:
            conn.set_progress_handler(None, STEP)
        out[name] = count[0] * STEP
    return out


def test_every_click_costs_the_same_at_1k_and_20k_queries(tmp_path: Path) -> None:
    small = big_run(tmp_path / "small", 1_000)
    large = big_run(tmp_path / "large", 20_000)
    try:
        cost_small, cost_large = vm_steps(small), vm_steps(large)
        assert large.store.verify_tallies() == []
    finally:
        small.close()
        large.close()
    for click, steps in cost_large.items():
        # 20x the rows: a scan would cost ~20x; a B-tree lookup a few levels more
        assert steps <= 1.3 * cost_small[click] + 150, (click, cost_small, cost_large)
