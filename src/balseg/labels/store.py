"""The run's label database: every pixel query and every answer, in one SQLite file.

Why SQLite in WAL mode: each answer is its own committed transaction, so a crash, a kill or
a closed browser never loses an answer that was acknowledged, and several readers (the
loop, the annotation server, the report) can look at the same file while one writes.

Why the rules run inside one transaction: ``transaction()`` hands out a ``StoreTx`` bound to
one ``BEGIN IMMEDIATE`` transaction. SQLite lets one writer at a time hold it, across every
process that opens the file, so a check ("is this query already answered?") and the write
that depends on it can never interleave with another server's. The annotation service
decides every answer, lease, undo and review rule that way.

Why counters live in the database (schema version 2): progress displays, the next open
query and the current cycle must cost the same with 100 queries or 100,000. Triggers keep
per-query answer counts and conflict flags (``queries.n_answers``, ``queries.conflict``)
and per-cycle, per-image, per-annotator and global tallies up to date on every insert and
delete, whoever writes (the loop, the oracle, an import, the page, an older balseg), and
partial indexes reach open, answered and conflicting queries directly.

Coordinates are ``(y, x)`` in the original image resolution (see docs/architecture.md).
An answer's ``label`` is a class id, or ``None`` for 'unknown' (void, unrecognisable).
Answer ids are never reused (``AUTOINCREMENT``), so an id seen before an undo never names
another answer afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from balseg.errors import (
    ConflictError,
    DamagedDatabaseError,
    DiskFullError,
    LabelStoreError,
    NotFoundError,
    StoreUnavailableError,
)
from balseg.rundir import BACKUPS

SCHEMA_VERSION = 3
ANSWER_SOURCES = ("initial", "oracle", "person", "import")
_NO_ANNOTATOR = ""  # tallies key answers without an annotator (oracle batches) by this

# SQLite primary result codes (the low byte of ``sqlite_errorcode``)
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = (
    10, 11, 13, 14, 26)
_ENVIRONMENT_CODES = {_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY,
                      _SQLITE_IOERR, _SQLITE_CANTOPEN}
_FULL_BELOW_BYTES = 64 * 1024
"""An I/O error while the database's folder has less free space than this is a full disk
(growing the -shm file, for one, fails as SQLITE_IOERR_SHMSIZE, not SQLITE_FULL)."""

# -- schema -------------------------------------------------------------------------------------
# Version 1, as every balseg before schema versions wrote it; kept verbatim so an old file
# and a new one go through the same migration.
_SCHEMA_V1 = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS queries (
        id INTEGER PRIMARY KEY,
        image_id TEXT NOT NULL,
        y INTEGER NOT NULL CHECK (y >= 0),
        x INTEGER NOT NULL CHECK (x >= 0),
        cycle INTEGER NOT NULL CHECK (cycle >= 0),
        strategy TEXT NOT NULL,
        score REAL,
        created_at TEXT NOT NULL,
        UNIQUE (image_id, y, x)
    )""",
    "CREATE INDEX IF NOT EXISTS queries_cycle ON queries (cycle)",
    """CREATE TABLE IF NOT EXISTS answers (
        id INTEGER PRIMARY KEY,
        query_id INTEGER NOT NULL REFERENCES queries (id),
        label INTEGER,
        source TEXT NOT NULL,
        annotator TEXT,
        answered_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS answers_query ON answers (query_id)",
    """CREATE TABLE IF NOT EXISTS leases (
        query_id INTEGER PRIMARY KEY REFERENCES queries (id),
        annotator TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
)

_CONFLICT_OF = ("(SELECT COUNT(DISTINCT COALESCE(a.label, -1)) > 1 FROM answers a"
                " WHERE a.query_id = {qid})")

