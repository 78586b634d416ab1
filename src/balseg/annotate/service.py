"""The annotation rules, without HTTP: who gets which query, which answer is accepted, what
an undo takes back, what a reviewer sees next.

Why every rule runs inside one store transaction: the web app may run as several processes
on one run directory (a loopback server and a ``--host 0.0.0.0`` one, or two servers
started by mistake), next to ``balseg run`` and ``balseg import``. A check made before the
write ("nobody answered this yet") would let two of them answer the same query at the
same instant. ``LabelStore.transaction()`` is SQLite's ``BEGIN IMMEDIATE``: one writer at
a time across processes, so each rule sees exactly the state it changes.

Why per-click cost is constant: every statement is an indexed lookup or reads a counter
kept by the database's triggers (see ``balseg.labels.store``); nothing here loops over all
queries or answers.

The rules:

- ``next_for``: the query this person holds (a reload must not skip it), else the oldest
  open query nobody holds and this person has not skipped; when only skipped ones are
  left, they come back (and the person is told).
- ``answer``: refused (``ConflictError``) when this person already answered the query,
  when someone else holds its lease, or when someone answered it already and this is not
  a deliberate second opinion (review mode). Class ids outside the run's classes are
  ``InvalidValueError``.
- ``skip``: releases the query, remembers the skip (in the database: it survives reloads
  and restarts) and raises the person's undo floor, so that an undo never takes back an
  answer given before the skip.
- ``undo``: takes back this person's newest answer above their undo floor; when that
  leaves its query open, the query is leased back to them.
- ``review_next``: the first answered query past ``after`` that this person has not
  answered.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from balseg.annotate.rundata import RunImages
from balseg.errors import ConflictError, ForbiddenError, InvalidValueError, NotFoundError
from balseg.labels.store import Answer, LabelStore, Query, StoreTx
from balseg.rundir import CONTINUE_LOG, RunDir

PERSON = "person"
RESERVED_KEYS = ("u", "s", "z")  # unknown, skip, undo (Backspace undoes too)
VIEW_KEYS = ("[", "]", "\\")  # the patches darker, brighter, contrast stretch on/off
DEFAULT_KEYS = "1234567890" + "".join(c for c in "abcdefghijklmnopqrstuvwxyz"
                                      if c not in RESERVED_KEYS)
CONTINUE_META = "annotate.continued_cycle"
SKIPPED_AGAIN = "only queries you skipped are left: showing them again"


MAX_ANNOTATOR = 64
# What no name may hold: control characters, every space but ' ' (no-break, em, ideographic,
# line and paragraph separators), invisible format characters (soft hyphen, zero-width,
# bidirectional overrides, byte order mark), private-use characters and specials.
_NOT_IN_NAMES = (r"\x00-\x1f\x7f-\xa0\xad\u0600-\u0605\u061c\u06dd\u070f\u1680\u180e"
                 r"\u2000-\u200f\u2028-\u202f\u205f-\u206f\u3000\ue000-\uf8ff\ufeff"
                 r"\ufff0-\uffff")
ANNOTATOR_PATTERN = (rf"^[^ {_NOT_IN_NAMES}](?:[^{_NOT_IN_NAMES}]{{0,{MAX_ANNOTATOR - 2}}}"
                     rf"[^ {_NOT_IN_NAMES}])?$")
"""An annotator name, as the API's schema states it and the server checks it: 1 to 64
characters, none of them invisible or a control character, no space at either end. The same
regular expression in Python, in Rust (pydantic) and in JavaScript (the schema's readers)."""
_ANNOTATOR = re.compile(ANNOTATOR_PATTERN)


def check_annotator(name: str) -> str:
    """An annotator name is stored with every answer, so it must be short and printable
    (``ANNOTATOR_PATTERN``, after stripping spaces at either end)."""
    if not isinstance(name, str):
        raise InvalidValueError("annotator name must be text")
    name = name.strip()
    if not name:
        raise InvalidValueError("annotator name must not be empty")
    if len(name) > MAX_ANNOTATOR:
        raise InvalidValueError(f"annotator name must be at most {MAX_ANNOTATOR} characters")
    if _ANNOTATOR.fullmatch(name) is None or any("\ud800" <= c <= "\udfff" for c in name):
        raise InvalidValueError("annotator name must be printable text (no control or"
                                " invisible characters)")
    return name


def parse_keys(keys: str | list[str] | None, num_classes: int) -> list[str | None]:
    """One key per class (``None`` past the end of the list: those classes are click-only).

    Keys are single printable characters, unique, and not one of the reserved action keys.
    """
    seq = list(DEFAULT_KEYS) if keys is None else (
        [k for k in keys.split(",")] if isinstance(keys, str) and "," in keys else list(keys)
    )
    seq = [k.strip().lower() if k.strip() else k for k in seq]
    for k in seq:
        if len(k) != 1 or not k.isprintable() or k == " ":
            raise InvalidValueError(f"class key {k!r} must be one printable, non-space"
                                    " character")
        if k in RESERVED_KEYS or k in VIEW_KEYS:
            raise InvalidValueError(f"class key {k!r} is reserved (u unknown, s skip, z undo,"
                                    " [ ] \\ the patches' brightness and contrast)")
    if len(set(seq)) != len(seq):
        raise InvalidValueError(f"class keys must be unique, got {''.join(seq)!r}")
    return [seq[i] if i < len(seq) else None for i in range(num_classes)]


def launch_continue(run_dir: Path) -> Any:
    """Start ``balseg run RUN_DIR`` detached, logging to RUN_DIR/continue.log.

    The argument list is fixed (no shell).
    """
    log = open(RunDir(run_dir).continue_log, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "balseg", "run", str(run_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


@dataclass(frozen=True)
class AnswerOutcome:
    answer_id: int
    query: Query
    label: int | None
    conflict: bool


@dataclass(frozen=True)
class UndoOutcome:
    retracted: Answer
    query: Query


class AnnotationService:
    """One run directory's annotation state: its images, its label store and its rules.

    ``launcher(run_dir)`` starts ``balseg run`` for ``continue_run`` (tests pass a fake);
    ``clock()`` gives the time for leases.
    """

    def __init__(
        self, run_dir: str | Path, *, lease_ttl_s: float = 120.0, continue_run: bool = False,
        keys: str | list[str] | None = None,
        launcher: Callable[[Path], Any] | None = None, clock: Callable[[], float] = time.time,
        check_store: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.images = RunImages.open(self.run_dir)
        self.keys = parse_keys(keys, self.images.num_classes)
        self.store: LabelStore = self.images.open_store(check=check_store)
        self.lease_ttl_s = lease_ttl_s
        self.continue_run = continue_run
        self.launcher = launcher
        self.clock = clock
        self._proc_lock = threading.Lock()
        self.proc: Any = None
        self.proc_cycle: int | None = None
        self.proc_started: str | None = None

    @property
    def num_classes(self) -> int:
        return self.images.num_classes

    def close(self) -> None:
        self.store.close()

    # -- leases -----------------------------------------------------------------------------
    def _lease_next(self, tx: StoreTx, who: str) -> tuple[Query | None, str | None]:
        now = self.clock()
        q = tx.lease_next(who, ttl_s=self.lease_ttl_s, now=now, skip_skipped=True)
        if q is None and tx.clear_skips(who):
            q = tx.lease_next(who, ttl_s=self.lease_ttl_s, now=now)
            if q is not None:
                return q, SKIPPED_AGAIN
        return q, None

    def next_for(self, who: str) -> tuple[Query | None, str | None]:
        """The query ``who`` holds or a newly leased one, and a note for the person."""
        who = check_annotator(who)
        with self.store.transaction() as tx:
            q, note = self._lease_next(tx, who)
        if q is None:
            self.maybe_continue()
        return q, note

    def skip(self, who: str, query_id: int) -> tuple[Query | None, str | None]:
        """Hand ``query_id`` back, remember the skip, and lease the next query."""
        who = check_annotator(who)
        with self.store.transaction() as tx:
            tx.query(query_id)  # NotFoundError for an unknown query
            tx.release(query_id, who)
            tx.add_skip(who, query_id)
            tx.set_undo_floor(who, tx.last_answer_id())
            q, note = self._lease_next(tx, who)
        if q is None:
            self.maybe_continue()
        return q, note

    # -- answers ----------------------------------------------------------------------------
    def check_label(self, label: object) -> int | None:
        if label is None:
            return None
        c = self.num_classes
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < c:
            raise InvalidValueError(f"class id {label!r} is outside 0..{c - 1}"
                                    " (use null for 'unknown')")
        return label

    def answer(self, who: str, query_id: int, label: int | None, *, review: bool = False,
               accepted: bool = False) -> AnswerOutcome:
        """Store ``who``'s answer to ``query_id`` if the rules allow it (one transaction).

        ``accepted``: the answer took the model's suggestion with the accept key; it must
        then be the suggested class. Whether it did is stored with every answer given
        while a suggestion was shown (review mode shows none: a second opinion is
        independent)."""
        who = check_annotator(who)
        label = self.check_label(label)
        with self.store.transaction() as tx:
            q = tx.query(query_id)
            guess = None if review else tx.suggestion(q.id)
            if accepted and (guess is None or label != guess):  # the query's state: 409
                raise ConflictError(
                    f"query {q.id}: accepted is true but the label is not the model's"
                    f" suggestion ({'none' if guess is None else f'class {guess}'})")
            if tx.answer_by(q.id, who) is not None:
                raise ConflictError(f"{who} already answered query {q.id}"
                                    " (undo it first to change the answer)")
            holder = tx.lease_holder(q.id, self.clock())
            if holder is not None and holder != who:
                raise ConflictError(f"query {q.id} is being answered by {holder}")
            if not review and tx.answer_count(q.id) > 0:
                names = ", ".join(tx.answerers(q.id))
                raise ConflictError(f"query {q.id} was already answered by {names};"
                                    " answer in review mode to add a second opinion")
            (answer_id,) = tx.add_answers([(q.id, label)], source=PERSON, annotator=who,
                                          accepted=None if guess is None else accepted)
            tx.remove_skip(who, q.id)
            conflict = tx.is_conflict(q.id)
        self.maybe_continue(q.cycle)
        return AnswerOutcome(answer_id, q, label, conflict)

    def undo(self, who: str, current_query_id: int | None = None) -> UndoOutcome:
        """Take back ``who``'s newest answer given since their last skip."""
        who = check_annotator(who)
        with self.store.transaction() as tx:
            floor = tx.undo_floor(who)
            last = tx.last_answer(who, source=PERSON, above=floor)
            if last is None:
                if floor and tx.last_answer(who, source=PERSON) is not None:
                    raise ConflictError(f"{who} has no answer to undo since the last skip"
                                        " (answers given before a skip stay)")
                raise ConflictError(f"{who} has no answer to undo")
            tx.delete_answer(last.id, annotator=who)
            q = tx.query(last.query_id)
            if tx.answer_count(q.id) == 0:  # open again: hand it back to the person who undid
                if current_query_id is not None and current_query_id != q.id:
                    tx.release(current_query_id, who)
                tx.remove_skip(who, q.id)
                tx.lease(q.id, who, ttl_s=self.lease_ttl_s, now=self.clock())
        return UndoOutcome(last, q)

    def review_next(self, who: str, after: int = 0) -> Query | None:
        """Answered queries this person has not answered, for a deliberate second opinion."""
        who = check_annotator(who)
        with self.store.snapshot() as s:
            return s.next_to_review(who, after)

    def suggestion(self, query_id: int) -> int | None:
        """The class the model that chose the query predicted there (None: no model yet)."""
        with self.store.snapshot() as s:
            return s.suggestion(query_id)

    def query_detail(self, query_id: int) -> tuple[Query, int, str | None]:
        """(query, number of answers, lease holder)."""
        with self.store.snapshot() as s:
            q = s.query(query_id)
            return q, s.answer_count(q.id), s.lease_holder(q.id, self.clock())

    def conflicts(self) -> list[tuple[Query, list[Answer]]]:
        out = []
        with self.store.snapshot() as s:
            for qid in self.store.conflicts():
                out.append((s.query(qid), s.answers_of(qid)))
        return out

    # -- progress ---------------------------------------------------------------------------
    def progress(self, who: str | None, *, query: Query | None = None,
                 image_id: str | None = None) -> dict[str, Any]:
        """Counts for the page: all cycles, the current cycle, one image, and ``who``'s.

        The image counted is ``query``'s, within ``query``'s own cycle (the one the page
        shows); a bare ``image_id`` is counted within the current cycle.
        """
        with self.store.snapshot() as s:
            counts = s.counts()
            cycle = s.current_cycle()
            out: dict[str, Any] = {
                "total": counts["queries"], "answered": counts["answered"],
                "open": counts["open"], "unknown": counts["unknown"],
                "conflicts": counts["conflicts"], "cycle": cycle,
            }
            if cycle is not None:
                t = s.cycle_tally(cycle)
                out.update(cycle_total=t.total, cycle_open=t.open, cycle_answered=t.answered)
            image_cycle = query.cycle if query is not None else cycle
            image = query.image_id if query is not None else image_id
            if image is not None and image_cycle is not None:
                t = s.image_tally(image_cycle, image)
                out["image"] = {"image_id": image, "total": t.total,
                                "open": t.open, "answered": t.answered}
            if who is not None:
                out["mine"] = s.annotator_answers(who, PERSON)
        out["continue"] = self.continue_status()
        return out

    # -- images -----------------------------------------------------------------------------
    def image_file(self, image_id: str) -> Path:
        """The file of an image that has queries; nothing else is ever served."""
        if not self.store.has_image(image_id):
            raise NotFoundError(f"no queried image with id {image_id!r}")
        return self.images.image_path(image_id)

    def image_size(self, image_id: str) -> tuple[int, int] | str:
        """(width, height), or why the image cannot be shown."""
        try:
            return self.images.image_size(image_id)
        except (NotFoundError, ForbiddenError) as err:
            return str(err)

    # -- continuing the run -------------------------------------------------------------------
    def continue_status(self) -> dict[str, Any]:
        if not self.continue_run:
            return {"enabled": False, "state": "off"}
        state = "idle"
        rc = None
        if self.proc is not None:
            rc = self.proc.poll()
            state = "running" if rc is None else ("finished" if rc == 0 else "failed")
        return {"enabled": True, "state": state, "cycle": self.proc_cycle,
                "returncode": rc, "started_at": self.proc_started, "log": CONTINUE_LOG}

    def maybe_continue(self, cycle: int | None = None) -> None:
        """Start ``balseg run`` once when the latest cycle has no open query left.

        The decision and the record of the launched cycle (meta ``annotate.continued_cycle``)
        are one transaction, so neither a restart nor a second server starts a second run
        for the same cycle.
        """
        if not self.continue_run:
            return
        with self._proc_lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            with self.store.transaction() as tx:
                latest = tx.latest_cycle()
                if latest is None or (cycle is not None and cycle != latest):
                    return
                if tx.cycle_tally(latest).open:
                    return
                done = tx.get_meta(CONTINUE_META)
                if done is not None and done.isdigit() and int(done) >= latest:
                    return
                tx.set_meta(CONTINUE_META, str(latest))
            self.proc = (self.launcher or launch_continue)(self.run_dir)
            self.proc_cycle = latest
            self.proc_started = datetime.now(timezone.utc).isoformat(timespec="seconds")
