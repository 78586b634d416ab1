"""Simulated annotator for benchmarks: answers pixel queries from ground-truth masks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from balseg.data.base import IGNORE_INDEX
from balseg.labels.store import LabelStore, Query
from balseg.seeding import Stream, rng_for


class SimulatedOracle:
    """Answers from ground truth, optionally wrong with probability ``error_rate``.

    A pixel whose truth is void is answered ``None`` ('unknown') and still costs budget: a
    person shown that pixel would also spend the time. PixelPick instead never queries void
    pixels, which silently uses ground truth to shape the query set; balseg does not.
    A wrong answer is a class drawn uniformly among the other classes, seeded per query so
    that a resumed run gives the same answers as an uninterrupted one.
    """

    def __init__(
        self,
        label_of: Callable[[str], np.ndarray],
        num_classes: int,
        *,
        error_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= error_rate < 1.0:
            raise ValueError(f"oracle error_rate must be in [0, 1), got {error_rate}")
        self.label_of = label_of
        self.num_classes = num_classes
        self.error_rate = error_rate
        self.seed = seed

    def answer(self, query: Query) -> int | None:
        mask = self.label_of(query.image_id)
        h, w = mask.shape
        if not (0 <= query.y < h and 0 <= query.x < w):
            raise ValueError(
                f"query {query.id} at (y={query.y}, x={query.x}) lies outside image"
                f" {query.image_id!r} of size {h}x{w}"
            )
        truth = int(mask[query.y, query.x])
        if truth == IGNORE_INDEX:
            return None
        if self.error_rate > 0.0:
            rng = rng_for(self.seed, Stream.ORACLE_ERROR, query.id)
            if rng.random() < self.error_rate:
                wrong = int(rng.integers(self.num_classes - 1))
                return wrong if wrong < truth else wrong + 1
        return truth

    def answer_all(self, store: LabelStore, queries: Sequence[Query], *, source: str) -> int:
        """Answer queries in one transaction; returns how many were answered."""
        items = [(q.id, self.answer(q)) for q in queries]
        if items:
            store.add_answers(items, source=source, annotator="oracle")
        return len(items)
