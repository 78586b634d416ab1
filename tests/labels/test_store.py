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


# -- schema 2: migration, ids, tallies -----------------------------------------------------------
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE queries (
    id INTEGER PRIMARY KEY, image_id TEXT NOT NULL, y INTEGER NOT NULL CHECK (y >= 0),
    x INTEGER NOT NULL CHECK (x >= 0), cycle INTEGER NOT NULL CHECK (cycle >= 0),
    strategy TEXT NOT NULL, score REAL, created_at TEXT NOT NULL, UNIQUE (image_id, y, x));
CREATE INDEX queries_cycle ON queries (cycle);
CREATE TABLE answers (
    id INTEGER PRIMARY KEY, query_id INTEGER NOT NULL REFERENCES queries (id), label INTEGER,
    source TEXT NOT NULL, annotator TEXT, answered_at TEXT NOT NULL);
CREATE INDEX answers_query ON answers (query_id);
CREATE TABLE leases (query_id INTEGER PRIMARY KEY REFERENCES queries (id),
    annotator TEXT NOT NULL, expires_at REAL NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1'), ('num_classes', '3');
"""


def _v1_database(path):
    """A label database exactly as balseg wrote it before schema versions moved on."""
    import sqlite3

    con = sqlite3.connect(path)
    con.executescript(V1_SCHEMA)
    con.executemany("INSERT INTO queries (image_id, y, x, cycle, strategy, created_at)"
                    " VALUES (?, ?, ?, ?, 's', 't')",
                    [("a", 0, i, i // 3) for i in range(6)])
    con.executemany("INSERT INTO answers (query_id, label, source, annotator, answered_at)"
                    " VALUES (?, ?, ?, ?, 't')",
                    [(1, 0, "person", "p1"), (1, 1, "person", "p2"), (2, None, "oracle", None),
                     (4, 2, "person", "p1")])
    con.commit()
    con.close()


def test_a_version_1_database_is_migrated_once_and_keeps_everything(tmp_path):
    path = tmp_path / "labels.sqlite"
    _v1_database(path)
    old = LabelStore(path, readonly=True)  # a report reads it as it is
    assert old.schema_version == 1 and old.conflicts() == [1]
    assert old.counts() == {"queries": 6, "answered": 3, "open": 3, "unknown": 1,
                            "conflicts": 1}
    old.close()
    with LabelStore(path, num_classes=3) as s:
        assert s.get_meta("schema_version") == "3"
        assert [(a.id, a.query_id, a.label) for a in s.answers()] == [
            (1, 1, 0), (2, 1, 1), (3, 2, None), (4, 4, 2)]
        assert s.counts() == {"queries": 6, "answered": 3, "open": 3, "unknown": 1,
                              "conflicts": 1}
        assert s.verify_tallies() == []
        assert [q.id for q in s.open_queries(cycle=1)] == [5, 6]
        new = s.add_answer(5, 1, source="person", annotator="p3")
        assert new == 5
        s.retract_answer(new)
        assert s.add_answer(5, 1, source="person", annotator="p3") == 6  # 5 is never reused
    with LabelStore(path, num_classes=3) as s:  # a second open changes nothing
        assert s.verify_tallies() == [] and len(s.answers()) == 5


def test_schema_3_keeps_the_models_guess_and_whether_an_answer_took_it(tmp_path):
    """Issue 29: each query carries the class its model predicted (the page's suggestion)
    and each answer whether it accepted it, so the suggestion's effect can be measured; an
    older database is migrated (and reads as 'no suggestion')."""
    path = tmp_path / "labels.sqlite"
    _v1_database(path)
    old = LabelStore(path, readonly=True)
    assert old.suggestion_counts() is None  # nothing to say about a schema-1 file
    with old.snapshot() as tx:
        assert tx.suggestion(1) is None
    old.close()
    with LabelStore(path, num_classes=3) as s:
        ids = s.add_queries([("b", 0, 0, 0.9, 2), ("b", 0, 1, 0.8, 1), ("b", 0, 2, 0.7)],
                            cycle=2, strategy="balentacq")
        with s.transaction() as tx:
            assert [tx.suggestion(i) for i in ids] == [2, 1, None]
            assert tx.suggestion(1) is None  # migrated queries have no guess
            tx.add_answers([(ids[0], 2)], source="person", annotator="p", accepted=True)
            tx.add_answers([(ids[1], 1)], source="person", annotator="p", accepted=False)
            tx.add_answers([(ids[2], 0)], source="person", annotator="p")
        assert s.suggestion_counts() == {"shown": 2, "accepted": 1, "same_class": 2}
        assert s.verify_tallies() == []
    with LabelStore(path, readonly=True) as ro:
        assert ro.schema_version == 3
        assert ro.suggestion_counts() == {"shown": 2, "accepted": 1, "same_class": 2}


def test_a_database_from_a_newer_balseg_is_refused(tmp_path):
    path = tmp_path / "labels.sqlite"
    with LabelStore(path, num_classes=3) as s:
        s.set_meta("schema_version", "99")
    with pytest.raises(LabelStoreError, match="newer balseg"):
        LabelStore(path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tallies_match_a_count_from_scratch_after_any_writes(tmp_path, seed):
    """Counters kept by triggers, whoever writes: batches, deletes, raw SQL updates."""
    import sqlite3

    rng = np.random.default_rng(seed)
    path = tmp_path / "labels.sqlite"
    s = LabelStore(path, num_classes=4)
    pixels = iter(range(10_000))
    for cycle in range(4):
        rows = [(f"img{rng.integers(5)}", 0, next(pixels), None) for _ in range(20)]
        ids = s.add_queries(rows, cycle=cycle, strategy="s")
        for _ in range(60):
            op = rng.integers(4)
            if op < 2:
                who = [None, "p1", "p2", "oracle"][rng.integers(4)]
                label = None if rng.random() < 0.2 else int(rng.integers(4))
                source = "person" if who in ("p1", "p2") else "oracle"
                qid = int(ids[rng.integers(len(ids))])
                s.add_answer(qid, label, source=source, annotator=who)
            elif op == 2 and s.answers():
                a = s.answers()[rng.integers(len(s.answers()))]
                s.retract_answer(a.id)
            else:
                assert s.verify_tallies() == []
    con = sqlite3.connect(path)  # another program edits answers in place
    con.execute("UPDATE answers SET label = NULL WHERE id % 3 = 0")
    con.execute("UPDATE answers SET annotator = 'p9', query_id = 1 WHERE id % 5 = 0")
    con.commit()
    con.close()
    assert s.verify_tallies() == []
    truth = {"queries": len(s.queries()), "answered": len({a.query_id for a in s.answers()}),
             "unknown": sum(a.label is None for a in s.answers())}
    truth["open"] = truth["queries"] - truth["answered"]
    by_query: dict[int, set] = {}
    for a in s.answers():
        by_query.setdefault(a.query_id, set()).add(a.label)
    truth["conflicts"] = sum(len(v) > 1 for v in by_query.values())
    assert s.counts() == truth
    assert s.conflicts() == sorted(q for q, v in by_query.items() if len(v) > 1)
    s.close()


def test_a_transaction_is_all_or_nothing(store):
    ids = store.add_queries([("a", 0, i, None) for i in range(3)], cycle=0, strategy="s")
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.add_answers([(ids[0], 1)], source="person", annotator="p")
        tx.add_skip("p", ids[1])
        raise RuntimeError("the rule says no")
    assert store.answers() == [] and store.counts()["answered"] == 0
    with store.transaction() as tx:
        assert tx.clear_skips("p") == 0


# -- damage, checkpoints ---------------------------------------------------------------------------
def _filled(path, n=3000):
    with LabelStore(path, num_classes=3) as s:
        ids = s.add_queries([(f"image-{i % 50:03d}", i // 50, i % 50, 0.5) for i in range(n)],
                            cycle=0, strategy="balentacq")
        s.add_answers([(q, q % 3) for q in ids[: n // 2]], source="oracle", annotator="o")
    return path


def _flip_pages(path, first_fraction=0.35, count=12, page=4096):
    """Overwrite whole pages in the middle of the file with noise, as a failing disk would."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(7)
    start = int(len(data) / page * first_fraction)
    for p in range(start, start + count):
        data[p * page:(p + 1) * page] = rng.integers(0, 256, page, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_a_database_damaged_mid_file_is_a_clear_error(tmp_path):
    from balseg.errors import DamagedDatabaseError

    path = _filled(tmp_path / "labels.sqlite")
    assert not (tmp_path / "labels.sqlite-wal").exists()  # closing checkpointed everything
    _flip_pages(path)
    hits = []
    try:
        s = LabelStore(path, num_classes=3)
    except DamagedDatabaseError as err:
        hits.append(str(err))
    else:
        for read in (s.check, s.answers, s.queries, s.open_queries, s.resolved_labels,
                     lambda: s.queried_pixels("image-001")):
            try:
                read()
            except DamagedDatabaseError as err:
                hits.append(str(err))
        s.close()
    assert len(hits) >= 2, hits
    for msg in hits:
        assert str(path) in msg and ".recover" in msg and "backup" in msg, msg
    ro = LabelStore(path, readonly=True)
    with pytest.raises(DamagedDatabaseError, match="damaged"):
        ro.check()
    ro.close()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    from balseg.errors import DamagedDatabaseError

    path = _filled(tmp_path / "labels.sqlite", n=50)
    data = bytearray(path.read_bytes())
    data[:100] = b"\x00" * 100
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedDatabaseError, match=r"damaged .*\.recover"):
        LabelStore(path, num_classes=3)
    with pytest.raises(DamagedDatabaseError):
        LabelStore(path, readonly=True)


def test_checkpoint_puts_every_answer_into_the_main_file(tmp_path):
    import shutil

    path = tmp_path / "labels.sqlite"
    s = LabelStore(path, num_classes=3)
    ids = s.add_queries([("a", 0, i, None) for i in range(20)], cycle=0, strategy="s")
    s.checkpoint()
    for q in ids:
        s.add_answer(q, 1, source="person", annotator="p")
    alone = tmp_path / "copy"
    alone.mkdir()
    shutil.copy(path, alone / "labels.sqlite")  # the main file only, as a naive backup does
    with LabelStore(alone / "labels.sqlite", readonly=True) as before:
        assert before.answers() == []  # the answers are still in the -wal file
    assert s.checkpoint() is True
    shutil.copy(path, alone / "labels.sqlite")
    with LabelStore(alone / "labels.sqlite", readonly=True) as after:
        assert len(after.answers()) == 20
    assert s.checkpoint(truncate=True) and (tmp_path / "labels.sqlite-wal").stat().st_size == 0
    s.close()
    assert s.checkpoint() is True  # closed: nothing left to do
