"""The model's guess on the page (issue 29): every query the loop asks people after cycle 0
carries the class its model predicted there; the page outlines that class, Enter accepts
it, and the label database records whether each answer did.

The browser test drives the page as a person would, with the true class from the masks:
Enter when the outlined guess is right, the class key (or `u` for a void pixel) when it is
not; once with the guesses and once on a copy of the run without them. It measures how many
answers per minute the page takes that way (a person's own reading time comes on top) and
how many answers one key for "accept" covers.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from balseg.annotate.app import create_app
from balseg.labels.store import LabelStore

from ..loop.conftest import tiny_config
from .annotate_support import LiveServer, Run, make_run
from .browser_support import chromium_page, require_chromium, wait_ready


def set_guesses(run_dir: Path, guesses: dict[int, int | None]) -> None:
    con = sqlite3.connect(run_dir / "labels.sqlite")
    with con:
        con.executemany("UPDATE queries SET predicted = ? WHERE id = ?",
                        [(g, q) for q, g in guesses.items()])
    con.close()


def stored(run_dir: Path) -> dict[int, tuple[int | None, int | None]]:
    """query id -> (label, accepted) of every answer."""
    con = sqlite3.connect(run_dir / "labels.sqlite")
    rows = con.execute("SELECT query_id, label, accepted FROM answers").fetchall()
    con.close()
    return {q: (label, acc) for q, label, acc in rows}


# -- the API ----------------------------------------------------------------------------------
def test_the_api_shows_the_guess_and_stores_whether_it_was_taken(run: Run) -> None:
    q1, q2, q3, q4, q5 = run.query_ids
    set_guesses(run.dir, {q1: 1, q2: 2, q3: 0, q5: 2})  # q4: no model guess
    app = create_app(run.dir)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        shown = c.post("/api/next", json={"annotator": "ann"}).json()["query"]
        assert (shown["id"], shown["suggestion"]) == (q1, 1)

        def answer(qid: int, label: int | None, **extra: Any) -> Any:
            return c.post("/api/answer", json={"annotator": "ann", "query_id": qid,
                                               "label": label, **extra})

        wrong = answer(q1, 0, accepted=True)  # "accepted" must be the guessed class
        assert wrong.status_code == 409 and "suggestion (class 1)" in wrong.json()["detail"]
        assert answer(q1, 1, accepted=True).status_code == 200  # Enter
        c.post("/api/next", json={"annotator": "ann"})
        assert answer(q2, 0).status_code == 200  # a class key while a guess was shown
        c.post("/api/next", json={"annotator": "ann"})
        assert answer(q3, None).status_code == 200  # unknown stays one key, `u`
        nxt = c.post("/api/next", json={"annotator": "ann"}).json()["query"]
        assert (nxt["id"], nxt["suggestion"]) == (q4, None)
        assert answer(q4, 2, accepted=True).status_code == 409  # nothing to accept
        assert answer(q4, 2).status_code == 200
        # review mode shows no guess and stores no flag: a second opinion is independent
        assert answer(q1, 1, review=True, accepted=True).status_code == 409
        c.post("/api/answer", json={"annotator": "rev", "query_id": q2, "label": 2,
                                    "review": True})
        info = c.get("/api/info").json()
        assert info["keys"]["accept"] == ["Enter", " "]
        assert info["continue_command"] == f"balseg run {run.dir}"  # the real path
    app.state.annotation.store.close()
    con = sqlite3.connect(run.dir / "labels.sqlite")
    rows = con.execute("SELECT query_id, annotator, label, accepted FROM answers"
                       " ORDER BY id").fetchall()
    con.close()
    assert rows == [(q1, "ann", 1, 1), (q2, "ann", 0, 0), (q3, "ann", None, 0),
                    (q4, "ann", 2, None), (q2, "rev", 2, None)]
    with LabelStore(run.dir / "labels.sqlite", readonly=True) as s:
        assert s.suggestion_counts() == {"shown": 3, "accepted": 1, "same_class": 1}
    remote = create_app(run.dir, token="t0k")
    with TestClient(remote, base_url="http://127.0.0.1") as c:
        info = c.get("/api/info", headers={"X-Balseg-Token": "t0k"}).json()
        assert info["continue_command"] == f"balseg run {run.dir.name}"  # no server path
    remote.state.annotation.store.close()


# -- a real run: the loop writes the guesses ---------------------------------------------------
@pytest.fixture(scope="module")
def person_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A synthetic run answered by a person: cycle 0 answered from the masks, cycle 0's
    model trained; the run waits for cycle 1's 48 queries, which carry its guesses."""
    from balseg.loop import ActiveLearningLoop, parse_config

    base = tmp_path_factory.mktemp("person")
    old = os.environ.get("BALSEG_CACHE")
    os.environ["BALSEG_CACHE"] = str(base / "cache")
    try:
        raw = tiny_config(base / "synth", **{
            "oracle.kind": "person", "budget.cycles": 1, "train.steps": 40,
            "data.options.num_train": 12, "budget.initial_pixels_per_image": 8,
            "budget.pixels_per_cycle": 4})
        cfg = parse_config(raw, source="test")
        run_dir = base / "run"
        truth: dict[int, int | None] = {}
        for _ in range(2):
            loop = ActiveLearningLoop.from_config(cfg, run_dir, progress=False)
            try:
                result = loop.run()
                data = loop.pool.data
                assert loop.store is not None
                for q in loop.store.queries():
                    v = int(data.target(data.index_of(q.image_id))[q.y, q.x])
                    truth[q.id] = None if v == 255 else v
                if result.cycles_done == 0:  # cycle 0's random pixels, answered from masks
                    loop.store.add_answers([(q.id, truth[q.id]) for q in
                                            loop.store.open_queries(cycle=0)],
                                           source="person", annotator="setup")
            finally:
                loop.close()
        assert result.status == "waiting_for_answers" and result.cycles_done == 1
        with LabelStore(run_dir / "labels.sqlite", readonly=True) as s:
            queries = s.queries()
            with s.snapshot() as tx:
                guesses = {q.id: tx.suggestion(q.id) for q in queries}
        yield {"dir": run_dir, "truth": truth, "queries": queries, "guesses": guesses}
    finally:
        if old is None:
            os.environ.pop("BALSEG_CACHE", None)
        else:
            os.environ["BALSEG_CACHE"] = old


