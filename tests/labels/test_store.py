import multiprocessing as mp
import os
import signal

import numpy as np
import pytest

from balseg.labels import LabelStore, LabelStoreError, SimulatedOracle


@pytest.fixture
def store(tmp_path):
    s = LabelStore(tmp_path / "labels.sqlite", num_classes=3)
    yield s
    s.close()


def test_queries_and_answers_round_trip(store):
    ids = store.add_queries([("a", 1, 2, 0.5), ("a", 3, 4, None), ("b", 0, 0, 1.0)],
                            cycle=0, strategy="random")
    assert len(ids) == 3
    assert [q.image_id for q in store.open_queries()] == ["a", "a", "b"]
    store.add_answer(ids[0], 2, source="oracle")
    store.add_answer(ids[1], None, source="person", annotator="ann")
    assert [q.id for q in store.open_queries()] == [ids[2]]
    assert store.resolved_labels() == [("a", 1, 2, 2)]  # 'unknown' gives no training label
    assert store.counts() == {"queries": 3, "answered": 2, "open": 1, "unknown": 1,
                              "conflicts": 0}
    np.testing.assert_array_equal(store.queried_pixels("a"), [[1, 2], [3, 4]])


def test_pixel_cannot_be_queried_twice_and_batch_is_atomic(store):
    store.add_queries([("a", 1, 2, None)], cycle=0, strategy="random")
    with pytest.raises(LabelStoreError, match=r"\(y=1, x=2\) of image 'a'"):
        store.add_queries([("a", 5, 5, None), ("a", 1, 2, None)], cycle=1, strategy="x")
    assert len(store.queries()) == 1  # the good row of the failed batch was rolled back


def test_bad_answers_are_refused(store):
    (qid,) = store.add_queries([("a", 0, 0, None)], cycle=0, strategy="s")
    with pytest.raises(LabelStoreError, match=r"outside 0\.\.2"):
        store.add_answer(qid, 3, source="person")
    with pytest.raises(LabelStoreError, match="no query with id 999"):
        store.add_answer(999, 1, source="person")
    with pytest.raises(LabelStoreError, match="source"):
        store.add_answer(qid, 1, source="magic")
    assert store.answers() == []


def test_conflicting_answers_are_kept_and_flagged(store):
    (qid,) = store.add_queries([("a", 0, 0, None)], cycle=0, strategy="s")
    store.add_answer(qid, 1, source="person", annotator="p1")
    store.add_answer(qid, 2, source="person", annotator="p2")
    assert len(store.answers(qid)) == 2
    assert store.conflicts() == [qid]
    assert store.resolved_labels() == []


def test_class_count_mismatch_is_refused(tmp_path):
    LabelStore(tmp_path / "l.sqlite", num_classes=3).close()
    with pytest.raises(LabelStoreError, match="3 classes, the config has 5"):
        LabelStore(tmp_path / "l.sqlite", num_classes=5)


def test_leases_hand_each_query_to_one_person(store):
    store.add_queries([("a", 0, i, None) for i in range(3)], cycle=0, strategy="s")
    q1 = store.lease_next("p1", now=100.0, ttl_s=10)
    q2 = store.lease_next("p2", now=100.0, ttl_s=10)
    assert q1.id != q2.id
    assert store.lease_next("p1", now=101.0, ttl_s=10).id == q1.id  # reload: same query
    # p1's lease expires: p3 may take it
    q3 = store.lease_next("p3", now=200.0)
    assert q3.id == q1.id
    store.add_answer(q3.id, 0, source="person", annotator="p3")
    assert store.lease_holder(q3.id, now=200.0) is None


def test_undo_only_own_answer(store):
    (qid,) = store.add_queries([("a", 0, 0, None)], cycle=0, strategy="s")
    (aid,) = store.add_answers([(qid, 1)], source="person", annotator="p1")
    with pytest.raises(LabelStoreError, match="not given by 'p2'"):
        store.retract_answer(aid, annotator="p2")
    store.retract_answer(aid, annotator="p1")
    assert store.open_queries()[0].id == qid


def _answer_then_die(path, conn):
    s = LabelStore(path, num_classes=3)
    (qid,) = s.add_queries([("a", 0, 0, None)], cycle=0, strategy="s")
    s.add_answer(qid, 2, source="person")
    conn.send("committed")
    # start a transaction that never commits, then get killed inside it
    with s.transaction() as tx:
        tx.add_answers([(qid, 1)], source="person")
        conn.send("in-transaction")
        os.kill(os.getpid(), signal.SIGKILL)


def test_sigkill_loses_no_committed_answer(tmp_path):
    path = tmp_path / "labels.sqlite"
    parent, child = mp.Pipe()
    proc = mp.get_context("fork").Process(target=_answer_then_die, args=(path, child))
    proc.start()
    assert parent.recv() == "committed"
    assert parent.recv() == "in-transaction"
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    s = LabelStore(path, num_classes=3)
    assert [a.label for a in s.answers()] == [2]


def test_oracle_answers_truth_void_and_noise(store):
    truth = {"a": np.array([[0, 1], [2, 255]], dtype=np.uint8)}
    ids = store.add_queries([("a", y, x, None) for y in range(2) for x in range(2)],
                            cycle=0, strategy="s")
    oracle = SimulatedOracle(truth.__getitem__, num_classes=3)
    assert [oracle.answer(store.query(i)) for i in ids] == [0, 1, 2, None]
    noisy = SimulatedOracle(truth.__getitem__, num_classes=3, error_rate=0.99, seed=1)
    answers = [noisy.answer(store.query(i)) for i in ids[:3]]
    assert all(a != t for a, t in zip(answers, [0, 1, 2], strict=True))  # always wrong
    assert answers == [noisy.answer(store.query(i)) for i in ids[:3]]  # but reproducible
    assert oracle.answer_all(store, store.open_queries(), source="oracle") == 4
    assert store.counts()["open"] == 0


def test_readonly_open_reads_but_never_writes(tmp_path):
    path = tmp_path / "labels.sqlite"
    with LabelStore(path, num_classes=3) as s:
        (qid,) = s.add_queries([("a", 0, 0, None)], cycle=0, strategy="s")
        s.add_answer(qid, 1, source="oracle")
    ro = LabelStore(path, readonly=True)
    assert ro.num_classes == 3
    assert [a.label for a in ro.answers()] == [1]
    with pytest.raises(Exception, match="readonly"):
        ro.add_answer(qid, 2, source="oracle")
    with pytest.raises(LabelStoreError, match="not found"):
        LabelStore(tmp_path / "missing.sqlite", readonly=True)


def test_lease_next_can_exclude_and_lease_a_given_query(store):
    ids = store.add_queries([("a", 0, i, None) for i in range(3)], cycle=0, strategy="s")
    assert store.lease_next("p1", now=0.0, exclude={ids[0]}).id == ids[1]
    store.release(ids[1], "p1")
    assert store.lease_next("p1", now=0.0, exclude=set(ids)) is None
    assert store.lease(ids[2], "p1", now=0.0).id == ids[2]
    assert store.lease(ids[2], "p2", now=1.0) is None  # someone else holds it
    assert store.lease(ids[2], "p2", now=500.0).id == ids[2]  # expired: free again
    with pytest.raises(LabelStoreError, match="no query with id 99"):
        store.lease(99, "p1")