# Version 2: answer ids never reused; per-query state, tallies and the triggers that keep
# them; skips and undo floors of annotators; indexes for every per-click statement.
_MIGRATE_V2 = (
    """CREATE TABLE answers_v2 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        query_id INTEGER NOT NULL REFERENCES queries (id),
        label INTEGER,
        source TEXT NOT NULL,
        annotator TEXT,
        answered_at TEXT NOT NULL
    )""",
    "INSERT INTO answers_v2 (id, query_id, label, source, annotator, answered_at)"
    " SELECT id, query_id, label, source, annotator, answered_at FROM answers ORDER BY id",
    "DROP TABLE answers",
    "ALTER TABLE answers_v2 RENAME TO answers",
    "CREATE INDEX answers_query ON answers (query_id, annotator)",
    "CREATE INDEX answers_by ON answers (annotator, source, id)",
    "ALTER TABLE queries ADD COLUMN n_answers INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE queries ADD COLUMN conflict INTEGER NOT NULL DEFAULT 0",
    "UPDATE queries SET"
    " n_answers = (SELECT COUNT(*) FROM answers a WHERE a.query_id = queries.id),"
    f" conflict = {_CONFLICT_OF.format(qid='queries.id')}",
    "CREATE INDEX leases_by ON leases (annotator, query_id)",
    "CREATE INDEX queries_open ON queries (id) WHERE n_answers = 0",
    "CREATE INDEX queries_open_cycle ON queries (cycle, id) WHERE n_answers = 0",
    "CREATE INDEX queries_answered ON queries (id) WHERE n_answers > 0",
    "CREATE INDEX queries_conflict ON queries (id) WHERE conflict = 1",
    """CREATE TABLE cycle_tally (
        cycle INTEGER PRIMARY KEY, total INTEGER NOT NULL, answered INTEGER NOT NULL)""",
    """CREATE TABLE image_tally (
        cycle INTEGER NOT NULL, image_id TEXT NOT NULL,
        total INTEGER NOT NULL, answered INTEGER NOT NULL,
        PRIMARY KEY (cycle, image_id)) WITHOUT ROWID""",
    """CREATE TABLE annotator_tally (
        annotator TEXT NOT NULL, source TEXT NOT NULL, answers INTEGER NOT NULL,
        PRIMARY KEY (annotator, source)) WITHOUT ROWID""",
    "CREATE TABLE tally (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE skips (
        annotator TEXT NOT NULL, query_id INTEGER NOT NULL REFERENCES queries (id),
        PRIMARY KEY (annotator, query_id)) WITHOUT ROWID""",
    """CREATE TABLE annotators (
        name TEXT PRIMARY KEY, undo_floor INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID""",
    "INSERT INTO cycle_tally SELECT cycle, COUNT(*), SUM(n_answers > 0) FROM queries"
    " GROUP BY cycle",
    "INSERT INTO image_tally SELECT cycle, image_id, COUNT(*), SUM(n_answers > 0)"
    " FROM queries GROUP BY cycle, image_id",
    f"INSERT INTO annotator_tally SELECT COALESCE(annotator, '{_NO_ANNOTATOR}'), source,"
    " COUNT(*) FROM answers GROUP BY 1, 2",
    "INSERT INTO tally VALUES ('unknown', (SELECT COUNT(*) FROM answers WHERE label IS NULL))",
    "INSERT INTO tally VALUES ('conflicts', (SELECT COUNT(*) FROM queries WHERE conflict = 1))",
    """CREATE TRIGGER queries_insert AFTER INSERT ON queries BEGIN
        INSERT INTO cycle_tally (cycle, total, answered)
            VALUES (NEW.cycle, 1, NEW.n_answers > 0)
            ON CONFLICT (cycle) DO UPDATE SET
                total = total + 1, answered = answered + excluded.answered;
        INSERT INTO image_tally (cycle, image_id, total, answered)
            VALUES (NEW.cycle, NEW.image_id, 1, NEW.n_answers > 0)
            ON CONFLICT (cycle, image_id) DO UPDATE SET
                total = total + 1, answered = answered + excluded.answered;
        UPDATE tally SET value = value + NEW.conflict WHERE name = 'conflicts';
    END""",
    """CREATE TRIGGER queries_delete AFTER DELETE ON queries BEGIN
        UPDATE cycle_tally SET total = total - 1, answered = answered - (OLD.n_answers > 0)
            WHERE cycle = OLD.cycle;
        UPDATE image_tally SET total = total - 1, answered = answered - (OLD.n_answers > 0)
            WHERE cycle = OLD.cycle AND image_id = OLD.image_id;
        UPDATE tally SET value = value - OLD.conflict WHERE name = 'conflicts';
    END""",
    """CREATE TRIGGER queries_state AFTER UPDATE OF n_answers, conflict ON queries
    WHEN (OLD.n_answers > 0) != (NEW.n_answers > 0) OR OLD.conflict != NEW.conflict BEGIN
        UPDATE cycle_tally SET answered = answered + (NEW.n_answers > 0) - (OLD.n_answers > 0)
            WHERE cycle = NEW.cycle;
        UPDATE image_tally SET answered = answered + (NEW.n_answers > 0) - (OLD.n_answers > 0)
            WHERE cycle = NEW.cycle AND image_id = NEW.image_id;
        UPDATE tally SET value = value + NEW.conflict - OLD.conflict WHERE name = 'conflicts';
    END""",
    f"""CREATE TRIGGER answers_insert AFTER INSERT ON answers BEGIN
        UPDATE queries SET n_answers = n_answers + 1,
            conflict = {_CONFLICT_OF.format(qid='NEW.query_id')}
            WHERE id = NEW.query_id;
        INSERT INTO annotator_tally (annotator, source, answers)
            VALUES (COALESCE(NEW.annotator, '{_NO_ANNOTATOR}'), NEW.source, 1)
            ON CONFLICT (annotator, source) DO UPDATE SET answers = answers + 1;
        UPDATE tally SET value = value + 1 WHERE name = 'unknown' AND NEW.label IS NULL;
    END""",
    f"""CREATE TRIGGER answers_delete AFTER DELETE ON answers BEGIN
        UPDATE queries SET n_answers = n_answers - 1,
            conflict = {_CONFLICT_OF.format(qid='OLD.query_id')}
            WHERE id = OLD.query_id;
        UPDATE annotator_tally SET answers = answers - 1
            WHERE annotator = COALESCE(OLD.annotator, '{_NO_ANNOTATOR}')
            AND source = OLD.source;
        UPDATE tally SET value = value - 1 WHERE name = 'unknown' AND OLD.label IS NULL;
    END""",
    f"""CREATE TRIGGER answers_update AFTER UPDATE OF query_id, label, source, annotator
    ON answers BEGIN
        UPDATE queries SET
            n_answers = (SELECT COUNT(*) FROM answers a WHERE a.query_id = queries.id),
            conflict = {_CONFLICT_OF.format(qid='queries.id')}
            WHERE id IN (OLD.query_id, NEW.query_id);
        UPDATE annotator_tally SET answers = answers - 1
            WHERE annotator = COALESCE(OLD.annotator, '{_NO_ANNOTATOR}')
            AND source = OLD.source;
        INSERT INTO annotator_tally (annotator, source, answers)
            VALUES (COALESCE(NEW.annotator, '{_NO_ANNOTATOR}'), NEW.source, 1)
            ON CONFLICT (annotator, source) DO UPDATE SET answers = answers + 1;
        UPDATE tally SET value = value + (NEW.label IS NULL) - (OLD.label IS NULL)
            WHERE name = 'unknown';
    END""",
)

# Version 3: the model's guess for each query (``queries.predicted``: the class the model
# that chose it predicted there, shown on the page as a suggestion) and whether an answer
# took it (``answers.accepted``: 1 accepted with one key, 0 answered otherwise while it was
# shown, NULL no suggestion), so the suggestion's effect on answers can be measured.
_MIGRATE_V3 = (
    "ALTER TABLE queries ADD COLUMN predicted INTEGER",
    "ALTER TABLE answers ADD COLUMN accepted INTEGER",
)

_QUERY_COLS = "q.id, q.image_id, q.y, q.x, q.cycle, q.strategy, q.score"
_ANSWER_COLS = "a.id, a.query_id, a.label, a.source, a.annotator, a.answered_at"


@dataclass(frozen=True)
class Query:
    id: int
    image_id: str
    y: int
    x: int
    cycle: int
    strategy: str
    score: float | None


@dataclass(frozen=True)
class Answer:
    id: int
    query_id: int
    label: int | None
    source: str
    annotator: str | None
    answered_at: str


@dataclass(frozen=True)
class Tally:
    """How many queries there are and how many have at least one answer."""

    total: int
    answered: int

    @property
    def open(self) -> int:
        return self.total - self.answered


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _check_source(source: str) -> None:
    if source not in ANSWER_SOURCES:
        raise LabelStoreError(f"answer source must be one of {ANSWER_SOURCES}, got {source!r}")


class StoreTx:
    """Reads and writes of one connection; inside ``LabelStore.transaction()`` every call
    belongs to the same ``BEGIN IMMEDIATE`` transaction (nobody else writes in between).

    Every statement here is an indexed lookup or touches a bounded number of rows (the
    expired leases, the given ids): none reads all queries or all answers.
    """

    def __init__(self, store: LabelStore, executor: sqlite3.Connection | sqlite3.Cursor
                 ) -> None:
        self.store = store
        self._x = executor

    def _one(self, sql: str, args: Sequence[object] = ()) -> tuple | None:
        return self._x.execute(sql, args).fetchone()

    def _all(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        return self._x.execute(sql, args).fetchall()

    # -- queries ------------------------------------------------------------------------------
    def query(self, query_id: int) -> Query:
        row = self._one(f"SELECT {_QUERY_COLS} FROM queries q WHERE q.id = ?", (query_id,))
        if row is None:
            raise NotFoundError(f"no query with id {query_id}")
        return Query(*row)

    def open_queries(self) -> list[Query]:
        """Every query without an answer, oldest first (the partial index of open ones)."""
        return [Query(*r) for r in self._all(
            f"SELECT {_QUERY_COLS} FROM queries q WHERE q.n_answers = 0 ORDER BY q.id")]

    def suggestion(self, query_id: int) -> int | None:
        """The class the choosing model predicted for a query (schema 3), or None."""
        if self.store.schema_version < 3:
            return None
        row = self._one("SELECT predicted FROM queries WHERE id = ?", (query_id,))
        return None if row is None or row[0] is None else int(row[0])

    def has_image(self, image_id: str) -> bool:
        """Whether any query names this image (the UNIQUE (image_id, y, x) index)."""
        return self._one("SELECT 1 FROM queries WHERE image_id = ? LIMIT 1",
                         (image_id,)) is not None

    def answer_count(self, query_id: int) -> int:
        row = self._one("SELECT n_answers FROM queries WHERE id = ?", (query_id,))
        return 0 if row is None else int(row[0])

    def is_conflict(self, query_id: int) -> bool:
        row = self._one("SELECT conflict FROM queries WHERE id = ?", (query_id,))
        return bool(row and row[0])

    # -- answers ------------------------------------------------------------------------------
    def answers_of(self, query_id: int) -> list[Answer]:
        return [Answer(*r) for r in self._all(
            f"SELECT {_ANSWER_COLS} FROM answers a WHERE a.query_id = ? ORDER BY a.id",
            (query_id,))]

    def answer_by(self, query_id: int, annotator: str) -> Answer | None:
        row = self._one(f"SELECT {_ANSWER_COLS} FROM answers a"
                        " WHERE a.query_id = ? AND a.annotator = ? LIMIT 1",
                        (query_id, annotator))
        return None if row is None else Answer(*row)

    def answerers(self, query_id: int, limit: int = 5) -> list[str]:
        """Who answered a query (annotator, or the source for unnamed answers)."""
        return [r[0] for r in self._all(
            "SELECT DISTINCT COALESCE(annotator, source) FROM answers WHERE query_id = ?"
            " ORDER BY 1 LIMIT ?", (query_id, limit))]

    def last_answer(self, annotator: str, *, source: str, above: int = 0) -> Answer | None:
        """The newest answer of ``annotator`` from ``source`` with an id over ``above``."""
        row = self._one(f"SELECT {_ANSWER_COLS} FROM answers a"
                        " WHERE a.annotator = ? AND a.source = ? AND a.id > ?"
                        " ORDER BY a.id DESC LIMIT 1", (annotator, source, above))
        return None if row is None else Answer(*row)

    def last_answer_id(self) -> int:
        """The highest answer id ever given (AUTOINCREMENT's sequence: deleted ones count)."""
        row = self._one("SELECT seq FROM sqlite_sequence WHERE name = 'answers'")
        return int(row[0]) if row else 0

    def add_answers(self, items: Iterable[tuple[int, int | None]], *, source: str,
                    annotator: str | None = None, accepted: bool | None = None) -> list[int]:
        """Insert answers (releasing their queries' leases); returns their ids.
        ``accepted``: whether they took the model's suggestion (None: none was shown)."""
        _check_source(source)
        items = list(items)
        for _, label in items:
            self.store._check_label(label)
        at = _now()
        ids = []
        for query_id, label in items:
            if self._one("SELECT 1 FROM queries WHERE id = ?", (query_id,)) is None:
                raise NotFoundError(f"no query with id {query_id}")
            cur = self._x.execute(
                "INSERT INTO answers (query_id, label, source, annotator, answered_at,"
                " accepted) VALUES (?, ?, ?, ?, ?, ?)",
                (query_id, None if label is None else int(label), source, annotator, at,
                 None if accepted is None else int(accepted)))
            ids.append(int(cur.lastrowid or 0))
            self._x.execute("DELETE FROM leases WHERE query_id = ?", (query_id,))
        return ids

    def delete_answer(self, answer_id: int, *, annotator: str | None = None) -> Answer:
        row = self._one(f"SELECT {_ANSWER_COLS} FROM answers a WHERE a.id = ?", (answer_id,))
        if row is None:
            raise NotFoundError(f"no answer with id {answer_id}")
        if annotator is not None and row[4] != annotator:
            raise ConflictError(f"answer {answer_id} was not given by {annotator!r}")
        self._x.execute("DELETE FROM answers WHERE id = ?", (answer_id,))
        return Answer(*row)

    def next_to_review(self, annotator: str, after: int = 0) -> Query | None:
        """The first answered query past ``after`` that ``annotator`` has not answered."""
        row = self._one(
            f"SELECT {_QUERY_COLS} FROM queries q WHERE q.n_answers > 0 AND q.id > ?"
            " AND NOT EXISTS (SELECT 1 FROM answers a WHERE a.query_id = q.id"
            " AND a.annotator = ?) ORDER BY q.id LIMIT 1", (after, annotator))
        return None if row is None else Query(*row)

    # -- leases -------------------------------------------------------------------------------
    def lease_holder(self, query_id: int, now: float) -> str | None:
        row = self._one("SELECT annotator FROM leases WHERE query_id = ? AND expires_at > ?",
                        (query_id, now))
        return row[0] if row else None

    def lease_next(
        self, annotator: str, *, ttl_s: float, now: float, cycle: int | None = None,
        exclude: Collection[int] = (), skip_skipped: bool = False,
    ) -> Query | None:
        """Lease the oldest open query nobody holds (or the one ``annotator`` holds)."""
        self._x.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))
        skip = sorted({int(q) for q in exclude})
        not_in = f" AND q.id NOT IN ({','.join('?' * len(skip))})" if skip else ""
        if skip_skipped:
            not_in += (" AND NOT EXISTS (SELECT 1 FROM skips s WHERE s.annotator = ?"
                       " AND s.query_id = q.id)")
        extra: list[object] = [*skip, annotator] if skip_skipped else list(skip)
        held = self._one(  # CROSS JOIN: walk this person's leases, never all open queries
            "SELECT q.id FROM leases l CROSS JOIN queries q ON q.id = l.query_id"
            " WHERE l.annotator = ? AND q.n_answers = 0" + not_in + " ORDER BY q.id LIMIT 1",
            (annotator, *extra))
        if held is not None:
            qid = held[0]
        else:
            sql = (f"SELECT q.id FROM queries q WHERE q.n_answers = 0{not_in}"
                   " AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.query_id = q.id)")
            args = list(extra)
            if cycle is not None:
                sql += " AND q.cycle = ?"
                args.append(cycle)
            row = self._one(sql + " ORDER BY q.id LIMIT 1", args)
            if row is None:
                return None
            qid = row[0]
        self._x.execute(
            "INSERT OR REPLACE INTO leases (query_id, annotator, expires_at) VALUES (?, ?, ?)",
            (qid, annotator, now + ttl_s))
        return self.query(qid)

    def lease(self, query_id: int, annotator: str, *, ttl_s: float, now: float
              ) -> Query | None:
        """Lease one given query unless someone else holds it (then None)."""
        q = self.query(query_id)
        self._x.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))
        row = self._one("SELECT annotator FROM leases WHERE query_id = ?", (query_id,))
        if row is not None and row[0] != annotator:
            return None
        self._x.execute(
            "INSERT OR REPLACE INTO leases (query_id, annotator, expires_at) VALUES (?, ?, ?)",
            (query_id, annotator, now + ttl_s))
        return q

    def release(self, query_id: int, annotator: str) -> None:
        self._x.execute("DELETE FROM leases WHERE query_id = ? AND annotator = ?",
                        (query_id, annotator))

    # -- skips and undo floors of annotators ------------------------------------------------------
    def add_skip(self, annotator: str, query_id: int) -> None:
        self._x.execute("INSERT OR IGNORE INTO skips (annotator, query_id) VALUES (?, ?)",
                        (annotator, query_id))

    def remove_skip(self, annotator: str, query_id: int) -> None:
        self._x.execute("DELETE FROM skips WHERE annotator = ? AND query_id = ?",
                        (annotator, query_id))

    def clear_skips(self, annotator: str) -> int:
        return self._x.execute("DELETE FROM skips WHERE annotator = ?", (annotator,)).rowcount

    def undo_floor(self, annotator: str) -> int:
        row = self._one("SELECT undo_floor FROM annotators WHERE name = ?", (annotator,))
        return int(row[0]) if row else 0

    def set_undo_floor(self, annotator: str, answer_id: int) -> None:
        self._x.execute(
            "INSERT INTO annotators (name, undo_floor) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET undo_floor = excluded.undo_floor",
            (annotator, answer_id))

    # -- tallies ------------------------------------------------------------------------------
    def cycle_tally(self, cycle: int) -> Tally:
        row = self._one("SELECT total, answered FROM cycle_tally WHERE cycle = ?", (cycle,))
        return Tally(*row) if row else Tally(0, 0)

    def image_tally(self, cycle: int, image_id: str) -> Tally:
        row = self._one("SELECT total, answered FROM image_tally WHERE cycle = ?"
                        " AND image_id = ?", (cycle, image_id))
        return Tally(*row) if row else Tally(0, 0)

    def annotator_answers(self, annotator: str, source: str) -> int:
        row = self._one("SELECT answers FROM annotator_tally WHERE annotator = ?"
                        " AND source = ?", (annotator, source))
        return int(row[0]) if row else 0

    def current_cycle(self) -> int | None:
        """The oldest cycle with an open query, else the latest cycle (None: no query)."""
        row = self._one("SELECT MIN(cycle) FROM cycle_tally WHERE answered < total")
        if row is None or row[0] is None:
            row = self._one("SELECT MAX(cycle) FROM cycle_tally WHERE total > 0")
        return None if row is None or row[0] is None else int(row[0])

    def latest_cycle(self) -> int | None:
        row = self._one("SELECT MAX(cycle) FROM cycle_tally WHERE total > 0")
        return None if row is None or row[0] is None else int(row[0])

    def counts(self) -> dict[str, int]:
        total, answered = self._one(
            "SELECT COALESCE(SUM(total), 0), COALESCE(SUM(answered), 0) FROM cycle_tally")
        tallies = dict(self._all("SELECT name, value FROM tally"))
        return {"queries": int(total), "answered": int(answered),
                "open": int(total) - int(answered), "unknown": int(tallies.get("unknown", 0)),
                "conflicts": int(tallies.get("conflicts", 0))}

    # -- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._x.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- tables an integration keeps beside the store's ---------------------------------------
    def execute(self, sql: str, args: Sequence[object] = ()) -> sqlite3.Cursor:
        """One statement in this transaction, on a table of an integration (Label Studio's
        bookkeeping, ``balseg.labelstudio.sync``); the store's own tables are written only
        through the methods above, which keep their rules and counters."""
        return self._x.execute(sql, args)


