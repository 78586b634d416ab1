"""balseg against a real Label Studio: the whole loop, re-annotations, a restart, tokens, and
the ML backend called by Label Studio itself."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from balseg.labels import LabelStore
from balseg.labelstudio.tasks import CLASS_KEYS, UNKNOWN_KEY
from balseg.rundir import RunDir

from .ls_support import (
    LS_PYTHON,
    TOKEN,
    USER,
    annotate,
    balseg,
    free_port,
    project_of,
    reannotate,
    run_config,
    tasks_of,
    waiting_run,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CLASSES = ["sky", "ground", "wall", "vegetation", "pole", "sign"]  # the synthetic dataset's


def store_of(run_dir):
    return LabelStore(RunDir(run_dir).labels)


def ls_rows(run_dir):
    with store_of(run_dir) as s, s.snapshot() as tx:
        return [dict(zip(("query_id", "annotation_id", "label", "annotator", "answer_id",
                          "status"), r, strict=True)) for r in tx.execute(
            "SELECT query_id, annotation_id, label, annotator, answer_id, status"
            " FROM labelstudio_annotations ORDER BY id").fetchall()]


def one_error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


def choice_for(task) -> str:
    """A deterministic answer per task, 'unknown' for every third."""
    qid = task["data"]["balseg_query_id"]
    return "unknown" if qid % 3 == 0 else CLASSES[qid % len(CLASSES)]


# -- the whole cycle ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cycled(label_studio, ls, synthetic_root, tmp_path_factory):
    """A run taken once around the loop through Label Studio; what each step left."""
    tmp = tmp_path_factory.mktemp("ls-cycle")
    title = "balseg cycle test"
    cfg = run_config(tmp, synthetic_root, label_studio.url, title)
    run_dir = tmp / "run"
    first = balseg("run", cfg, "--run-dir", run_dir, "--quiet")
    project = project_of(ls, title)
    tasks0 = tasks_of(ls, project["id"])
    with store_of(run_dir) as s:
        queries0 = s.queries(cycle=0)
    given = {t["data"]["balseg_query_id"]: (choice_for(t), annotate(ls, t, choice_for(t)))
             for t in tasks0}
    second = balseg("run", run_dir, "--quiet")
    return SimpleNamespace(run_dir=run_dir, project=project, first=first, second=second,
                           tasks0=tasks0, queries0=queries0, given=given,
                           tasks1=tasks_of(ls, project["id"]))


def test_the_first_run_creates_the_project_uploads_each_query_and_waits(cycled):
    assert cycled.first.exit_code == 4, cycled.first.output
    pid = cycled.project["id"]
    assert f"/projects/{pid}/data" in cycled.first.output
    parsed = cycled.project["parsed_label_config"]
    assert parsed["class"]["type"] == "Choices"
    assert parsed["class"]["labels"] == [*CLASSES, "unknown"]
    keys = {name: a.get("hotkey") for name, a in parsed["class"]["labels_attrs"].items()}
    assert keys == {**dict(zip(CLASSES, CLASS_KEYS, strict=False)), "unknown": UNKNOWN_KEY}
    assert parsed["pixel"]["type"] == "KeyPointLabels"
    # one task per query, the point at the pixel's centre, the score in its data
    by_query = {q.id: q for q in cycled.queries0}
    assert sorted(t["data"]["balseg_query_id"] for t in cycled.tasks0) == sorted(by_query)
    for t in cycled.tasks0:
        q = by_query[t["data"]["balseg_query_id"]]
        (point,) = t["predictions"][0]["result"]
        w, h = point["original_width"], point["original_height"]
        assert (w, h) == (64, 48)
        assert point["value"]["x"] == pytest.approx(100 * (q.x + 0.5) / w)
        assert point["value"]["y"] == pytest.approx(100 * (q.y + 0.5) / h)
        assert point["value"]["keypointlabels"] == ["queried pixel"]
        assert t["data"]["balseg_image_id"] == q.image_id and "score" in t["data"]
        assert t["data"]["image"].startswith("/data/upload/")
        assert t["data"]["balseg_cycle"] == 0
    # Label Studio serves the uploaded images itself (balseg's files need not be reachable)


def test_label_studio_serves_the_uploaded_images(cycled, ls):
    for t in cycled.tasks0:
        assert ls.get_bytes(t["data"]["image"]).startswith(b"\x89PNG")


def test_every_answer_arrives_once_and_the_next_cycle_is_uploaded(cycled, ls):
    assert cycled.second.exit_code == 4, cycled.second.output
    rundir = RunDir(cycled.run_dir)
    assert rundir.checkpoint_cycles() == [0]  # cycle 0 trained on the answers
    with store_of(cycled.run_dir) as s:
        answers = s.answers()
        queries1 = s.queries(cycle=1)
        counts = s.counts()
    cycle0 = {q.id for q in cycled.queries0}
    mine = [a for a in answers if a.query_id in cycle0]
    assert sorted(a.query_id for a in mine) == sorted(cycle0)  # each exactly once
    for a in mine:
        choice = cycled.given[a.query_id][0]
        assert a.label == (None if choice == "unknown" else CLASSES.index(choice))
        assert a.annotator == USER and a.source == "person"
    assert counts["unknown"] == sum(c == "unknown" for c, _ in cycled.given.values())
    rows = ls_rows(cycled.run_dir)
    assert {(r["query_id"], r["annotation_id"]) for r in rows} == {
        (qid, ann["id"]) for qid, (_, ann) in cycled.given.items()}
    assert {r["status"] for r in rows} == {"applied"}
    # the next cycle's queries are tasks now, and nothing was uploaded twice
    new = [t for t in cycled.tasks1 if t["data"]["balseg_cycle"] == 1]
    assert queries1 and sorted(t["data"]["balseg_query_id"] for t in new) == sorted(
        q.id for q in queries1)
    assert len(cycled.tasks1) == len(cycled.tasks0) + len(queries1)
    scores = [t["data"]["score"] for t in sorted(new, key=lambda t: t["id"])]
    assert scores == sorted(scores, reverse=True)  # uploaded in balseg's order
    # a sync finds nothing new: no answer, no task
    again = balseg("sync", cycled.run_dir)
    assert again.exit_code == 0, again.output
    assert "0 new answers" in again.output and "0 tasks uploaded" in again.output
    with store_of(cycled.run_dir) as s:
        assert len(s.answers()) == len(answers)
    assert len(tasks_of(ls, cycled.project["id"])) == len(cycled.tasks1)


def test_a_reannotation_after_the_cycle_trained_is_recorded_not_applied(cycled, ls):
    qid = min(cycled.given)
    _, ann = cycled.given[qid]
    with store_of(cycled.run_dir) as s:
        before = [a for a in s.answers() if a.query_id == qid]
    other = next(c for c in CLASSES if c != cycled.given[qid][0])
    reannotate(ls, ann, other)
    r = balseg("sync", cycled.run_dir)
    assert r.exit_code == 0, r.output
    assert "after cycle 0 trained" in r.output and "recorded as late" in r.output
    with store_of(cycled.run_dir) as s:
        assert [a for a in s.answers() if a.query_id == qid] == before  # unchanged
    late = [row for row in ls_rows(cycled.run_dir) if row["status"] == "late"]
    assert [(row["query_id"], row["annotation_id"], row["label"]) for row in late] == [
        (qid, ann["id"], CLASSES.index(other))]
    r = balseg("sync", cycled.run_dir)  # said once, recorded once
    assert "late" not in r.output.replace("recorded as late", "")
    assert len([row for row in ls_rows(cycled.run_dir) if row["status"] == "late"]) == 1


# -- the ML backend, called by Label Studio -------------------------------------------------------
class _Served:
    """The backend app on a loopback port, in a thread of this process."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def decode_with_sdk(rles):
    """Label Studio's own decoder (label_studio_sdk.converter.brush), in its virtualenv."""
    code = ("import json, sys; from label_studio_sdk.converter.brush import decode_rle;"
            " print(json.dumps([decode_rle(r).tolist() for r in json.load(sys.stdin)]))")
    out = subprocess.run([str(LS_PYTHON), "-c", code], input=json.dumps(rles), text=True,
                         capture_output=True, check=True, timeout=120)
    return [np.asarray(v, dtype=np.uint8) for v in json.loads(out.stdout)]


