"""Two annotators at once against a real server: distinct queries, nothing answered twice."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from balseg.annotate.app import create_app

from .annotate_support import LiveServer, make_run

QUERIES = [("city/a", y, x) for y in range(0, 48, 7) for x in range(0, 64, 13)] + [
    ("city/b", y, x) for y in range(0, 32, 9) for x in range(0, 40, 11)]


def test_two_annotators_get_distinct_queries_and_answer_each_once(tmp_path: Path) -> None:
    run = make_run(tmp_path, queries=QUERIES)
    app = create_app(run.dir)
    done: dict[str, list[int]] = {"alice": [], "bob": []}
    errors: list[str] = []
    start = threading.Barrier(2)

    def work(who: str, url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            start.wait()
            for _ in range(len(QUERIES) + 5):
                q = c.post("/api/next", json={"annotator": who}).json()["query"]
                if q is None:
                    return
                r = c.post("/api/answer", json={"annotator": who, "query_id": q["id"],
                                                "label": q["id"] % 3})
                if r.status_code != 200:
                    errors.append(f"{who}: {r.status_code} {r.text}")
                    return
                done[who].append(q["id"])
            errors.append(f"{who} never ran out of queries")

    with LiveServer(app) as srv:
        threads = [threading.Thread(target=work, args=(w, srv.url)) for w in done]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    app.state.annotation.store.close()
    assert errors == []
    assert done["alice"] and done["bob"], "both annotators must have worked"
    assert not set(done["alice"]) & set(done["bob"])
    assert sorted(done["alice"] + done["bob"]) == run.query_ids
    with run.store() as s:
        got = [(a.query_id, a.label, a.annotator) for a in s.answers()]
        assert sorted(q for q, *_ in got) == run.query_ids  # one answer per query
        for qid, label, who in got:
            assert label == qid % 3 and qid in done[who]
        assert s.conflicts() == [] and s.counts()["open"] == 0


def test_simultaneous_answers_to_one_query_keep_exactly_one(tmp_path: Path) -> None:
    """Without leases (an API client), two people racing on one pixel: one wins, one 409."""
    run = make_run(tmp_path)
    app = create_app(run.dir)
    outcomes: list[list[int]] = []
    with LiveServer(app) as srv:
        for qid in run.query_ids:
            gate = threading.Barrier(2)
            codes: list[int] = []

            def race(who: str, qid: int = qid, gate: threading.Barrier = gate,
                     codes: list[int] = codes) -> None:
                with httpx.Client(base_url=srv.url, timeout=10) as c:
                    gate.wait()
                    codes.append(c.post("/api/answer", json={
                        "annotator": who, "query_id": qid, "label": 1}).status_code)

            ts = [threading.Thread(target=race, args=(w,)) for w in ("alice", "bob")]
            for t in ts:
                t.start()
            for t in ts:
                t.join(timeout=30)
            outcomes.append(sorted(codes))
    app.state.annotation.store.close()
    assert outcomes == [[200, 409]] * len(run.query_ids)
    with run.store() as s:
        assert sorted(a.query_id for a in s.answers()) == run.query_ids
