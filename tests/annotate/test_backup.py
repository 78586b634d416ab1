"""``balseg backup`` and a damaged label database, as a user meets them on the command line."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from balseg.cli import register
from balseg.labels.store import LabelStore

from .annotate_support import Run, make_run


@pytest.fixture
def cli() -> typer.Typer:
    return register(typer.Typer(), "balseg.annotate.cli")


def test_backup_is_a_consistent_copy_while_someone_writes(run: Run, cli: typer.Typer,
                                                          tmp_path: Path) -> None:
    with run.store() as s:
        s.add_answers([(q, 1) for q in run.query_ids[:3]], source="person", annotator="a")
    writer = sqlite3.connect(run.dir / "labels.sqlite", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process is half-way through a write
    writer.execute("INSERT INTO answers (query_id, label, source, annotator, answered_at)"
                   " VALUES (?, 0, 'person', 'b', 't')", (run.query_ids[4],))
    r = CliRunner().invoke(cli, ["backup", str(run.dir), str(tmp_path / "copy.sqlite")])
    writer.execute("COMMIT")
    writer.close()
    assert r.exit_code == 0, r.output
    assert "5 queries (3 answered)" in r.output
    with LabelStore(tmp_path / "copy.sqlite", readonly=True) as copy:
        assert [(a.query_id, a.annotator) for a in copy.answers()] == [
            (q, "a") for q in run.query_ids[:3]]  # the committed state, nothing half-written
        copy.check()


def test_backup_without_a_destination_goes_to_the_run_s_backups_folder(
    run: Run, cli: typer.Typer, tmp_path: Path
) -> None:
    runner = CliRunner()
    for _ in range(2):
        assert runner.invoke(cli, ["backup", str(run.dir)]).exit_code == 0
    made = sorted((run.dir / "backups").glob("labels-*.sqlite"))
    assert len(made) == 2
    (tmp_path / "folder").mkdir()
    assert runner.invoke(cli, ["backup", str(run.dir), str(tmp_path / "folder")]).exit_code == 0
    assert len(list((tmp_path / "folder").glob("labels-*.sqlite"))) == 1
    r = runner.invoke(cli, ["backup", str(run.dir), str(run.dir / "labels.sqlite")])
    assert r.exit_code == 2 and "the label database itself" in r.output
    r = runner.invoke(cli, ["backup", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "does not exist" in r.output


def _damage(path: Path) -> None:
    """Noise over a run of pages in the middle of the file (a failing disk, a bad copy)."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(3)
    pages = len(data) // 4096
    for p in range(pages // 3, pages // 3 + max(4, pages // 4)):
        data[p * 4096:(p + 1) * 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.fixture
def damaged(tmp_path: Path) -> Run:
    queries = [(f"city/{'ab'[i % 2]}", i // 40, i % 40, ) for i in range(2000)]
    run = make_run(tmp_path, queries=queries)
    with run.store() as s:
        s.add_answers([(q, q % 3) for q in run.query_ids[:1000]], source="oracle")
    _damage(run.dir / "labels.sqlite")
    return run


@pytest.mark.parametrize("command", [
    ["export", "{run}", "-o", "{tmp}/t.json"],
    ["export", "{run}", "-f", "cvat", "-o", "{tmp}/t.xml"],
    ["import", "{run}", "{tmp}/in.json", "--annotator", "p"],
    ["backup", "{run}", "{tmp}/copy.sqlite"],
    ["annotate", "{run}", "--port", "1"],
])
def test_a_damaged_database_is_one_line_exit_2_with_the_way_back(
    damaged: Run, cli: typer.Typer, tmp_path: Path, command: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("served a damaged run"))
    monkeypatch.setattr("balseg.annotate.server.check_port", lambda host, port: None)
    (tmp_path / "in.json").write_text("[]")
    args = [a.format(run=damaged.dir, tmp=tmp_path) for a in command]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, (r.output, r.exception)
    (line,) = r.output.strip().splitlines()
    assert line.startswith(f"error: {damaged.dir / 'labels.sqlite'}: the label database is"
                           " damaged"), line
    assert ".recover" in line and "balseg backup" in line
    assert not (tmp_path / "copy.sqlite").exists() and not (tmp_path / "t.json").exists()


def test_the_server_answers_503_when_the_database_is_damaged_under_it(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from balseg.annotate.app import create_app

    queries = [(f"city/{'ab'[i % 2]}", i // 40, i % 40, ) for i in range(2000)]
    run = make_run(tmp_path, queries=queries)
    app = create_app(run.dir)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        assert c.post("/api/next", json={"annotator": "a"}).status_code == 200
        app.state.annotation.store.checkpoint(truncate=True)
        _damage(run.dir / "labels.sqlite")
        codes = set()
        for qid in range(1, 2000, 97):
            r = c.get(f"/api/queries/{qid}")
            codes.add(r.status_code)
            if r.status_code == 503:
                detail = r.json()["detail"]
                assert "damaged" in detail and str(tmp_path) not in detail
                assert detail.startswith("RUN_DIR/labels.sqlite: ")
        assert 503 in codes and not any(code >= 500 and code != 503 for code in codes)
    app.state.annotation.store.close()


# -- issue 30 F8 ------------------------------------------------------------------------------
def _beside(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "-"))


def test_a_destination_ending_in_a_slash_is_a_folder_to_create(run: Run, cli: typer.Typer,
                                                                tmp_path: Path) -> None:
    """``balseg backup RUN missing/sub/`` wrote a file named ``sub``."""
    r = CliRunner().invoke(cli, ["backup", str(run.dir), f"{tmp_path}/missing/sub/"])
    assert r.exit_code == 0, r.output
    sub = tmp_path / "missing" / "sub"
    assert sub.is_dir()
    (made,) = sub.iterdir()
    assert made.name.startswith("labels-") and made.suffix == ".sqlite"
    with LabelStore(made, readonly=True) as copy:
        assert len(copy.queries()) == len(run.query_ids)


def test_backups_and_read_only_commands_leave_no_wal_or_shm_files(run: Run, cli: typer.Typer,
                                                                    tmp_path: Path) -> None:
    """Every backup got a 32 KB -shm and an empty -wal beside it, and reading the run's
    database left a pair in the run directory."""
    labels = run.dir / "labels.sqlite"
    assert _beside(labels) == []  # make_run's store was closed: SQLite removed its pair
    target = tmp_path / "copy.sqlite"
    r = CliRunner().invoke(cli, ["backup", str(run.dir), str(target)])
    assert r.exit_code == 0, r.output
    assert _beside(target) == [] and _beside(labels) == []
    with LabelStore(target, readonly=True) as copy:  # reading the copy makes none either
        assert len(copy.answers()) == 0
    assert _beside(target) == []
    with LabelStore(labels, readonly=True) as store:
        store.counts()
    assert _beside(labels) == []
    # while a writer (a server) has the database open, its files stay: they are its own
    with run.store() as writer:
        writer.add_answer(run.query_ids[0], 1, source="person", annotator="a")
        with LabelStore(labels, readonly=True) as reader:
            assert len(reader.answers()) == 1
        assert _beside(labels) == ["labels.sqlite-shm", "labels.sqlite-wal"]
        writer.add_answer(run.query_ids[1], 2, source="person", annotator="a")
        assert len(writer.answers()) == 2
    assert _beside(labels) == []