@pytest.mark.slow
def test_the_loop_stores_its_models_guess_with_every_query_after_cycle_0(person_run):
    queries, guesses = person_run["queries"], person_run["guesses"]
    first = [q for q in queries if q.cycle == 0]
    later = [q for q in queries if q.cycle == 1]
    assert len(later) == 12 * 4
    assert all(guesses[q.id] is None for q in first)  # no model chose those
    assert all(guesses[q.id] is not None and 0 <= guesses[q.id] < 6 for q in later)
    right = sum(guesses[q.id] == person_run["truth"][q.id] for q in later)
    assert right > 0  # a trained model, not a constant: it is right on some pixels


def person_session(page: Any, url: str, truth: dict[int, int | None]) -> dict[str, Any]:
    """Answer every open query as a person who knows the true class: Enter when the
    outlined guess is right, else the class key (`u` for void). Returns the counts and
    the seconds from the first query on screen to the done screen."""
    page.goto(url + "/")
    page.evaluate("localStorage.setItem('balseg.annotator', 'person')")
    page.reload()
    keys = {c["id"]: c["key"] for c in page.evaluate("fetch('/api/info').then(r => r.json())"
                                                      )["classes"]}
    qid = wait_ready(page)
    start = time.perf_counter()
    n = enters = 0
    while True:
        guess = page.evaluate("document.body.dataset.suggestion")
        want = truth[qid]
        if guess != "" and want is not None and int(guess) == want:
            page.keyboard.press("Enter")
            enters += 1
        else:
            page.keyboard.press("u" if want is None else keys[want])
        n += 1
        page.wait_for_function(
            "(prev) => document.body.dataset.state === 'done' || ("
            "document.body.dataset.state === 'ready' && document.body.dataset.queryId !== prev)",
            arg=str(qid))
        if page.evaluate("document.body.dataset.state") == "done":
            break
        qid = int(page.evaluate("document.body.dataset.queryId"))
    seconds = time.perf_counter() - start
    return {"answers": n, "enters": enters, "seconds": seconds,
            "per_minute": 60 * n / seconds, "done": page.inner_text("#continue-text")}


