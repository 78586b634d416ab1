"""The run's label database: every pixel query and every answer, in one SQLite file.

Why SQLite in WAL mode: each answer is its own committed transaction, so a crash, a kill or
a closed browser never loses an answer that was acknowledged, and several readers (the
loop, the annotation server, the report) can look at the same file while one writes.

Coordinates are ``(y, x)`` in the original image resolution (see docs/architecture.md).
An answer's ``label`` is a class id, or ``None`` for 'unknown' (void, unrecognisable).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from balseg.errors import ConflictError, LabelStoreError, NotFoundError

SCHEMA_VERSION = 1
ANSWER_SOURCES = ("initial", "oracle", "person", "import")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queries (
    id INTEGER PRIMARY KEY,
    image_id TEXT NOT NULL,
    y INTEGER NOT NULL CHECK (y >= 0),
    x INTEGER NOT NULL CHECK (x >= 0),
    cycle INTEGER NOT NULL CHECK (cycle >= 0),
    strategy TEXT NOT NULL,
    score REAL,
    created_at TEXT NOT NULL,
    UNIQUE (image_id, y, x)
);
CREATE INDEX IF NOT EXISTS queries_cycle ON queries (cycle);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    query_id INTEGER NOT NULL REFERENCES queries (id),
    label INTEGER,
    source TEXT NOT NULL,
    annotator TEXT,
    answered_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_query ON answers (query_id);
CREATE TABLE IF NOT EXISTS leases (
    query_id INTEGER PRIMARY KEY REFERENCES queries (id),
    annotator TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class LabelStore:
    """One SQLite label database per run; safe to share between threads of one process.

    ``num_classes`` is checked against the database's recorded value so a run directory can
    never silently receive answers for another class list.
    """

    def __init__(
        self, path: str | Path, num_classes: int | None = None, *, readonly: bool = False
    ) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise LabelStoreError(f"label database folder does not exist: {self.path.parent}")
        self._lock = threading.RLock()
        if readonly:
            self._open_readonly()
            return
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=30.0, check_same_thread=False, isolation_level=None
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as err:
            raise LabelStoreError(f"cannot open label database {self.path}: {err}") from err
        with self._tx() as cur:
            cur.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        stored = self.get_meta("num_classes")
        if num_classes is not None:
            if stored is None:
                self.set_meta("num_classes", str(num_classes))
            elif int(stored) != num_classes:
                raise LabelStoreError(
                    f"{self.path} holds labels for {stored} classes, the config has {num_classes}"
                )
        self.num_classes = int(stored) if stored is not None else num_classes

    def _open_readonly(self) -> None:
        """For reports on run directories one may not write to (or that another user owns)."""
        if not self.path.is_file():
            raise LabelStoreError(f"label database not found: {self.path}")
        try:
            self._conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0,
                check_same_thread=False, isolation_level=None,
            )
            stored = self.get_meta("num_classes")
        except sqlite3.Error as err:
            raise LabelStoreError(f"cannot read label database {self.path}: {err}") from err
        self.num_classes = int(stored) if stored is not None else None

    # -- plumbing -------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        """One IMMEDIATE transaction: all of it is committed, or none of it."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def backup_to(self, dest: str | Path) -> None:
        """A consistent copy of the database at ``dest`` (SQLite's online backup, then an
        atomic rename), safe while other connections write."""
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            with self._lock:
                target = sqlite3.connect(tmp)
                try:
                    self._conn.backup(target)
                finally:
                    target.close()
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as cur:
            cur.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- queries --------------------------------------------------------------------------
    def add_queries(
        self,
        rows: Iterable[tuple[str, int, int, float | None]],
        *,
        cycle: int,
        strategy: str,
    ) -> list[int]:
        """Insert ``(image_id, y, x, score)`` queries of one cycle atomically; returns their ids.

        A pixel that was already queried is refused: the selection must have excluded it.
        """
        rows = list(rows)
        created = _now()
        ids: list[int] = []
        with self._tx() as cur:
            for image_id, y, x, score in rows:
                try:
                    cur.execute(
                        "INSERT INTO queries (image_id, y, x, cycle, strategy, score, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (image_id, int(y), int(x), cycle, strategy,
                         None if score is None else float(score), created),
                    )
                except sqlite3.IntegrityError as err:
                    raise ConflictError(
                        f"pixel (y={y}, x={x}) of image {image_id!r} cannot be queried again"
                        f" in cycle {cycle}: {err}"
                    ) from err
                ids.append(int(cur.lastrowid or 0))
        return ids

    def query(self, query_id: int) -> Query:
        rows = self._read(
            "SELECT id, image_id, y, x, cycle, strategy, score FROM queries WHERE id = ?",
            (query_id,),
        )
        if not rows:
            raise NotFoundError(f"no query with id {query_id}")
        return Query(*rows[0])

    def queries(self, *, cycle: int | None = None, image_id: str | None = None) -> list[Query]:
        sql = "SELECT id, image_id, y, x, cycle, strategy, score FROM queries WHERE 1=1"
        args: list[object] = []
        if cycle is not None:
            sql += " AND cycle = ?"
            args.append(cycle)
        if image_id is not None:
            sql += " AND image_id = ?"
            args.append(image_id)
        return [Query(*r) for r in self._read(sql + " ORDER BY id", args)]

    def open_queries(self, *, cycle: int | None = None) -> list[Query]:
        """Queries without any answer yet, oldest first."""
        sql = (
            "SELECT q.id, q.image_id, q.y, q.x, q.cycle, q.strategy, q.score FROM queries q"
            " WHERE NOT EXISTS (SELECT 1 FROM answers a WHERE a.query_id = q.id)"
        )
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
        if source not in ANSWER_SOURCES:
            raise LabelStoreError(f"answer source must be one of {ANSWER_SOURCES}, got {source!r}")
        items = list(items)
        for _, label in items:
            self._check_label(label)
        at = _now()
        ids: list[int] = []
        with self._tx() as cur:
            for query_id, label in items:
                known = cur.execute("SELECT 1 FROM queries WHERE id = ?", (query_id,))
                if known.fetchone() is None:
                    raise NotFoundError(f"no query with id {query_id}")
                cur.execute(
                    "INSERT INTO answers (query_id, label, source, annotator, answered_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (query_id, None if label is None else int(label), source, annotator, at),
                )
                ids.append(int(cur.lastrowid or 0))
                cur.execute("DELETE FROM leases WHERE query_id = ?", (query_id,))
        return ids

    def retract_answer(self, answer_id: int, *, annotator: str | None = None) -> Answer:
        """Delete one answer (undo). With ``annotator``, only that person's own answer."""
        with self._tx() as cur:
            row = cur.execute(
                "SELECT id, query_id, label, source, annotator, answered_at FROM answers"
                " WHERE id = ?",
                (answer_id,),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no answer with id {answer_id}")
            if annotator is not None and row[4] != annotator:
                raise ConflictError(f"answer {answer_id} was not given by {annotator!r}")
            cur.execute("DELETE FROM answers WHERE id = ?", (answer_id,))
        return Answer(*row)

    def answers(self, query_id: int | None = None) -> list[Answer]:
        sql = "SELECT id, query_id, label, source, annotator, answered_at FROM answers"
        args: tuple[object, ...] = ()
        if query_id is not None:
            sql += " WHERE query_id = ?"
            args = (query_id,)
        return [Answer(*r) for r in self._read(sql + " ORDER BY id", args)]

    def conflicts(self) -> list[int]:
        """Query ids whose answers disagree (two people, two different classes)."""
        rows = self._read(
            "SELECT query_id FROM answers GROUP BY query_id"
            " HAVING COUNT(DISTINCT COALESCE(label, -1)) > 1 ORDER BY query_id"
        )
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
        (queries,) = self._read("SELECT COUNT(*) FROM queries")[0]
        (answered,) = self._read("SELECT COUNT(DISTINCT query_id) FROM answers")[0]
        (unknown,) = self._read("SELECT COUNT(*) FROM answers WHERE label IS NULL")[0]
        return {
            "queries": queries,
            "answered": answered,
            "open": queries - answered,
            "unknown": unknown,
            "conflicts": len(self.conflicts()),
        }

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
        skip = sorted({int(q) for q in exclude})
        not_in = f" AND q.id NOT IN ({','.join('?' * len(skip))})" if skip else ""
        with self._tx() as cur:
            cur.execute("DELETE FROM leases WHERE expires_at <= ?", (t,))
            held = cur.execute(
                "SELECT q.id FROM leases l JOIN queries q ON q.id = l.query_id"
                " WHERE l.annotator = ?"
                " AND NOT EXISTS (SELECT 1 FROM answers a WHERE a.query_id = q.id)"
                + not_in + " ORDER BY q.id LIMIT 1",
                (annotator, *skip),
            ).fetchone()
            if held is not None:
                qid = held[0]
            else:
                sql = (
                    "SELECT q.id FROM queries q WHERE"
                    " NOT EXISTS (SELECT 1 FROM answers a WHERE a.query_id = q.id)"
                    " AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.query_id = q.id)" + not_in
                )
                args: list[object] = list(skip)
                if cycle is not None:
                    sql += " AND q.cycle = ?"
                    args.append(cycle)
                row = cur.execute(sql + " ORDER BY q.id LIMIT 1", args).fetchone()
                if row is None:
                    return None
                qid = row[0]
            cur.execute(
                "INSERT OR REPLACE INTO leases (query_id, annotator, expires_at) VALUES (?, ?, ?)",
                (qid, annotator, t + ttl_s),
            )
        return self.query(qid)

    def lease(
        self, query_id: int, annotator: str, *, ttl_s: float = 120.0, now: float | None = None
    ) -> Query | None:
        """Lease one given query if nobody else holds it; None when someone else does."""
        t = time.time() if now is None else now
        with self._tx() as cur:
            if cur.execute("SELECT 1 FROM queries WHERE id = ?", (query_id,)).fetchone() is None:
                raise NotFoundError(f"no query with id {query_id}")
            cur.execute("DELETE FROM leases WHERE expires_at <= ?", (t,))
            row = cur.execute(
                "SELECT annotator FROM leases WHERE query_id = ?", (query_id,)
            ).fetchone()
            if row is not None and row[0] != annotator:
                return None
            cur.execute(
                "INSERT OR REPLACE INTO leases (query_id, annotator, expires_at) VALUES (?, ?, ?)",
                (query_id, annotator, t + ttl_s),
            )
        return self.query(query_id)

    def lease_holder(self, query_id: int, *, now: float | None = None) -> str | None:
        t = time.time() if now is None else now
        rows = self._read(
            "SELECT annotator FROM leases WHERE query_id = ? AND expires_at > ?", (query_id, t)
        )
        return rows[0][0] if rows else None

    def release(self, query_id: int, annotator: str) -> None:
        with self._tx() as cur:
            cur.execute(
                "DELETE FROM leases WHERE query_id = ? AND annotator = ?", (query_id, annotator)
            )
