"""The annotation rules without HTTP: AnnotationService against a real run directory."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from balseg.annotate.service import SKIPPED_AGAIN, AnnotationService
from balseg.errors import ConflictError, InvalidValueError, NotFoundError

from .annotate_support import Run, make_run


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(run: Run, clock: Clock):
    s = AnnotationService(run.dir, lease_ttl_s=60, clock=clock)
    yield s
    s.close()


def answers(run: Run) -> list[tuple[int, int | None, str | None]]:
    with run.store() as s:
        return [(a.query_id, a.label, a.annotator) for a in s.answers()]


def test_answer_rules(svc: AnnotationService, run: Run, clock: Clock) -> None:
    q1, q2, *_ = run.query_ids
    assert svc.next_for("alice") == (svc.store.query(q1), None)
    with pytest.raises(ConflictError, match="being answered by alice"):
        svc.answer("bob", q1, 0)
    done = svc.answer("alice", q1, 0)
    assert (done.query.id, done.label, done.conflict) == (q1, 0, False)
    with pytest.raises(ConflictError, match="alice already answered"):
        svc.answer("alice", q1, 1, review=True)
    with pytest.raises(ConflictError, match="already answered by alice; answer in review"):
        svc.answer("bob", q1, 1)
    assert svc.answer("bob", q1, 1, review=True).conflict is True
    for bad in (3, -1, True, 1.0, "1"):
        with pytest.raises(InvalidValueError, match=r"outside 0\.\.2"):
            svc.answer("carol", q2, bad)
    with pytest.raises(NotFoundError, match="no query with id 999"):
        svc.answer("carol", 999, 1)
    for name in ("", "  ", "x" * 65, "tab\there", "\ud800"):
        with pytest.raises(InvalidValueError, match="annotator name"):
            svc.answer(name, q2, 1)
    clock.t += 61  # alice's lease would have expired anyway; an expired lease blocks nobody
    assert svc.next_for("carol")[0].id == q2
    assert answers(run) == [(q1, 0, "alice"), (q1, 1, "bob")]


def test_undo_stops_at_a_skip_and_answer_ids_are_never_reused(svc: AnnotationService,
                                                              run: Run) -> None:
    q1, q2, q3, q4, _ = run.query_ids
    first = svc.answer("alice", q1, 0).answer_id
    undone = svc.undo("alice")
    assert (undone.retracted.id, undone.query.id) == (first, q1)
    assert svc.next_for("alice")[0].id == q1  # leased back to the person who undid
    again = svc.answer("alice", q1, 2).answer_id
    assert again > first  # the undone id names nothing, ever again
    svc.answer("alice", q2, 1)
    assert svc.skip("alice", q3)[0].id == q4
    with pytest.raises(ConflictError, match="since the last skip"):
        svc.undo("alice")
    svc.answer("alice", q4, 1)
    assert svc.undo("alice", current_query_id=None).query.id == q4
    with pytest.raises(ConflictError, match="since the last skip"):
        svc.undo("alice")
    with pytest.raises(ConflictError, match="bob has no answer to undo"):
        svc.undo("bob")
    assert answers(run) == [(q1, 2, "alice"), (q2, 1, "alice")]


def test_skips_survive_a_restart_and_come_back_last(run: Run, clock: Clock) -> None:
    ids = run.query_ids
    with_skip = AnnotationService(run.dir, clock=clock)
    assert with_skip.skip("alice", ids[0])[0].id == ids[1]
    with_skip.close()
    svc = AnnotationService(run.dir, clock=clock)  # another process, later
    try:
        for qid in ids[1:]:
            assert svc.next_for("alice") == (svc.store.query(qid), None)
            svc.answer("alice", qid, 0)
        assert svc.next_for("alice") == (svc.store.query(ids[0]), SKIPPED_AGAIN)
        svc.answer("alice", ids[0], 1)
        assert svc.next_for("alice") == (None, None)
    finally:
        svc.close()


def test_review_walks_answered_queries_the_reviewer_has_not_answered(
    svc: AnnotationService, run: Run
) -> None:
    q1, q2, _q3, q4, _q5 = run.query_ids
    for qid in (q1, q2, q4):
        svc.answer("alice", qid, 0)
    svc.answer("bob", q2, 0, review=True)
    assert svc.review_next("bob").id == q1
    assert svc.review_next("bob", after=q1).id == q4  # q2 is his, q3 unanswered
    assert svc.review_next("bob", after=q4) is None
    assert svc.review_next("alice") is None


def test_progress_counts_the_image_of_the_shown_query_in_its_own_cycle(tmp_path: Path) -> None:
    """A reviewer looks at cycle 0 while cycle 1 is open: 'this image' is cycle 0's image."""
    run = make_run(tmp_path)
    with run.store() as s:
        s.add_answers([(q, 1) for q in run.query_ids], source="person", annotator="alice")
        (late,) = s.add_queries([("city/a", 1, 1, None)], cycle=1, strategy="s")
    svc = AnnotationService(run.dir)
    try:
        q = svc.review_next("bob")
        p = svc.progress("bob", query=q)
        assert (p["cycle"], p["cycle_total"], p["cycle_open"]) == (1, 1, 1)
        assert p["image"] == {"image_id": "city/a", "total": 3, "open": 0, "answered": 3}
        p = svc.progress("bob", image_id="city/a")  # a bare image id: the current cycle
        assert p["image"] == {"image_id": "city/a", "total": 1, "open": 1, "answered": 0}
        assert (p["total"], p["answered"], p["open"], p["mine"]) == (6, 5, 1, 0)
        assert svc.progress("alice")["mine"] == 5
        assert svc.next_for("bob")[0].id == late
    finally:
        svc.close()


def test_two_services_on_one_run_start_balseg_run_once(run: Run) -> None:
    """Two servers (processes) see the last answer of a cycle at the same time: the decision
    to continue is made inside the transaction, so only one of them launches the run."""
    launched: list[str] = []
    lock = threading.Lock()

    def launcher(name: str):
        def launch(run_dir: Path):
            with lock:
                launched.append(name)
            return None

        return launch

    a = AnnotationService(run.dir, continue_run=True, launcher=launcher("a"))
    b = AnnotationService(run.dir, continue_run=True, launcher=launcher("b"))
    try:
        for qid in run.query_ids:
            a.store.add_answer(qid, 0, source="oracle")
        gate = threading.Barrier(2)

        def poke(svc: AnnotationService) -> None:
            gate.wait()
            svc.maybe_continue()

        threads = [threading.Thread(target=poke, args=(s,)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(launched) == 1
        a.maybe_continue()
        b.maybe_continue()
        assert len(launched) == 1
    finally:
        a.close()
        b.close()
