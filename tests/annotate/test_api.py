"""Every endpoint of the annotation app, its success path and its error paths."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from balseg.annotate import service as service_module
from balseg.annotate.app import create_app, is_loopback, parse_keys
from balseg.annotate.server import decide_token, page_url
from balseg.errors import RunDirError
from balseg.labels.store import LabelStore, LabelStoreError

from .annotate_support import CLASS_NAMES, Run, make_run


def client_for(app, **kw) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1", **kw)


@pytest.fixture
def client(run: Run):
    app = create_app(run.dir)
    with client_for(app) as c:
        yield c
    app.state.annotation.store.close()


def nxt(c: TestClient, who: str) -> dict | None:
    r = c.post("/api/next", json={"annotator": who})
    assert r.status_code == 200, r.text
    return r.json()["query"]


def answer(c: TestClient, who: str, qid: int, label, **extra):
    return c.post("/api/answer", json={"annotator": who, "query_id": qid, "label": label,
                                       **extra})


def answers_in_db(run: Run) -> list[tuple[int, int | None, str, str | None]]:
    with run.store() as s:
        return [(a.query_id, a.label, a.source, a.annotator) for a in s.answers()]


# -- page, info, health -------------------------------------------------------------------------
def test_page_static_and_health(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "/static/annotate.js" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # offline: no CDN
    js = client.get("/static/annotate.js")
    assert js.status_code == 200 and "api/next" in js.text
    assert client.get("/static/annotate.css").status_code == 200
    assert client.get("/static/nope.js").status_code == 404
    assert client.get("/api/health").json() == {"ok": True, "problem": None}
    assert client.get("/api/nope").status_code == 404


def test_info_lists_classes_keys_and_colours(client: TestClient) -> None:
    info = client.get("/api/info").json()
    assert [c["name"] for c in info["classes"]] == CLASS_NAMES
    assert [c["key"] for c in info["classes"]] == ["1", "2", "3"]
    assert info["classes"][0]["color"] == "#804080"
    assert info["keys"] == {"unknown": "u", "skip": "s", "undo": ["Backspace", "z"],
                            "accept": ["Enter", " "], "darker": "[", "brighter": "]",
                            "stretch": "\\"}
    assert info["run"] == "run"


def test_custom_keys(run: Run) -> None:
    app = create_app(run.dir, keys="jkl")
    with client_for(app) as c:
        assert [k["key"] for k in c.get("/api/info").json()["classes"]] == ["j", "k", "l"]
    assert parse_keys("a,b", 3) == ["a", "b", None]  # the third class is click-only
    assert parse_keys(None, 12)[9:] == ["0", "a", "b"]
    for bad in ("ab u", "aa", "u", "s", "z", ["ab"]):
        with pytest.raises(ValueError):
            parse_keys(bad, 3)


# -- leasing and answering ------------------------------------------------------------------------
def test_next_leases_one_query_per_person_and_a_reload_gets_it_back(
    client: TestClient, run: Run
) -> None:
    q1 = nxt(client, "alice")
    assert q1["id"] == run.query_ids[0] and (q1["width"], q1["height"]) == (64, 48)
    assert q1["image_url"] == "/api/images/city%2Fa"
    assert nxt(client, "alice")["id"] == q1["id"]  # reload: same query
    assert nxt(client, "bob")["id"] == run.query_ids[1]
    detail = client.get(f"/api/queries/{q1['id']}").json()
    assert detail["lease_holder"] == "alice" and detail["answers"] == 0


def test_answer_is_stored_with_name_and_time_then_next_moves_on(
    client: TestClient, run: Run
) -> None:
    q1 = nxt(client, "alice")
    r = answer(client, "alice", q1["id"], 2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query_id"] == q1["id"] and body["conflict"] is False
    assert body["progress"]["cycle_answered"] == 1 and body["progress"]["mine"] == 1
    with run.store() as s:
        (a,) = s.answers()
        assert (a.query_id, a.label, a.source, a.annotator) == (q1["id"], 2, "person", "alice")
        assert a.answered_at.startswith("20")
    assert nxt(client, "alice")["id"] == run.query_ids[1]
    assert answer(client, "alice", run.query_ids[1], None).status_code == 200  # unknown
    assert answers_in_db(run)[1] == (run.query_ids[1], None, "person", "alice")


@pytest.mark.parametrize("label", [3, -1, 99, "1", 1.5, True, [1], {"a": 1}])
def test_bad_class_id_is_422_and_leaves_the_db_untouched(
    client: TestClient, run: Run, label
) -> None:
    q1 = nxt(client, "alice")
    r = answer(client, "alice", q1["id"], label)
    assert r.status_code == 422
    assert r.json()["detail"]
    if label in (3, 99, -1):
        assert "outside 0..2" in r.json()["detail"] or "greater" in r.text or "-1" in r.text
    assert answers_in_db(run) == []


def test_unknown_query_is_404(client: TestClient) -> None:
    r = answer(client, "alice", 999, 1)
    assert r.status_code == 404 and "no query with id 999" in r.json()["detail"]
    assert client.post("/api/skip", json={"annotator": "a", "query_id": 999}).status_code == 404
    assert client.get("/api/queries/999").status_code == 404
    assert client.get("/api/queries/999/image").status_code == 404
    assert client.get("/api/queries/abc").status_code == 422
    assert client.get(f"/api/queries/{2**70}").status_code == 422


def test_answering_a_query_leased_by_someone_else_is_409(client: TestClient, run: Run) -> None:
    q1 = nxt(client, "alice")
    r = answer(client, "bob", q1["id"], 0)
    assert r.status_code == 409 and "being answered by alice" in r.json()["detail"]
    assert answers_in_db(run) == []


def test_no_accidental_second_answer_but_review_keeps_both_and_flags_conflict(
    client: TestClient, run: Run
) -> None:
    q1 = nxt(client, "alice")
    assert answer(client, "alice", q1["id"], 0).status_code == 200
    again = answer(client, "alice", q1["id"], 1)
    assert again.status_code == 409 and "already answered" in again.json()["detail"]
    other = answer(client, "bob", q1["id"], 1)
    assert other.status_code == 409 and "review mode" in other.json()["detail"]
    assert len(answers_in_db(run)) == 1
    # a deliberate second opinion (review mode) is kept, and a disagreement is a conflict
    rq = client.get("/api/review/next", params={"annotator": "bob"}).json()["query"]
    assert rq["id"] == q1["id"]
    assert client.get("/api/review/next", params={"annotator": "alice"}).json()["query"] is None
    assert client.get("/api/review/next",
                      params={"annotator": "bob", "after": q1["id"]}).json()["query"] is None
    r = answer(client, "bob", q1["id"], 1, review=True)
    assert r.status_code == 200 and r.json()["conflict"] is True
    assert answers_in_db(run) == [(q1["id"], 0, "person", "alice"),
                                  (q1["id"], 1, "person", "bob")]
    conflicts = client.get("/api/conflicts").json()["conflicts"]
    assert [c["query"]["id"] for c in conflicts] == [q1["id"]]
    assert {a["annotator"] for a in conflicts[0]["answers"]} == {"alice", "bob"}
    assert client.get("/api/progress", params={"annotator": "bob"}).json()["conflicts"] == 1


def test_an_expired_lease_frees_the_query(run: Run) -> None:
    app = create_app(run.dir, lease_ttl_s=0.3)
    with client_for(app) as c:
        q1 = nxt(c, "alice")
        time.sleep(0.4)
        assert nxt(c, "bob")["id"] == q1["id"]
        r = answer(c, "alice", q1["id"], 0)
        assert r.status_code == 409 and "bob" in r.json()["detail"]
        assert answer(c, "bob", q1["id"], 0).status_code == 200
    app.state.annotation.store.close()


def test_skip_releases_and_moves_on(client: TestClient, run: Run) -> None:
    ids = run.query_ids
    q1 = nxt(client, "alice")
    r = client.post("/api/skip", json={"annotator": "alice", "query_id": q1["id"]}).json()
    assert r["query"]["id"] == ids[1] and r["note"] is None
    assert nxt(client, "alice")["id"] == ids[1]  # the skip sticks across reloads
    assert nxt(client, "bob")["id"] == ids[0]  # the skipped query is free for others
    for qid in ids[1:]:  # alice answers the rest; only her skipped query remains (bob has it)
        assert nxt(client, "alice")["id"] == qid
        assert answer(client, "alice", qid, 1).status_code == 200
    assert nxt(client, "alice") is None
    r = client.post("/api/skip", json={"annotator": "bob", "query_id": ids[0]}).json()
    assert r["query"]["id"] == ids[0] and "skipped" in r["note"]  # shown again, said so
    assert nxt(client, "bob")["id"] == ids[0]


def test_undo_retracts_your_last_answer_and_shows_it_again(client: TestClient, run: Run) -> None:
    ids = run.query_ids
    assert client.post("/api/undo", json={"annotator": "alice"}).status_code == 409
    nxt(client, "alice")
    answer(client, "alice", ids[0], 0)
    q2 = nxt(client, "alice")
    r = client.post("/api/undo", json={"annotator": "alice", "current_query_id": q2["id"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["retracted"] == {"answer_id": 1, "query_id": ids[0], "label": 0}
    assert body["query"]["id"] == ids[0]
    assert answers_in_db(run) == []
    assert nxt(client, "alice")["id"] == ids[0]  # leased back to alice
    assert nxt(client, "bob")["id"] == ids[1]  # alice's previous query went back to the pool
    # nobody can undo another person's answer
    answer(client, "bob", ids[1], 2)
    assert client.post("/api/undo", json={"annotator": "carol"}).status_code == 409
    assert answers_in_db(run) == [(ids[1], 2, "person", "bob")]


def test_progress_overall_per_cycle_and_per_image(client: TestClient, run: Run) -> None:
    nxt(client, "alice")
    answer(client, "alice", run.query_ids[0], 0)
    p = client.get("/api/progress", params={"annotator": "alice", "image_id": "city/a"}).json()
    assert (p["total"], p["answered"], p["open"]) == (5, 1, 4)
    assert (p["cycle"], p["cycle_total"], p["cycle_answered"], p["cycle_open"]) == (0, 5, 1, 4)
    assert p["image"] == {"image_id": "city/a", "total": 3, "open": 2, "answered": 1}
    assert p["mine"] == 1 and p["continue"] == {"enabled": False, "state": "off"}


# -- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    {"annotator": "", "query_id": 1, "label": 0},
    {"annotator": "   ", "query_id": 1, "label": 0},
    {"annotator": "x" * 65, "query_id": 1, "label": 0},
    {"annotator": "bell\x07", "query_id": 1, "label": 0},
    {"annotator": 5, "query_id": 1, "label": 0},
    {"query_id": 1, "label": 0},
    {"annotator": "a", "label": 0},
    {"annotator": "a", "query_id": 1},
    {"annotator": "a", "query_id": 0, "label": 0},
    {"annotator": "a", "query_id": 2**70, "label": 0},
    {"annotator": "a", "query_id": "1", "label": 0},
    {"annotator": "a", "query_id": 1, "label": 0, "extra": 1},
    [1, 2],
])
def test_bad_bodies_are_422_with_a_message(client: TestClient, run: Run, body) -> None:
    r = client.post("/api/answer", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]
    assert answers_in_db(run) == []


def test_malformed_and_non_json_bodies_are_4xx(client: TestClient, run: Run) -> None:
    bad = [b"{not json", b"\xff\xfe", b""]
    for raw in bad:
        r = client.post("/api/answer", content=raw, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (raw, r.status_code)
    r = client.post("/api/answer", content=json.dumps(
        {"annotator": "a", "query_id": 1, "label": 0}), headers={"content-type": "text/plain"})
    assert 400 <= r.status_code < 500  # form posts from other sites cannot answer
    assert client.get("/api/progress").status_code == 422  # annotator missing
    assert client.get("/api/progress", params={"annotator": ""}).status_code == 422
    assert client.get("/api/review/next", params={"annotator": "a", "after": -1}
                      ).status_code == 422
    assert answers_in_db(run) == []


def test_body_over_64_kib_is_413_and_nothing_is_written(client: TestClient, run: Run) -> None:
    big = json.dumps({"annotator": "a", "query_id": run.query_ids[0], "label": 0,
                      "pad": "x" * 70_000})
    r = client.post("/api/answer", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "65536 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the guard counts the streamed bytes
        for _ in range(20):
            yield b"x" * 8192

    r = client.post("/api/answer", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.post("/api/answer", content=b"{}", headers={"content-length": "abc"})
    assert r.status_code == 400
    assert answers_in_db(run) == []


# -- images and path traversal --------------------------------------------------------------------
def test_images_are_served_by_image_or_query_id(client: TestClient, run: Run) -> None:
    import io

    r = client.get("/api/images/city%2Fa")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (64, 48)
    r = client.get(f"/api/queries/{run.query_ids[3]}/image")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (40, 32)
    assert client.get("/api/images/city%2Fzzz").status_code == 404


def test_non_browser_image_formats_are_converted_to_png(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    spec = json.loads((run.dir / "dataset.json").read_text())
    Image.open(run.data_root / spec["images"]["city/a"]).save(run.data_root / "a.tiff")
    spec["images"]["city/a"] = "a.tiff"
    (run.dir / "dataset.json").write_text(json.dumps(spec))
    app = create_app(run.dir)
    with client_for(app) as c:
        r = c.get("/api/images/city%2Fa")
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    app.state.annotation.store.close()


TRAVERSALS = [
    "/api/images/%2e%2e/%2e%2e/etc/passwd",
    "/api/images/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/images/%2Fetc%2Fpasswd",
    "/api/images//etc/passwd",
    "/api/images/images%2Fcity_a.png",  # a real file, but by path, not by image id
    "/api/images/dataset.json",
    "/static/%2e%2e/app.py",
    "/static/..%2Fapp.py",
    "/static/%2e%2e/%2e%2e/%2e%2e/labels/store.py",
    "/static//etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_refused(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert 400 <= r.status_code < 500, (path, r.status_code)
    assert b"root:" not in r.content and b"import" not in r.content


def test_literal_dot_dot_over_a_real_socket(run: Run, live) -> None:
    """Clients normalise '../' away, so send the raw request line ourselves."""
    app = create_app(run.dir)
    with live(app) as srv:
        for target in ("/api/images/../../etc/passwd", "/static/../app.py",
                       "/static/../../../../../../etc/passwd", "/api/images/../../../dataset.json"):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          "Connection: close\r\n\r\n".encode())
                raw = b""
                while chunk := s.recv(65536):
                    raw += chunk
            status = int(raw.split(b" ", 2)[1])
            assert 400 <= status < 500, (target, raw[:200])
            assert b"root:" not in raw and b"import" not in raw
    app.state.annotation.store.close()


def test_symlink_or_relative_path_out_of_the_dataset_root_is_403(tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    run = make_run(tmp_path)
    os.symlink(outside, run.data_root / "images" / "evil.png")
    spec = json.loads((run.dir / "dataset.json").read_text())
    spec["images"].update({"evil": "images/evil.png", "up": "../secret.png",
                           "abs": str(outside)})
    (run.dir / "dataset.json").write_text(json.dumps(spec))
    with run.store() as s:
        s.add_queries([("evil", 1, 1, None), ("up", 1, 1, None), ("abs", 1, 1, None)],
                      cycle=0, strategy="s")
    app = create_app(run.dir)
    with client_for(app) as c:
        for image_id in ("evil", "up", "abs"):
            r = c.get(f"/api/images/{image_id}")
            assert r.status_code == 403, (image_id, r.status_code)
            assert "outside the dataset root" in r.json()["detail"]
        qid = s_id = run.query_ids[-1] + 1
        assert c.get(f"/api/queries/{s_id}/image").status_code == 403
        detail = c.get(f"/api/queries/{qid}").json()["query"]
        assert detail["width"] is None and "outside" in detail["image_error"]
    app.state.annotation.store.close()


# -- token and host rules -------------------------------------------------------------------------
def test_token_is_required_on_every_request_when_set(run: Run) -> None:
    token = "s3cret-token-value"
    app = create_app(run.dir, token=token)
    with TestClient(app, base_url="http://192.0.2.10") as c:  # not loopback: token needed
        for path in ("/", "/static/annotate.js", "/api/info", "/api/images/city%2Fa"):
            r = c.get(path)
            assert r.status_code == 401 and "token" in r.json()["detail"]
        assert c.post("/api/next", json={"annotator": "a"}).status_code == 401
        assert c.get("/api/info", headers={"X-Balseg-Token": "wrong"}).status_code == 401
        assert c.get("/api/info", params={"token": token[:-1]}).status_code == 401
        assert c.get("/api/info", headers={"X-Balseg-Token": token}).status_code == 200
        assert c.get("/api/info", headers={"Authorization": f"Bearer {token}"}
                     ).status_code == 200
        r = c.get("/", params={"token": token})  # the link the server prints
        assert r.status_code == 200 and "HttpOnly" in r.headers["set-cookie"]
        assert c.get("/api/images/city%2Fa").status_code == 200  # the cookie now carries it
        assert c.post("/api/next", json={"annotator": "a"}).status_code == 200
    app.state.annotation.store.close()


def test_without_token_only_loopback_host_headers_pass(run: Run) -> None:
    app = create_app(run.dir)
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        assert c.get("/api/info").status_code == 200
        for host in ("localhost:8765", "[::1]:8765", "127.0.0.1"):
            assert c.get("/api/info", headers={"host": host}).status_code == 200
        r = c.get("/api/info", headers={"host": "evil.example:8765"})  # DNS rebinding
        assert r.status_code == 403 and "loopback" in r.json()["detail"]
        # issue 30 F7: `--host 127.0.0.2` printed a link that answered 403
        for host in ("127.0.0.2:8765", "127.255.255.254:8765", "127.0.0.2"):
            assert c.get("/api/info", headers={"host": host}).status_code == 200, host
        for host in ("128.0.0.1:8765", "127.0.0.1.evil.example", "0x7f.1", "localhost.:80"):
            assert c.get("/api/info", headers={"host": host}).status_code == 403, host
    app.state.annotation.store.close()


def test_token_rule_of_the_server() -> None:
    assert decide_token("127.0.0.1", None) is None
    assert decide_token("localhost", None) is None
    assert decide_token("::1", None) is None
    generated = decide_token("0.0.0.0", None)
    assert generated is not None and len(generated) >= 24
    assert decide_token("10.1.2.3", None) != generated
    assert decide_token("0.0.0.0", "given-token-1") == "given-token-1"
    with pytest.raises(ValueError, match="at least 8"):
        decide_token("0.0.0.0", "short")
    assert is_loopback("127.0.0.2") and not is_loopback("example.org")
    assert page_url("0.0.0.0", 8765, "t0k") == "http://127.0.0.1:8765/?token=t0k"
    assert page_url("::1", 80, None) == "http://[::1]:80/"


# -- persistence, restart, continue-run -----------------------------------------------------------
def test_restart_resumes_where_it_left_off(run: Run) -> None:
    app = create_app(run.dir)
    with client_for(app) as c:
        nxt(c, "alice")
        answer(c, "alice", run.query_ids[0], 1)
        held = nxt(c, "alice")["id"]
    app.state.annotation.store.close()  # the server goes away
    app2 = create_app(run.dir)
    with client_for(app2) as c:
        assert nxt(c, "alice")["id"] == held  # the lease survived in the database
        p = c.get("/api/progress", params={"annotator": "alice"}).json()
        assert (p["answered"], p["mine"]) == (1, 1)
        assert c.post("/api/undo", json={"annotator": "alice", "current_query_id": held}
                      ).json()["query"]["id"] == run.query_ids[0]
    app2.state.annotation.store.close()
    assert answers_in_db(run) == []


class FakeProc:
    def __init__(self) -> None:
        self.rc: int | None = None
        self.pid = 4242

    def poll(self) -> int | None:
        return self.rc


def test_continue_run_starts_balseg_run_once_when_the_cycle_is_answered(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    launched: list[Path] = []
    proc = FakeProc()

    def fake_launch(run_dir: Path) -> FakeProc:
        launched.append(run_dir)
        return proc

    monkeypatch.setattr(service_module, "launch_continue", fake_launch)
    app = create_app(run.dir, continue_run=True)
    with client_for(app) as c:
        assert c.get("/api/info").json()["continue_run"] is True
        for qid in run.query_ids:
            assert nxt(c, "alice")["id"] == qid
            assert launched == []
            r = answer(c, "alice", qid, 0)
        assert launched == [run.dir]
        assert r.json()["progress"]["continue"]["state"] == "running"
        assert nxt(c, "alice") is None  # polling while done does not start it again
        proc.rc = 0
        done = c.post("/api/next", json={"annotator": "alice"}).json()["progress"]["continue"]
        assert done["state"] == "finished" and done["cycle"] == 0
    app.state.annotation.store.close()
    app2 = create_app(run.dir, continue_run=True)  # a restart does not start a second run
    with client_for(app2) as c:
        assert nxt(c, "bob") is None
    assert launched == [run.dir]
    # the next cycle's queries are served, and its completion starts the run again
    with run.store() as s:
        (qid,) = s.add_queries([("city/b", 10, 10, None)], cycle=1, strategy="balent")
    with client_for(app2) as c:
        assert nxt(c, "bob")["id"] == qid
        answer(c, "bob", qid, 1)
    assert launched == [run.dir, run.dir]
    app2.state.annotation.store.close()


def test_launcher_runs_balseg_run_in_the_run_dir(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class Popen:
        def __init__(self, args, **kw) -> None:
            calls.append((args, kw))

    monkeypatch.setattr(service_module.subprocess, "Popen", Popen)
    service_module.launch_continue(tmp_path)
    (args, kw), = calls
    assert args[1:] == ["-m", "balseg", "run", str(tmp_path)]
    assert (tmp_path / "continue.log").exists() and "shell" not in kw


def test_run_dir_problems_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="does not exist"):
        create_app(tmp_path / "nope")
    (tmp_path / "r").mkdir()
    with pytest.raises(RunDirError, match=r"dataset\.json is missing"):
        create_app(tmp_path / "r")
    (tmp_path / "r" / "dataset.json").write_text("{broken")
    with pytest.raises(RunDirError, match="cannot read"):
        create_app(tmp_path / "r")
    (tmp_path / "r" / "dataset.json").write_text(json.dumps(
        {"class_names": ["a", "b"], "images": {}}))
    with pytest.raises(RunDirError, match=r"labels\.sqlite is missing"):
        create_app(tmp_path / "r")
    LabelStore(tmp_path / "r" / "labels.sqlite", num_classes=5).close()
    with pytest.raises(LabelStoreError, match="5 classes"):
        create_app(tmp_path / "r")


def test_serve_and_the_cli_command_apply_the_token_rule(
    run: Run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from balseg.annotate.server import serve
    from balseg.cli import register

    started: list[tuple] = []

    def fake_run(app, host: str, port: int, **kw) -> None:
        started.append((app, host, port))
        app.state.annotation.store.close()

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr("balseg.annotate.server.check_port", lambda host, port: None)
    serve(run.dir, "0.0.0.0", 9001, None)
    out = capsys.readouterr().out
    assert "open http://127.0.0.1:9001/?token=" in out and "required" in out
    app, host, port = started[-1]
    assert (host, port) == ("0.0.0.0", 9001)
    with TestClient(app, base_url="http://192.0.2.1") as c:
        assert c.get("/api/info").status_code == 401
        token = out.split("token=")[1].split()[0]
        assert c.get("/api/info", params={"token": token}).status_code == 200
    serve(run.dir, "127.0.0.1", 9002, None, keys="qwe")
    assert "token" not in capsys.readouterr().out
    with client_for(started[-1][0]) as c:
        assert c.get("/api/info").json()["classes"][0]["key"] == "q"

    cli = typer.Typer()
    register(cli, "balseg.annotate.cli")
    r = CliRunner().invoke(cli, ["annotate", str(run.dir), "--port", "9003", "--keys", "a,b,c",
                                 "--continue-run"])
    assert r.exit_code == 0, r.output
    assert started[-1][2] == 9003
    assert started[-1][0].state.annotation.continue_run is True
    r = CliRunner().invoke(cli, ["annotate", str(run.dir), "--keys", "uuu"])
    assert r.exit_code == 2 and "reserved" in r.output
    r = CliRunner().invoke(cli, ["annotate", str(run.dir / "missing")])
    assert r.exit_code == 2 and "does not exist" in r.output


@pytest.mark.parametrize("with_root", [True, False])
def test_images_come_from_the_dataset_adapter_without_an_images_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_root: bool
) -> None:
    """dataset.json as `balseg run` writes it: the adapter resolves ids, its root bounds them."""
    data = pytest.importorskip("balseg.data")
    monkeypatch.setenv("BALSEG_CACHE", str(tmp_path / "cache"))
    options = {"num_train": 3, "num_val": 1, "size": [48, 64]}
    root = str(tmp_path / "syn") if with_root else None
    src = data.open_source("synthetic", root, "train", **options)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "dataset.json").write_text(json.dumps({
        "dataset": "synthetic", "root": root, "split": "train", "options": options,
        "class_names": list(src.info.class_names),
        "palette": src.info.palette.tolist(), "ignore_index": 255}))
    with LabelStore(run_dir / "labels.sqlite", num_classes=src.info.num_classes) as s:
        (qid,) = s.add_queries([(src.image_id(1), 7, 9, None)], cycle=0, strategy="s")
    app = create_app(run_dir)
    with client_for(app) as c:
        q = nxt(c, "alice")
        assert (q["id"], q["width"], q["height"]) == (qid, 64, 48)
        assert c.get(q["image_url"]).status_code == 200
        assert c.get(f"/api/images/{src.image_id(0)}").status_code == 404  # not queried
        assert c.get("/api/images/..%2Fval%2Fimages%2Fval_0000.png").status_code == 404
    app.state.annotation.store.close()


# -- malformed bodies, CSRF, error mapping (issue 17) ----------------------------------------------
NASTY_BODIES = [
    b'{"annotator":"fz","query_id":1,"label":NaN}',
    b'{"annotator":"fz","query_id":1,"label":Infinity}',
    b'{"annotator":"fz","query_id":1,"label":-Infinity}',
    b'{"annotator":"fz","query_id":1,"label":1e400}',
    b'{"annotator":"fz","query_id":1e400,"label":1}',
    b'{"annotator":"\\ud800","query_id":1,"label":1}',
    b'{"annotator":"fz","query_id":1,"label":1,"\\udfff":1}',
    b'{"annotator":"fz","query_id":1,"label":"\\ud800"}',
    b'{"annotator":"\xed\xa0\x80","query_id":1,"label":1}',
    b'{"annotator":"fz","query_id":1,"label":1,"\xed\xa0\x80":2}',
    b'{"annotator":"fz","query_id":' + b"9" * 5000 + b',"label":1}',
    b'{"annotator":"fz","query_id":1,"label":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"annotator":"fz","query_id":1,"label":1}' + b"\xff",
    b"\xef\xbb\xbf{}",
    b"null", b"[]", b'"x"', b"1", b"{}",
]


@pytest.mark.parametrize("path", ["/api/answer", "/api/next", "/api/skip", "/api/undo"])
@pytest.mark.parametrize("raw", NASTY_BODIES, ids=range(len(NASTY_BODIES)))
def test_malformed_bodies_are_4xx_with_an_encodable_message_that_does_not_echo(
    client: TestClient, run: Run, path: str, raw: bytes
) -> None:
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, (r.status_code, r.text)  # issue 30 F6: some were 400
    detail = json.loads(r.content.decode("utf-8"))["detail"]  # strict UTF-8: no surrogates
    assert isinstance(detail, str) and detail
    for echo in ("nan", "inf", "9999", "\ud800", "\\ud800\\"):
        assert echo not in detail.lower(), detail
    assert answers_in_db(run) == []


def test_writes_must_be_json_from_this_origin(client: TestClient, run: Run) -> None:
    body = json.dumps({"annotator": "a", "query_id": run.query_ids[0], "label": 1})
    url = "http://127.0.0.1"
    refused = [
        ({"content-type": "text/plain"}, 415),
        ({}, 415),
        ({"content-type": "application/x-www-form-urlencoded"}, 415),
        ({"content-type": "multipart/form-data; boundary=x"}, 415),
        ({"content-type": "application/json", "origin": "http://evil.example"}, 403),
        ({"content-type": "application/json", "origin": "http://127.0.0.1:9999"}, 403),
        ({"content-type": "application/json", "origin": "null"}, 403),
        ({"content-type": "application/json", "sec-fetch-site": "cross-site"}, 403),
        ({"content-type": "application/json", "sec-fetch-site": "same-site"}, 403),
        ({"content-type": "application/json", "origin": url, "sec-fetch-site": "same-site"},
         403),
    ]
    for headers, status in refused:
        r = client.post("/api/answer", content=body, headers=headers)
        assert r.status_code == status, (headers, r.status_code, r.text)
    assert answers_in_db(run) == []
    assert client.post("/api/next", json={"annotator": "a"},
                       headers={"origin": url, "sec-fetch-site": "same-origin"}
                       ).status_code == 200
    ok = client.post("/api/answer", content=body,
                     headers={"content-type": "application/json; charset=utf-8",
                              "origin": url, "sec-fetch-site": "same-origin"})
    assert ok.status_code == 200, ok.text
    # reads stay open to GETs from anywhere (they change nothing, and CORS hides the answer)
    assert client.get("/api/info", headers={"sec-fetch-site": "cross-site"}).status_code == 200


@pytest.mark.parametrize("error", ["NotFoundError", "ConflictError", "ForbiddenError",
                                   "InvalidValueError", "DamagedDatabaseError", "RunDirError",
                                   "LabelStoreError", "StoreUnavailableError", "DiskFullError"])
def test_errors_map_to_http_codes_by_class_not_by_message(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    from balseg import errors

    cls = getattr(errors, error)

    def fail(*args, **kwargs):
        raise cls("no such thing /srv/secret/place/file.txt")  # a message that starts 'no '

    monkeypatch.setattr(client.app.state.annotation, "next_for", fail)
    r = client.post("/api/next", json={"annotator": "a"})
    assert r.status_code == cls.http_status, r.text
    if cls is errors.DiskFullError:  # the page's words, then the store's
        assert r.status_code == 507 and r.json()["detail"].startswith("the server's disk is full")
        assert r.json()["detail"].endswith("(no such thing file.txt)")
        return
    assert r.json()["detail"] == "no such thing file.txt"


def test_http_errors_name_no_absolute_server_path(tmp_path: Path) -> None:
    """PIL's message names the file it could not read; the server passes on only its name."""
    run = make_run(tmp_path)
    spec = json.loads((run.dir / "dataset.json").read_text())
    (run.data_root / "broken.tif").write_bytes(b"not an image at all")
    spec["images"]["city/a"] = "broken.tif"
    (run.dir / "dataset.json").write_text(json.dumps(spec))
    app = create_app(run.dir)
    with client_for(app) as c:
        q = nxt(c, "alice")
        texts = [q["image_error"], c.get("/api/images/city%2Fa").text,
                 c.get(f"/api/queries/{q['id']}").text]
    app.state.annotation.store.close()
    assert "cannot be read" in texts[0] and "broken.tif" in texts[0]
    for text in texts:
        assert str(tmp_path) not in text and "/tmp" not in text, text