def test_label_studio_calls_predict_and_keeps_the_mask_and_webhooks_continue_the_run(
        cycled, ls, label_studio, monkeypatch):
    import balseg
    from balseg.labelstudio.backend import create_backend

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)  # the backend's token, as a user's

    launched = []
    app = create_backend(cycled.run_dir, launcher=lambda d: launched.append(d))
    pid = cycled.project["id"]
    new = [t for t in cycled.tasks1 if t["data"]["balseg_cycle"] == 1]
    with _Served(app) as url:
        ml = ls.request("POST", "/api/ml", json={"url": url, "project": pid,
                                                 "title": "balseg"})
        assert ml["readable_state"] == "Connected", ml
        assert ml["model_version"] == "balseg-cycle-0"
        task = new[0]
        done = ls.request("POST", "/api/dm/actions", params={
            "id": "retrieve_tasks_predictions", "project": pid},
            json={"selectedItems": {"all": False, "included": [task["id"]]}})
        assert "1 predictions" in json.dumps(done), done
        preds = ls.request("GET", "/api/predictions", params={"task": task["id"]})
        (mask_pred,) = [p for p in preds if p["model_version"] == "balseg-cycle-0"]
        assert isinstance(mask_pred["score"], float) and mask_pred["score"] > 0
        regions = mask_pred["result"]
        assert regions and {r["type"] for r in regions} == {"brushlabels"}
        # Label Studio's decoder gives back the model's mask, class by class
        decoded = decode_with_sdk([r["value"]["rle"] for r in regions])
        run = balseg.load_run(cycled.run_dir)
        image_path = app.state.backend.images.image_path(task["data"]["balseg_image_id"])
        classes = run.predict(image_path)[0].classes
        for region, flat in zip(regions, decoded, strict=True):
            alpha = flat.reshape(48, 64, 4)[:, :, 3]
            c = CLASSES.index(region["value"]["brushlabels"][0])
            assert np.array_equal(alpha > 0, classes == c)
        # Label Studio made the webhook itself; answering the cycle continues the run once
        hooks = ls.request("GET", "/api/webhooks", params={"project": pid})
        assert [h["url"] for h in hooks] == [f"{url}/webhook"]
        for t in new:
            annotate(ls, t, "sky")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not launched:
            time.sleep(0.2)
        assert launched == [cycled.run_dir]
        time.sleep(1.0)  # any later webhook starts nothing more
        assert launched == [cycled.run_dir]
        status = httpx.get(f"{url}/status", timeout=10).json()
        assert status["last_error"] is None and status["syncs"] >= 1
        ls.request("DELETE", f"/api/ml/{ml['id']}")
    with store_of(cycled.run_dir) as s:
        assert not s.open_queries(cycle=1)
        assert sorted(a.query_id for a in s.answers() if a.query_id in
                      {t["data"]["balseg_query_id"] for t in new}) == sorted(
            t["data"]["balseg_query_id"] for t in new)


