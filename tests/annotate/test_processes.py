"""Real server processes: two servers on one run directory, signals, checkpoints, start-up.

Each test starts ``python -m balseg annotate`` as a separate process (a fresh interpreter),
the way people run it, so these are the tests that see process boundaries: SQLite's locks
between two servers, uvicorn's signal handling, and what a fresh ``balseg`` imports.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from balseg.labels.store import LabelStore

from .annotate_support import Run, free_port, make_run

pytestmark = pytest.mark.slow
SRC = Path(__file__).resolve().parents[2] / "src"
QUERIES = [("city/a", y, x) for y in range(0, 48, 6) for x in range(0, 64, 8)]  # 64 queries


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


@contextmanager
def server(run_dir: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``balseg annotate RUN_DIR`` on a free port; yields (url, process)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "balseg", "annotate", str(run_dir), "--port", str(port), *args],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}: {proc.stdout.read()}")
            try:
                if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not start")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _answers_in_main_file_alone(run: Run, tmp: Path) -> list[tuple[int, int | None]]:
    """What a backup of labels.sqlite alone (no -wal, no -shm) holds."""
    tmp.mkdir(exist_ok=True)
    shutil.copy(run.dir / "labels.sqlite", tmp / "labels.sqlite")
    with LabelStore(tmp / "labels.sqlite", readonly=True) as s:
        return [(a.query_id, a.label) for a in s.answers()]


def test_two_server_processes_never_answer_a_query_twice(tmp_path: Path) -> None:
    """Issue 17: two servers on one run, two answers to the same query at the same instant,
    for every query. The rules run inside SQLite's write lock, so exactly one wins."""
    run = make_run(tmp_path, queries=QUERIES)
    codes: dict[int, list[int]] = {}
    with server(run.dir) as (url_a, _), server(run.dir) as (url_b, _), \
            httpx.Client(base_url=url_a, timeout=30) as a, \
            httpx.Client(base_url=url_b, timeout=30) as b:
        for qid in run.query_ids:
            gate = threading.Barrier(2)
            got: list[int] = []

            def race(client: httpx.Client, who: str, qid: int = qid,
                     gate: threading.Barrier = gate, got: list[int] = got) -> None:
                gate.wait()
                got.append(client.post("/api/answer", json={
                    "annotator": who, "query_id": qid, "label": qid % 3}).status_code)

            threads = [threading.Thread(target=race, args=(a, "alice")),
                       threading.Thread(target=race, args=(b, "bob"))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            codes[qid] = sorted(got)
    assert codes == {qid: [200, 409] for qid in run.query_ids}
    with run.store() as s:
        assert sorted(a.query_id for a in s.answers()) == run.query_ids
        assert s.verify_tallies() == [] and s.counts()["open"] == 0


def test_two_server_processes_lease_distinct_queries(tmp_path: Path) -> None:
    run = make_run(tmp_path, queries=QUERIES)
    done: dict[str, list[int]] = {"alice": [], "bob": []}
    errors: list[str] = []
    with server(run.dir) as (url_a, _), server(run.dir) as (url_b, _):
        gate = threading.Barrier(2)

        def work(who: str, url: str) -> None:
            with httpx.Client(base_url=url, timeout=30) as c:
                gate.wait()
                while True:
                    q = c.post("/api/next", json={"annotator": who}).json()["query"]
                    if q is None:
                        return
                    r = c.post("/api/answer", json={"annotator": who, "query_id": q["id"],
                                                    "label": 0})
                    if r.status_code != 200:
                        errors.append(f"{who}: {r.status_code} {r.text}")
                        return
                    done[who].append(q["id"])

        threads = [threading.Thread(target=work, args=("alice", url_a)),
                   threading.Thread(target=work, args=("bob", url_b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert errors == []
    assert done["alice"] and done["bob"]
    assert sorted(done["alice"] + done["bob"]) == run.query_ids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_leaves_every_answer_in_labels_sqlite(tmp_path: Path, sig: int) -> None:
    """Issue 18: after SIGTERM or Ctrl-C a copy of labels.sqlite alone has every answer."""
    run = make_run(tmp_path)
    with server(run.dir, "--checkpoint-every", "3600") as (url, proc):
        with httpx.Client(base_url=url, timeout=10) as c:
            for qid in run.query_ids:
                assert c.post("/api/answer", json={"annotator": "a", "query_id": qid,
                                                   "label": 1}).status_code == 200
        assert _answers_in_main_file_alone(run, tmp_path / "before") == []  # all in the WAL
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130, -sig), (proc.returncode, out)
    assert "Traceback" not in out, out
    assert _answers_in_main_file_alone(run, tmp_path / "after") == [
        (qid, 1) for qid in run.query_ids]


def test_the_running_server_checkpoints_periodically(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    with server(run.dir, "--checkpoint-every", "0.2") as (url, _), \
            httpx.Client(base_url=url, timeout=10) as c:
        for qid in run.query_ids[:3]:
            assert c.post("/api/answer", json={"annotator": "a", "query_id": qid,
                                               "label": 2}).status_code == 200
        deadline = time.monotonic() + 20
        while len(got := _answers_in_main_file_alone(run, tmp_path / "copy")) < 3:
            assert time.monotonic() < deadline, got
            time.sleep(0.2)
    assert got == [(qid, 2) for qid in run.query_ids[:3]]


LIGHT_START = r"""
import sys
from pathlib import Path

from typer.testing import CliRunner

from balseg.cli import app, _register_all

_register_all()
assert "torch" not in sys.modules, "registering the CLI imported torch"
runner = CliRunner()
for args in (["--help"], ["annotate", "--help"], ["report", "--help"]):
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (args, r.output)
run_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
r = runner.invoke(app, ["export", str(run_dir), "-o", str(out / "tasks.json")])
assert r.exit_code == 0, r.output
r = runner.invoke(app, ["import", str(run_dir), str(out / "tasks.json"), "--annotator", "x"])
assert r.exit_code == 1, r.output  # nothing labeled yet
r = runner.invoke(app, ["backup", str(run_dir), str(out / "copy.sqlite")])
assert r.exit_code == 0, r.output
from balseg.annotate.app import create_app

create_app(run_dir)
sys.path.insert(0, sys.argv[3])  # the repository: the report tests' fabricated runs
from tests.report.fabricate import CYCLES, metrics_row, write_run

runs = out / "runs"
write_run(runs / "r0", strategy="balentacq", seed=0,
          rows=[metrics_row("balentacq", 0, c) for c in CYCLES])
r = runner.invoke(app, ["report", str(runs / "r0"), "--out", str(out / "report")])
assert r.exit_code == 0, r.output
assert (out / "report" / "index.html").is_file()
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("torch modules:", len(loaded))
assert not loaded, loaded[:5]
"""


def test_the_cli_and_the_app_start_without_torch(tmp_path: Path) -> None:
    """Issue 17: --help, annotate, export, import, backup and report never import torch (a
    fresh interpreter, so nothing another test imported counts)."""
    run = make_run(tmp_path)
    script = tmp_path / "light.py"
    script.write_text(LIGHT_START)
    out = subprocess.run([sys.executable, str(script), str(run.dir), str(tmp_path),
                          str(SRC.parent)],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "torch modules: 0" in out.stdout