class LabelStore:
    """One SQLite label database per run; safe to share between threads of one process, and
    between processes (every write is one ``BEGIN IMMEDIATE`` transaction).

    ``num_classes`` is checked against the database's recorded value so a run directory can
    never silently receive answers for another class list. Opening a database written by an
    older balseg migrates it (once, in one transaction); ``readonly=True`` never writes and
    reads either version.
    """

    def __init__(
        self, path: str | Path, num_classes: int | None = None, *, readonly: bool = False
    ) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise LabelStoreError(f"label database folder does not exist: {self.path.parent}")
        self._lock = threading.RLock()
        self.readonly = readonly
        self.closed = False
        self._tidy_on_close = False
        if readonly:
            self._open_readonly()
            return
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=30.0, check_same_thread=False, isolation_level=None
            )
        except sqlite3.Error as err:
            raise LabelStoreError(f"cannot open label database {self.path}: {err}") from err
        try:
            with self._guard("open"):
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
                self._conn.execute("PRAGMA foreign_keys=ON")
            with self._tx() as tx:
                self._migrate(tx)
            stored = self.get_meta("num_classes")
            if num_classes is not None:
                if stored is None:
                    self.set_meta("num_classes", str(num_classes))
                elif int(stored) != num_classes:
                    raise LabelStoreError(
                        f"{self.path} holds labels for {stored} classes, the config has"
                        f" {num_classes}")
        except BaseException:
            self._conn.close()
            raise
        self.num_classes = int(stored) if stored is not None else num_classes
        self.schema_version = SCHEMA_VERSION

    def _open_readonly(self) -> None:
        """For reports on run directories one may not write to (or that another user owns)."""
        if not self.path.is_file():
            raise LabelStoreError(f"label database not found: {self.path}")
        # SQLite makes the -wal and -shm files to read a WAL database and, read-only, cannot
        # remove them at close: close() tidies up what this connection made (see there)
        self._tidy_on_close = not (self.wal_path.exists() or self.shm_path.exists())
        try:
            self._conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0,
                check_same_thread=False, isolation_level=None,
            )
        except sqlite3.Error as err:
            raise LabelStoreError(f"cannot read label database {self.path}: {err}") from err
        try:
            with self._guard("open"):
                tables = {r[0] for r in self._read("SELECT name FROM sqlite_master")}
                if not {"meta", "queries", "answers"} <= tables:
                    raise LabelStoreError(f"{self.path} is not a balseg label database (it has"
                                          " no meta, queries and answers tables)")
                stored = self.get_meta("num_classes")
                version = self.get_meta("schema_version")
        except BaseException:
            self._conn.close()
            raise
        self.num_classes = int(stored) if stored is not None else None
        self.schema_version = int(version) if version and version.isdigit() else 1

    # -- plumbing -------------------------------------------------------------------------
    def _migrate(self, tx: StoreTx) -> None:
        for statement in _SCHEMA_V1:
            tx._x.execute(statement)
        version_text = tx.get_meta("schema_version")
        version = int(version_text) if version_text and version_text.isdigit() else 1
        if version > SCHEMA_VERSION:
            raise LabelStoreError(
                f"{self.path} was written by a newer balseg (label schema {version}, this"
                f" one reads up to {SCHEMA_VERSION}): upgrade balseg")
        if version < 2:
            for statement in _MIGRATE_V2:
                tx._x.execute(statement)
        if version < 3:
            for statement in _MIGRATE_V3:
                tx._x.execute(statement)
        tx.set_meta("schema_version", str(SCHEMA_VERSION))

    def _damaged(self, detail: str) -> DamagedDatabaseError:
        """What a damaged file is, said once: which file, and the two ways back."""
        return DamagedDatabaseError(
            f"{self.path}: the label database is damaged ({detail}). Recover what it holds"
            f" with `sqlite3 {self.path} .recover | sqlite3 recovered.sqlite` and move"
            " recovered.sqlite in its place, or copy back the latest backup (`balseg backup"
            f" RUN_DIR` writes them to RUN_DIR/{BACKUPS}/)")

    def _store_error(self, err: sqlite3.Error, doing: str) -> Exception:
        """A ``BalsegError`` for what SQLite says about the file; None-like bugs stay bugs."""
        code = getattr(err, "sqlite_errorcode", None)
        code = None if code is None else code & 0xFF
        text = " ".join(str(err).split())
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in text or (
                "not a database" in text):
            return self._damaged(f"{text}, while {doing}")
        if code == _SQLITE_FULL or (code == _SQLITE_IOERR and self._disk_is_full()):
            return DiskFullError(f"{self.path}: the disk is full while {doing} (SQLite: {text});"
                                 " free some space and retry")
        if code in _ENVIRONMENT_CODES:
            return StoreUnavailableError(f"{self.path}: cannot use the label database while"
                                         f" {doing}: {text}")
        return err

    def _disk_is_full(self) -> bool:
        try:
            return shutil.disk_usage(self.path.parent).free < _FULL_BELOW_BYTES
        except OSError:
            return False

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as err:
            mapped = self._store_error(err, doing)
            if mapped is err:
                raise
            raise mapped from err

    @contextmanager
    def _tx(self) -> Iterator[StoreTx]:
        """One IMMEDIATE transaction: all of it is committed, or none of it."""
        with self._lock, self._guard("writing"):
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield StoreTx(self, cur)
            except BaseException:
                if self._conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def transaction(self) -> AbstractContextManager[StoreTx]:
        """``with store.transaction() as tx:``: rules checked and written atomically, across
        processes. Raising inside rolls everything back."""
        if self.readonly:
            raise LabelStoreError(f"{self.path} is open read-only")
        return self._tx()

    @contextmanager
    def snapshot(self) -> Iterator[StoreTx]:
        """Several reads that see one state of the database (a read transaction)."""
        with self._lock, self._guard("reading"):
            cur = self._conn.cursor()
            cur.execute("BEGIN")
            try:
                yield StoreTx(self, cur)
            finally:
                if self._conn.in_transaction:
                    cur.execute("COMMIT")
                cur.close()

    @contextmanager
    def _reader(self) -> Iterator[StoreTx]:
        with self._lock, self._guard("reading"):
            yield StoreTx(self, self._conn)

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        with self._reader() as r:
            return r._all(sql, args)

    @property
    def wal_path(self) -> Path:
        """The write-ahead log: answers not yet checkpointed into ``path`` are only here."""
        return self.path.with_name(self.path.name + "-wal")

    @property
    def shm_path(self) -> Path:
        return self.path.with_name(self.path.name + "-shm")

    def close(self) -> None:
        """Close the connection; SQLite checkpoints the log when it was the last one.

        A read-only store that found no -wal or -shm file removes the pair SQLite made for
        it, when nobody else has the database open: a short read-write connection closes
        last, which is the only way SQLite removes them safely (it does so only once it
        holds the exclusive lock, so the files of a running server are never touched)."""
        with self._lock:
            if self.closed:
                return
            self._conn.close()
            self.closed = True
            if self._tidy_on_close and (self.wal_path.exists() or self.shm_path.exists()):
                self._tidy()

    def _tidy(self) -> None:
        if not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)):
            return
        with contextlib.suppress(sqlite3.Error):
            conn = sqlite3.connect(self.path, timeout=0)
            try:
                conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            finally:
                conn.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def checkpoint(self, *, truncate: bool = False) -> bool:
        """Copy the write-ahead log into the main file, so that ``labels.sqlite`` alone holds
        every committed answer. ``truncate`` also empties the log (at exit). True when every
        frame reached the main file (a reader of an older state can hold some back)."""
        mode = "TRUNCATE" if truncate else "PASSIVE"
        with self._lock, self._guard("checkpointing"):
            if self.readonly or self.closed:  # closing checkpointed already
                return True
            busy, log, done = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return busy == 0 and log == done

    def check(self) -> None:
        """SQLite's ``quick_check`` of every page; a damaged file raises
        ``DamagedDatabaseError`` naming it and how to recover."""
        with self._reader() as r:
            problems = [row[0] for row in r._all("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            found = "; ".join(" ".join(str(p).replace("*", "").split()) for p in problems)
            raise self._damaged(found[:300])

    def backup_to(self, dest: str | Path) -> None:
        """A consistent copy of the database at ``dest`` (SQLite's online backup, then an
        atomic rename), safe while other connections write."""
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            with self._lock, self._guard("backing up"):
                target = sqlite3.connect(tmp)
                try:
                    self._conn.backup(target)
                    # one self-contained file: no -wal and -shm beside it, now or when read
                    target.execute("PRAGMA journal_mode=DELETE")
                finally:
                    target.close()
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def get_meta(self, key: str) -> str | None:
        with self._reader() as r:
            return r.get_meta(key)

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as tx:
            tx.set_meta(key, value)

    # -- queries --------------------------------------------------------------------------
    def add_queries(
        self,
        rows: Iterable[tuple[str, int, int, float | None]
                       | tuple[str, int, int, float | None, int | None]],
        *,
        cycle: int,
        strategy: str,
    ) -> list[int]:
        """Insert ``(image_id, y, x, score[, predicted])`` queries of one cycle atomically;
        returns their ids. ``predicted`` is the class the choosing model predicted there.

        A pixel that was already queried is refused: the selection must have excluded it.
        """
        rows = list(rows)
        created = _now()
        ids: list[int] = []
        with self._tx() as tx:
            cur = tx._x
            for image_id, y, x, score, *guess in rows:
                predicted = guess[0] if guess else None
                try:
                    cur.execute(
                        "INSERT INTO queries (image_id, y, x, cycle, strategy, score, created_at,"
                        " predicted) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (image_id, int(y), int(x), cycle, strategy,
                         None if score is None else float(score), created,
                         None if predicted is None else int(predicted)),
                    )
                except sqlite3.IntegrityError as err:
                    raise ConflictError(
                        f"pixel (y={y}, x={x}) of image {image_id!r} cannot be queried again"
                        f" in cycle {cycle}: {err}"
                    ) from err
                ids.append(int(cur.lastrowid or 0))
        return ids

    def query(self, query_id: int) -> Query:
        with self._reader() as r:
            return r.query(query_id)

    def has_image(self, image_id: str) -> bool:
        with self._reader() as r:
            return r.has_image(image_id)

    def queries(self, *, cycle: int | None = None, image_id: str | None = None) -> list[Query]:
        sql = f"SELECT {_QUERY_COLS} FROM queries q WHERE 1=1"
        args: list[object] = []
        if cycle is not None:
            sql += " AND q.cycle = ?"
            args.append(cycle)
        if image_id is not None:
            sql += " AND q.image_id = ?"
            args.append(image_id)
        return [Query(*r) for r in self._read(sql + " ORDER BY q.id", args)]

    def open_queries(self, *, cycle: int | None = None) -> list[Query]:
        """Queries without any answer yet, oldest first."""
        if self.schema_version >= 2:
            sql = f"SELECT {_QUERY_COLS} FROM queries q WHERE q.n_answers = 0"
        else:
            sql = (f"SELECT {_QUERY_COLS} FROM queries q"
                   " WHERE NOT EXISTS (SELECT 1 FROM answers a WHERE a.query_id = q.id)")
        args: list[object] = []
        if cycle is not None:
            sql += " AND q.cycle = ?"
            args.append(cycle)
        return [Query(*r) for r in self._read(sql + " ORDER BY q.id", args)]

    def queried_pixels(self, image_id: str) -> np.ndarray:
        """All queried (y, x) of one image, answered or not, as an int64 [n, 2] array."""
        rows = self._read("SELECT y, x FROM queries WHERE image_id = ?", (image_id,))
        return np.asarray(rows, dtype=np.int64).reshape(-1, 2)

    def cycles(self) -> list[int]:
        return [r[0] for r in self._read("SELECT DISTINCT cycle FROM queries ORDER BY cycle")]

    # -- answers --------------------------------------------------------------------------
    def _check_label(self, label: int | None) -> None:
        if label is None:
            return
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise LabelStoreError(f"class id must be an integer or None, got {label!r}")
        if label < 0 or (self.num_classes is not None and label >= self.num_classes):
            raise LabelStoreError(
                f"class id {label} is outside 0..{(self.num_classes or 0) - 1}"
            )

    def add_answer(
        self,
        query_id: int,
        label: int | None,
        *,
        source: str,
        annotator: str | None = None,
    ) -> int:
        """Record one answer, committed before returning. Releases the query's lease."""
        return self.add_answers([(query_id, label)], source=source, annotator=annotator)[0]

    def add_answers(
        self,
        items: Iterable[tuple[int, int | None]],
        *,
        source: str,
        annotator: str | None = None,
    ) -> list[int]:
        """Record several answers in one transaction (all or none)."""
        _check_source(source)
        items = list(items)
        for _, label in items:
            self._check_label(label)
        with self._tx() as tx:
            return tx.add_answers(items, source=source, annotator=annotator)

    def retract_answer(self, answer_id: int, *, annotator: str | None = None) -> Answer:
        """Delete one answer (undo). With ``annotator``, only that person's own answer."""
        with self._tx() as tx:
            return tx.delete_answer(answer_id, annotator=annotator)

    def answers(self, query_id: int | None = None) -> list[Answer]:
        sql = f"SELECT {_ANSWER_COLS} FROM answers a"
        args: tuple[object, ...] = ()
        if query_id is not None:
            sql += " WHERE a.query_id = ?"
            args = (query_id,)
        return [Answer(*r) for r in self._read(sql + " ORDER BY a.id", args)]

    def suggestion_counts(self) -> dict[str, int] | None:
        """Answers given while the page showed the model's guess: how many (``shown``),
        how many took it with the accept key (``accepted``) and how many named its class
        (``same_class``, accepted or typed); None for a database before schema 3."""
        if self.schema_version < 3:
            return None
        shown, accepted, same = self._read(
            "SELECT COUNT(*), COALESCE(SUM(a.accepted = 1), 0),"
            " COALESCE(SUM(a.label IS q.predicted), 0) FROM answers a"
            " JOIN queries q ON q.id = a.query_id"
            " WHERE q.predicted IS NOT NULL AND a.accepted IS NOT NULL")[0]
        return {"shown": int(shown), "accepted": int(accepted), "same_class": int(same)}

    def conflicts(self) -> list[int]:
        """Query ids whose answers disagree (two people, two different classes)."""
        if self.schema_version >= 2:
            rows = self._read("SELECT id FROM queries WHERE conflict = 1 ORDER BY id")
        else:
            rows = self._read(
                "SELECT query_id FROM answers GROUP BY query_id"
                " HAVING COUNT(DISTINCT COALESCE(label, -1)) > 1 ORDER BY query_id")
        return [r[0] for r in rows]

    def resolved_labels(self, *, max_cycle: int | None = None) -> list[tuple[str, int, int, int]]:
        """(image_id, y, x, class) for every query whose answers agree on a class.

        'unknown' answers and conflicting answers give no training label. When a pixel has
        several answers that agree, it counts once.
        """
        rows = self._read(
            "SELECT q.image_id, q.y, q.x, MIN(a.label) FROM queries q"
            " JOIN answers a ON a.query_id = q.id"
            " WHERE q.cycle <= ?"
            " GROUP BY q.id"
            " HAVING COUNT(DISTINCT COALESCE(a.label, -1)) = 1 AND MIN(a.label) IS NOT NULL"
            " ORDER BY q.id",
            (2**62 if max_cycle is None else max_cycle,),
        )
        return [(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def counts(self) -> dict[str, int]:
        """Totals for progress displays: queries, answered, open, unknown, conflicts."""
        if self.schema_version >= 2:
            with self.snapshot() as s:
                return s.counts()
        (queries,) = self._read("SELECT COUNT(*) FROM queries")[0]
        (answered,) = self._read("SELECT COUNT(DISTINCT query_id) FROM answers")[0]
        (unknown,) = self._read("SELECT COUNT(*) FROM answers WHERE label IS NULL")[0]
        return {"queries": queries, "answered": answered, "open": queries - answered,
                "unknown": unknown, "conflicts": len(self.conflicts())}

    def verify_tallies(self) -> list[str]:
        """Differences between the stored counters and a count from scratch (empty when they
        agree); slow on purpose, for tests and ``balseg backup``'s check."""
        if self.schema_version < 2:
            return []
        checks = {
            "queries.n_answers": "SELECT q.id FROM queries q WHERE q.n_answers !="
                                 " (SELECT COUNT(*) FROM answers a WHERE a.query_id = q.id)",
            "queries.conflict": f"SELECT q.id FROM queries q WHERE q.conflict !="
                                f" {_CONFLICT_OF.format(qid='q.id')}",
            "cycle_tally": "SELECT cycle, COUNT(*), SUM(n_answers > 0) FROM queries"
                           " GROUP BY cycle EXCEPT SELECT cycle, total, answered"
                           " FROM cycle_tally WHERE total > 0",
            "image_tally": "SELECT cycle, image_id, COUNT(*), SUM(n_answers > 0) FROM queries"
                           " GROUP BY cycle, image_id EXCEPT SELECT cycle, image_id, total,"
                           " answered FROM image_tally WHERE total > 0",
            "annotator_tally": f"SELECT COALESCE(annotator, '{_NO_ANNOTATOR}'), source,"
                               " COUNT(*) FROM answers GROUP BY 1, 2 EXCEPT SELECT"
                               " annotator, source, answers FROM annotator_tally"
                               " WHERE answers > 0",
            "tally.unknown": "SELECT 1 WHERE (SELECT value FROM tally WHERE name = 'unknown')"
                             " != (SELECT COUNT(*) FROM answers WHERE label IS NULL)",
            "tally.conflicts": "SELECT 1 WHERE (SELECT value FROM tally WHERE name ="
                               " 'conflicts') != (SELECT COUNT(*) FROM queries"
                               " WHERE conflict = 1)",
        }
        with self.snapshot() as s:
            return [f"{name}: {rows[:5]}" for name, sql in checks.items()
                    if (rows := s._all(sql))]

    # -- leases (several annotators) -------------------------------------------------------
    def lease_next(
        self, annotator: str, *, ttl_s: float = 120.0, now: float | None = None,
        cycle: int | None = None, exclude: Collection[int] = (),
    ) -> Query | None:
        """Hand the oldest open, un-leased query to ``annotator`` for ``ttl_s`` seconds.

        An annotator who already holds a live lease gets the same query back (a reload must
        not skip it). Expired leases are free again. ``exclude`` lists query ids this
        annotator does not want now (e.g. the ones they skipped).
        """
        t = time.time() if now is None else now
        with self._tx() as tx:
            return tx.lease_next(annotator, ttl_s=ttl_s, now=t, cycle=cycle, exclude=exclude)

    def lease(
        self, query_id: int, annotator: str, *, ttl_s: float = 120.0, now: float | None = None
    ) -> Query | None:
        """Lease one given query if nobody else holds it; None when someone else does."""
        t = time.time() if now is None else now
        with self._tx() as tx:
            return tx.lease(query_id, annotator, ttl_s=ttl_s, now=t)

    def lease_holder(self, query_id: int, *, now: float | None = None) -> str | None:
        t = time.time() if now is None else now
        with self._reader() as r:
            return r.lease_holder(query_id, t)

    def release(self, query_id: int, annotator: str) -> None:
        with self._tx() as tx:
            tx.release(query_id, annotator)
