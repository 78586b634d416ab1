"""A full disk under a running annotation server, on a tmpfs of 3 MB of its own.

The scenario of issue 30: the run's next cycle lands in the write-ahead log, the disk fills
up, so that checkpoints (which must grow ``labels.sqlite``) and answers both fail. What must
hold:

- the checkpoint thread lives on; answers are refused with a 507 that says what happened,
  ``/api/health`` says it too, and the log says it once, however many requests fail;
- once space is freed, without a restart: answers are accepted, checkpoints resume and the
  write-ahead log shrinks; at the stop, ``labels.sqlite`` alone holds every acknowledged
  answer;
- stopped while the disk is still full, the server says in one line which ``-wal`` file
  holds what ``labels.sqlite`` lacks, and ``balseg backup`` makes one whole file of the pair.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from balseg.annotate.app import create_app
from balseg.labels.store import LabelStore

from ..tmpfs_support import fill, mounted_tmpfs
from .annotate_support import make_run

QUERIES = [("city/a", y, x) for y in range(0, 48, 2) for x in range(0, 64, 4)]  # 384
NEXT_CYCLE = [(f"city/next{i}", y, x, 0.5) for i in range(10) for y in range(15)
              for x in range(20)]  # 3,000 queries: about 500 KB of log, pages not in the file


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", size="3m") as disk:
        yield disk


class Annotator:
    """One person answering through the page's API; remembers what the server acknowledged."""

    def __init__(self, client: TestClient, name: str = "alice") -> None:
        self.c, self.name = client, name
        self.acked: dict[int, tuple[int, int]] = {}  # answer id -> (query id, label)
        self.statuses: list[int] = []

    def answer_one(self) -> tuple[int, str]:
        r = self.c.post("/api/next", json={"annotator": self.name})
        if r.status_code == 200:
            q = r.json()["query"]
            label = q["id"] % 3
            r = self.c.post("/api/answer", json={"annotator": self.name, "query_id": q["id"],
                                                 "label": label})
            if r.status_code == 200:
                self.acked[r.json()["answer_id"]] = (q["id"], label)
        self.statuses.append(r.status_code)
        return r.status_code, r.json()["detail"] if r.status_code != 200 else ""


def fill_behind_the_log(app, run_dir: Path, disk: Path) -> list[Path]:
    """The next cycle's queries written by another connection (as ``balseg run`` does) into
    the last space of the disk, before any checkpoint can copy them into labels.sqlite."""
    reserve = disk / "reserve"
    reserve.write_bytes(b"\0" * 1_000_000)
    first = fill(disk, "filler-1")
    with app.state.annotation.store._lock:  # no checkpoint until the disk is full
        reserve.unlink()
        with LabelStore(run_dir / "labels.sqlite", num_classes=3) as loop:
            loop.add_queries(NEXT_CYCLE, cycle=1, strategy="balent")
        second = fill(disk, "filler-2")
    return [first, second]


def answer_until_refused(person: Annotator) -> str:
    """Answer until both an answer and the checkpoints have failed for lack of space."""
    for _ in range(200):
        status, detail = person.answer_one()
        problem = person.c.get("/api/health").json()["problem"] or ""
        if status == 507 and "full while checkpointing" in problem:
            return detail
        time.sleep(0.01)
    raise AssertionError(f"the full disk never refused an answer: {person.statuses[-20:]}")


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "balseg-checkpoint"]


def records(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_a_full_disk_is_survived_and_the_server_recovers_without_a_restart(
    small_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="balseg.annotate")
    run = make_run(small_disk, queries=QUERIES)
    app = create_app(run.dir, checkpoint_interval_s=0.05)
    wal = run.dir / "labels.sqlite-wal"
    with TestClient(app, base_url="http://127.0.0.1") as c:
        person = Annotator(c)
        for _ in range(3):
            assert person.answer_one()[0] == 200
        fillers = fill_behind_the_log(app, run.dir, small_disk)

        detail = answer_until_refused(person)
        assert "disk is full" in detail and "not saved" in detail and "no restart" in detail
        assert str(small_disk) not in detail
        time.sleep(0.3)  # a few more checkpoint tries, all failing
        assert len(checkpoint_threads()) == 1  # the checkpoint thread did not die of it
        health = c.get("/api/health").json()
        assert health["ok"] and "disk is full" in health["problem"]
        for _ in range(5):
            assert person.answer_one()[0] == 507
        assert len(records(caplog, "disk is full")) == 1  # said once, not per request
        peak = wal.stat().st_size

        for filler in fillers:  # space is freed: no restart
            filler.unlink()
        assert person.answer_one()[0] == 200
        deadline = time.monotonic() + 15  # checkpoints resume and give the log's space back
        while (c.get("/api/health").json()["problem"] is not None
               or wal.stat().st_size >= peak):
            assert time.monotonic() < deadline, (c.get("/api/health").json(),
                                                 wal.stat().st_size, peak)
            time.sleep(0.05)
        for _ in range(3):
            assert person.answer_one()[0] == 200
    app.state.annotation.close()

    assert len(records(caplog, "takes writes again")) == 1
    assert records(caplog, "final checkpoint") == []
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run.dir / "labels.sqlite", alone / "labels.sqlite")  # without its -wal
    with LabelStore(alone / "labels.sqlite", readonly=True) as copy:
        got = {a.id: (a.query_id, a.label) for a in copy.answers()}
        assert got == person.acked and len(got) >= 7
        assert len(copy.queries()) == len(QUERIES) + len(NEXT_CYCLE)


def test_stopped_on_a_full_disk_the_server_names_the_wal_and_backup_makes_a_whole_copy(
    small_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import typer

    from balseg.cli import register

    cli = register(typer.Typer(), "balseg.annotate.cli")
    caplog.set_level(logging.WARNING, logger="balseg.annotate")
    run = make_run(small_disk, queries=QUERIES)
    app = create_app(run.dir, checkpoint_interval_s=0.05)
    with TestClient(app, base_url="http://127.0.0.1") as c:  # its exit is the lifespan's end
        person = Annotator(c)
        for _ in range(3):
            assert person.answer_one()[0] == 200
        fill_behind_the_log(app, run.dir, small_disk)
        answer_until_refused(person)
    app.state.annotation.close()

    (line,) = records(caplog, "final checkpoint failed")
    assert "labels.sqlite-wal" in line and "balseg backup" in line and "\n" not in line
    assert (run.dir / "labels.sqlite-wal").stat().st_size > 0
    out = tmp_path / "backups"
    result = CliRunner().invoke(cli, ["backup", str(run.dir), f"{out}/"])
    assert result.exit_code == 0, result.output
    (copy_file,) = out.iterdir()  # one whole file: no -wal or -shm beside it
    with LabelStore(copy_file, readonly=True) as copy:
        assert {a.id: (a.query_id, a.label) for a in copy.answers()} == person.acked
        assert len(copy.queries()) == len(QUERIES) + len(NEXT_CYCLE)
    assert sorted(p.name for p in out.iterdir()) == [copy_file.name]
    assert not os.path.exists(str(copy_file) + "-wal")
