"""The ML backend's app without a Label Studio: its guard (as ``balseg annotate``'s, plus
Basic auth) and what it answers for a run with no model yet. Label Studio calling it is in
test_live.py."""

from __future__ import annotations

from fastapi.testclient import TestClient

from balseg.config import RunConfig
from balseg.labelstudio.backend import brush_target, create_backend
from balseg.rundir import RunDir

from ..annotate.annotate_support import make_run

LOCAL = "http://127.0.0.1:9090"


def _run(tmp_path):
    run = make_run(tmp_path)
    RunDir(run.dir).write_config(RunConfig.model_validate({"oracle": {"kind": "person"}}))
    return run.dir


def test_the_guard_of_balseg_annotate_and_basic_auth_for_label_studio(tmp_path):
    run_dir = _run(tmp_path)
    token = "backend-token-0123"
    with TestClient(create_backend(run_dir, token=token), base_url=LOCAL) as c:
        assert c.get("/health").status_code == 401
        assert c.get("/health", auth=("label-studio", token)).json()["status"] == "UP"
        assert c.get("/health", auth=("label-studio", "wrong-token")).status_code == 401
        assert c.get("/health", headers={"Authorization": "Basic %%%"}).status_code == 401
        assert c.get("/health", headers={"X-Balseg-Token": token}).status_code == 200
    app = create_backend(run_dir)  # no token: loopback only
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/health").status_code == 200
        assert c.post("/webhook", content=b"{}", headers={
            "content-type": "text/plain"}).status_code == 415  # a cross-site form post
        assert c.post("/webhook", json={}, headers={
            "origin": "http://elsewhere.example"}).status_code == 403
    with TestClient(app, base_url="http://rebound.example:9090") as c:
        assert c.get("/health").status_code == 403  # DNS rebinding


def test_a_run_without_a_model_predicts_nothing_and_without_label_studio_never_syncs(
        tmp_path):
    with TestClient(create_backend(_run(tmp_path)), base_url=LOCAL) as c:
        assert c.get("/health").json()["model_version"] == "balseg-untrained"
        assert c.post("/setup", json={"project": "1.2", "schema": "<View/>"}).json() == {
            "model_version": "balseg-untrained"}
        out = c.post("/predict", json={"tasks": [{"id": 7, "data": {"image": "/x.png"}}]})
        assert out.json()["results"] == [{"result": [], "score": None,
                                          "model_version": "balseg-untrained"}]
        hook = c.post("/webhook", json={"action": "ANNOTATION_CREATED"}).json()
        assert hook == {"status": "ok", "action": "ANNOTATION_CREATED",
                        "sync_scheduled": False}
        assert c.get("/status").json()["run"] == "idle"


def test_the_brush_control_of_any_project():
    config = ('<View><Image name="img" value="$url"/><BrushLabels name="seg" toName="img">'
              '<Label value="road"/><Label value="car"/></BrushLabels></View>')
    assert brush_target(config) == ("seg", "img", ["road", "car"])
    assert brush_target('<View><Image name="i" value="$x"/></View>') is None
    assert brush_target("<View") is None
    assert brush_target('<!DOCTYPE x [<!ENTITY a "b">]><View/>') is None