# -- re-annotation and deletion before training ---------------------------------------------------
def test_before_training_the_latest_annotation_wins_and_deletions_reopen(
        label_studio, ls, synthetic_root, tmp_path):
    run_dir, pid = waiting_run(label_studio, ls, synthetic_root, tmp_path,
                               "balseg reannotation test")
    a, b, c, *_ = tasks_of(ls, pid)
    qa, qb, qc = (t["data"]["balseg_query_id"] for t in (a, b, c))
    ann_a = annotate(ls, a, "sky")
    ann_b = annotate(ls, b, "wall")
    assert "2 new answers" in balseg("sync", run_dir).output
    reannotate(ls, ann_a, "ground")  # changed
    ls.request("DELETE", f"/api/annotations/{ann_b['id']}")  # taken back
    ls.request("DELETE", f"/api/tasks/{c['id']}")  # a task deleted while open
    r = balseg("sync", run_dir)
    assert r.exit_code == 0, r.output
    assert "1 replaced by a newer annotation" in r.output and "1 withdrawn" in r.output
    assert "deleted in Label Studio while they were open: uploaded again" in r.output
    with store_of(run_dir) as s:
        assert [(x.label, x.annotator) for x in s.answers(qa)] == [(1, USER)]
        assert s.answers(qb) == []  # open again
        assert qb in {q.id for q in s.open_queries()}
    statuses = [(row["query_id"], row["status"]) for row in ls_rows(run_dir)]
    assert sorted(statuses) == sorted([(qa, "replaced"), (qb, "withdrawn"), (qa, "applied")])
    tasks = tasks_of(ls, pid)
    assert sorted(t["data"]["balseg_query_id"] for t in tasks).count(qc) == 1  # again, once
    # a second annotation of the same task by the same page: the newest one counts
    b_task = next(t for t in tasks if t["data"]["balseg_query_id"] == qb)
    annotate(ls, b_task, "pole")
    annotate(ls, b_task, "sign")
    assert "1 new answers" in balseg("sync", run_dir).output
    with store_of(run_dir) as s:
        assert [x.label for x in s.answers(qb)] == [CLASSES.index("sign")]