@pytest.mark.slow
@pytest.mark.browser
def test_a_person_answers_with_the_models_guess_and_without(person_run, tmp_path):
    require_chromium()
    with_dir = person_run["dir"]
    without_dir = tmp_path / "without"
    shutil.copytree(with_dir, without_dir)
    later = [q.id for q in person_run["queries"] if q.cycle == 1]
    set_guesses(without_dir, dict.fromkeys(later))  # the same queries, no guesses
    truth = person_run["truth"]
    results = {}
    for name, run_dir in (("with", with_dir), ("without", without_dir)):
        app = create_app(run_dir)
        with LiveServer(app) as srv, chromium_page() as page:
            errors: list[str] = []
            page.on("console", lambda m, errors=errors: errors.append(m.text)
                    if m.type == "error" else 0)
            if name == "with":
                page.goto(srv.url + "/")
                page.evaluate("localStorage.setItem('balseg.annotator', 'person')")
                page.reload()
                q = wait_ready(page)
                guess = page.evaluate("document.body.dataset.suggestion")
                # outlined on its button, named above the classes, nothing answered yet
                assert page.get_attribute(".suggested", "data-label") == guess
                assert "Enter accepts" in page.inner_text("#suggestion")
                assert not set(stored(run_dir)) & set(later)
                # a held Enter repeats: only its first press may accept
                page.keyboard.down("Enter")
                q2 = wait_ready(page, not_query=q)
                page.keyboard.down("Enter")  # auto-repeat, as a held key sends
                page.wait_for_timeout(300)
                page.keyboard.up("Enter")
                assert int(page.evaluate("document.body.dataset.queryId")) == q2
                assert q2 not in stored(run_dir)
                page.keyboard.press("Backspace")  # undo the held-Enter answer: start clean
                wait_ready(page, not_query=q2)
            results[name] = person_session(page, srv.url, truth)
            assert errors == []
        app.state.annotation.store.close()
        answers = stored(run_dir)
        assert all(answers[q][0] == truth[q] for q in later), "an answer differs from the mask"
        accepted = [q for q in later if answers[q][1] == 1]
        if name == "with":
            assert len(accepted) == results[name]["enters"]
            assert all(answers[q][1] in (0, 1) for q in later)
            assert all(answers[q][0] == person_run["guesses"][q] for q in accepted)
        else:
            assert results[name]["enters"] == 0
            assert all(answers[q][1] is None for q in later)
        assert f"balseg run {run_dir} picks the answers up" in results[name]["done"]

    from balseg.report import make_report

    html = make_report([with_dir], tmp_path / "report").read_text()
    share = results["with"]["enters"]
    assert f"{share} ({100 * share / len(later):.0f}%) accepted it with Enter" in html
    line = (f"answers per minute, page-limited (keys pressed as soon as a pixel shows):"
            f" with the model's guess {results['with']['per_minute']:.0f}"
            f" ({share} of {len(later)} answers were Enter), without"
            f" {results['without']['per_minute']:.0f}")
    print(line)
    target = os.environ.get("BALSEG_MEASURE")
    if target:
        Path(target).write_text(json.dumps({**results, "line": line}, indent=1) + "\n")


@pytest.mark.browser
def test_the_patches_get_brighter_darker_and_stretched_by_key(tmp_path: Path) -> None:
    """Dark frames: `]` brightens the magnified patches (gamma), `[` darkens them, `\\`
    stretches their contrast; the picture itself keeps its look; the setting stays."""
    require_chromium()
    run = make_run(tmp_path)
    app = create_app(run.dir)
    mean = ("(id) => { const c = document.getElementById(id);"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + d[i+1] + d[i+2];"
            " return s / (d.length / 4 * 3); }")
    with LiveServer(app) as srv, chromium_page() as page:
        page.goto(srv.url + "/")
        page.evaluate("localStorage.setItem('balseg.annotator', 'dark')")
        page.reload()
        wait_ready(page)
        plain = page.evaluate(mean, "detail")
        picture = page.evaluate(mean, "image")
        page.keyboard.press("]")
        page.keyboard.press("]")
        brighter = page.evaluate(mean, "detail")
        assert brighter > plain + 5
        assert "brightness γ 0.64" in page.inner_text("#view-text")
        assert page.evaluate(mean, "image") == picture
        for _ in range(4):
            page.keyboard.press("[")
        assert page.evaluate(mean, "detail") < plain - 5
        page.keyboard.press("\\")
        assert "contrast stretched" in page.inner_text("#view-text")
        page.reload()  # kept in the browser
        wait_ready(page)
        assert "contrast stretched" in page.inner_text("#view-text")
    app.state.annotation.store.close()
    with run.store() as s:
        assert s.answers() == []  # view keys answer nothing