def test_links_when_bound_to_every_address(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from balseg.annotate.server import machine_addresses, page_urls

    monkeypatch.setattr(socket, "gethostname", lambda: "annotation-box")
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.1.1", 0))])
    links = page_urls("0.0.0.0", 8765, "tok12345")
    assert links[0] == ("on this machine", "http://127.0.0.1:8765/?token=tok12345")
    others = [link for where, link in links if where == "from other machines"]
    assert others[:2] == ["http://annotation-box:8765/?token=tok12345",
                          "http://10.0.0.7:8765/?token=tok12345"]
    assert all("127.0.0.1" not in link and "localhost" not in link for link in others)
    assert machine_addresses()[0] == "annotation-box"
    assert page_urls("10.1.2.3", 80, None) == [("", "http://10.1.2.3:80/")]
    v6 = page_urls("::", 80, None)
    assert v6[0] == ("on this machine", "http://127.0.0.1:80/")


def test_a_port_in_use_is_one_clear_error(run: Run) -> None:
    import typer
    from typer.testing import CliRunner

    from balseg.cli import register

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cli = register(typer.Typer(), "balseg.annotate.cli")
        r = CliRunner().invoke(cli, ["annotate", str(run.dir), "--port", str(port)])
    assert r.exit_code == 2, r.output
    assert f"cannot listen on http://127.0.0.1:{port}/" in r.output and "--port" in r.output


# -- issue 30: what the API says about itself, and methods --------------------------------------
@pytest.mark.parametrize(("raw", "why"), [
    (b'{"annotator":"fz","query_id":1,"label":1}' + b"\xff", "not valid UTF-8"),
    (b'{"annotator":"fz","query_id":' + b"9" * 5000 + b',"label":1}', "a number with too"),
    (b'{"annotator":"fz","query_id":1,"label":' + b"[" * 1000 + b"]" * 1000 + b"}",
     "JSON nested too deeply"),
], ids=["utf8", "digits", "nesting"])
def test_bodies_fastapi_cannot_parse_are_422_as_documented(client: TestClient, run: Run,
                                                           raw: bytes, why: str) -> None:
    """Issue 30 F6: these were 400 'There was an error parsing the body'."""
    r = client.post("/api/answer", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(f"body: {why}"), r.text
    assert answers_in_db(run) == []


@pytest.mark.parametrize("limit", [1000, 20000])
def test_deep_nesting_is_refused_whatever_the_recursion_limit(client: TestClient, run: Run,
                                                              limit: int) -> None:
    """The server's own nesting limit decides, not the interpreter's: hypothesis raises
    sys.getrecursionlimit() during a test run, and a 1,000-level body then parsed (the
    'nesting' case above failed in a fresh clone's suite, order-dependently)."""
    import sys

    before = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        for depth in (65, 1000):
            raw = (b'{"annotator":"fz","query_id":1,"label":' + b"[" * depth + b"]" * depth
                   + b"}")
            r = client.post("/api/answer", content=raw,
                            headers={"content-type": "application/json"})
            assert r.status_code == 422, r.text
            assert r.json()["detail"] == "body: JSON nested too deeply (over 64 levels)"
        ok = b'{"annotator":"fz","query_id":1,"label":' + b"[" * 60 + b"]" * 60 + b"}"
        r = client.post("/api/answer", content=ok, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"].startswith("body.label"), r.text
    finally:
        sys.setrecursionlimit(before)
    assert answers_in_db(run) == []


def test_the_schema_is_served_behind_the_guard_and_says_what_the_server_does(run: Run) -> None:
    """Issue 30 F9: no schema was served; 415, 404 and 409 were undocumented, the 422 body
    was documented as an array, an empty annotator was valid, images were 'JSON'."""
    token = "s3cret-token-value"
    app = create_app(run.dir, token=token)
    with TestClient(app, base_url="http://192.0.2.10") as c:
        assert c.get("/openapi.json").status_code == 401
        spec = c.get("/openapi.json", headers={"X-Balseg-Token": token}).json()
    app.state.annotation.store.close()
    assert spec["security"] and "tokenHeader" in spec["components"]["securitySchemes"]
    ops = {f"{m} {p}": op for p, ms in spec["paths"].items() for m, op in ms.items()}
    assert len(ops) == 13
    answer = ops["post /api/answer"]["responses"]
    assert {"200", "401", "403", "404", "409", "413", "415", "422", "503", "507"} <= set(answer)
    for op in ops.values():
        assert "401" in op["responses"]
        for code, response in op["responses"].items():
            if code != "200":  # every error body as it is: {"detail": "one line"}
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorOut"}, code
    error = spec["components"]["schemas"]["ErrorOut"]
    assert error["properties"]["detail"]["type"] == "string" and error["required"] == ["detail"]
    annotator = spec["components"]["schemas"]["WhoIn"]["properties"]["annotator"]
    assert annotator["minLength"] == 1 and annotator["maxLength"] == 64
    pattern = re.compile(annotator["pattern"])
    for bad in ("", " ", " alice", "alice ", "a\tb", "\u202e", "a" * 65):
        assert pattern.search(bad) is None or len(bad) > 64, repr(bad)
    assert pattern.search("alice bob") and pattern.search("Zoë") and pattern.search("李")
    label = spec["components"]["schemas"]["AnswerIn"]["properties"]["label"]
    assert {"type": "integer", "minimum": 0, "maximum": len(CLASS_NAMES) - 1} in label["anyOf"]
    image = ops["get /api/images/{image_id}"]["responses"]["200"]["content"]
    assert "image/png" in image and "image/jpeg" in image and "application/json" not in image
    assert "application/json" not in ops["get /api/queries/{query_id}/image"]["responses"][
        "200"]["content"]
    assert "text/html" in ops["get /"]["responses"]["200"]["content"]


def test_without_a_token_the_schema_lists_the_host_refusal_and_no_security(
    client: TestClient
) -> None:
    spec = client.get("/openapi.json").json()
    assert "security" not in spec
    assert "401" not in spec["paths"]["/api/info"]["get"]["responses"]
    assert "403" in spec["paths"]["/api/info"]["get"]["responses"]
    assert client.get("/openapi.json", headers={"host": "evil.example"}).status_code == 403


@pytest.mark.parametrize("name", ["", " ", "\u202e", "a\u200bb", "x" * 65])
def test_names_the_schema_refuses_are_refused(client: TestClient, name: str) -> None:
    r = client.post("/api/next", json={"annotator": name})
    assert r.status_code == 422 and r.json()["detail"].startswith("body.annotator"), r.text
    r = client.get("/api/progress", params={"annotator": name})
    assert r.status_code == 422, r.text


def test_other_methods_are_405_and_head_answers_every_get(client: TestClient, run: Run) -> None:
    """Issue 30: TRACE was 415 (the guard took it for a write), HEAD was 405."""
    for method in ("TRACE", "PUT", "PATCH", "DELETE", "OPTIONS"):
        r = client.request(method, "/api/answer")
        assert r.status_code == 405 and r.headers["allow"] == "POST", (method, r.text)
    r = client.post("/api/info", json={})
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert client.request("TRACE", "/api/nope").status_code == 404
    for path in ("/", "/api/health", "/api/info", "/api/images/city%2Fa",
                 f"/api/queries/{run.query_ids[0]}", "/api/progress?annotator=a",
                 "/static/annotate.js"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, (path, head.status_code)
        assert head.content == b"" and head.headers["content-type"] == got.headers[
            "content-type"], path
        assert head.headers["content-length"] == got.headers["content-length"], path
    assert client.head("/api/queries/999").status_code == 404
    assert client.head("/api/next").status_code == 405
    assert answers_in_db(run) == []


def test_websocket_upgrades_need_the_token_and_this_origin(run: Run) -> None:
    """Issue 30: the guard passed every websocket through unchecked. No route takes one, so
    a passed upgrade is closed by the router (1000); a refused one by the guard (1008)."""
    from starlette.websockets import WebSocketDisconnect

    token = "s3cret-token-value"
    app = create_app(run.dir, token=token)

    def close_code(c: TestClient, url: str, **kw) -> int:
        with pytest.raises(WebSocketDisconnect) as closed, c.websocket_connect(url, **kw):
            pass
        return closed.value.code

    with TestClient(app, base_url="http://192.0.2.10") as c:
        assert close_code(c, "/ws") == 1008
        assert close_code(c, "/ws", headers={"X-Balseg-Token": "wrong-token"}) == 1008
        assert close_code(c, f"/ws?token={token}", headers={"origin": "http://evil.example"}
                          ) == 1008
        assert close_code(c, f"/ws?token={token}") == 1000  # passed on: no such route
    app.state.annotation.store.close()
    loopback = create_app(run.dir)
    with TestClient(loopback, base_url="http://127.0.0.1") as c:
        assert close_code(c, "ws://evil.example/ws") == 1008
        assert close_code(c, "ws://127.0.0.2:8765/ws") == 1000
    loopback.state.annotation.store.close()


def test_a_query_parameter_given_twice_is_refused(client: TestClient, run: Run) -> None:
    """schemathesis: ``?after=[]&after=0`` passed as ``after=0`` (FastAPI takes the last)."""
    r = client.get("/api/review/next?annotator=a&after=%5B%5D&after=0")
    assert r.status_code == 422 and r.json()["detail"] == "query.after: given more than once"
    r = client.get("/api/progress?annotator=a&annotator=b")
    assert r.status_code == 422, r.text
    assert client.get("/api/review/next?annotator=a&after=0&other=1&other=2"
                      ).status_code == 200  # parameters the route does not take are ignored