# -- a restart, tokens, an unreachable server -----------------------------------------------------
def test_a_server_restart_in_the_middle_loses_and_repeats_nothing(
        label_studio, ls, synthetic_root, tmp_path):
    run_dir, pid = waiting_run(label_studio, ls, synthetic_root, tmp_path,
                               "balseg restart test")
    tasks = tasks_of(ls, pid)
    half = len(tasks) // 2
    for t in tasks[:half]:
        annotate(ls, t, "sky")
    label_studio.stop()
    try:
        r = balseg("sync", run_dir)
        assert r.exit_code == 2
        line = one_error_line(r)
        assert f"cannot reach Label Studio at {label_studio.url}" in line
        r = balseg("run", run_dir, "--quiet")
        assert r.exit_code == 2 and label_studio.url in one_error_line(r)
    finally:
        label_studio.start()
    for t in tasks[half:]:
        annotate(ls, t, "ground")
    r = balseg("sync", run_dir)
    assert r.exit_code == 0, r.output
    assert f"{len(tasks)} new answers" in r.output and "0 tasks uploaded" in r.output
    with store_of(run_dir) as s:
        assert len(s.answers()) == len(tasks) and not s.open_queries()
    assert len(tasks_of(ls, pid)) == len(tasks)
    print(f"Label Studio restarted in {label_studio.start_seconds[-1]:.1f} s")


def test_a_wrong_token_is_one_line_and_exit_2(label_studio, synthetic_root, tmp_path):
    cfg = run_config(tmp_path, synthetic_root, label_studio.url, "balseg token test")
    for wrong in ("not-the-token-0123456789", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"):
        r = balseg("run", cfg, "--run-dir", tmp_path / "run", "--quiet", token=wrong)
        assert r.exit_code == 2, r.output
        line = one_error_line(r)
        assert f"Label Studio at {label_studio.url} refused the" in line
        assert "LABEL_STUDIO_API_KEY" in line and wrong not in r.output
    r = balseg("run", cfg, "--run-dir", tmp_path / "run", "--quiet", token=None)
    assert r.exit_code == 2 and "no Label Studio API token" in one_error_line(r)


def test_a_personal_access_token_works_as_well(label_studio, ls, synthetic_root, tmp_path):
    """Label Studio's default kind of token: a JWT refresh token exchanged for access."""
    made = ls.request("POST", "/api/token/")
    pat = made.get("token") or made.get("refresh")
    assert pat and pat.count(".") == 2
    cfg = run_config(tmp_path, synthetic_root, label_studio.url, "balseg pat test")
    r = balseg("run", cfg, "--run-dir", tmp_path / "run", "--quiet", token=pat)
    assert r.exit_code == 4, r.output
    assert len(tasks_of(ls, project_of(ls, "balseg pat test")["id"])) == 6


def test_the_token_file_and_the_snapshot(label_studio, ls, synthetic_root, tmp_path):
    """oracle.token_file when the variable is unset; the token itself is never written to
    the run directory."""
    token_file = tmp_path / "ls-token"
    token_file.write_text(TOKEN + "\n")
    cfg = run_config(tmp_path, synthetic_root, label_studio.url, "balseg token file test",
                     **{"oracle.token_file": str(token_file)})
    run_dir = tmp_path / "run"
    r = balseg("run", cfg, "--run-dir", run_dir, "--quiet", token=None)
    assert r.exit_code == 4, r.output
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
