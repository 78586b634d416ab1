"""Label Studio as the oracle: open queries go up as tasks, annotations come back as
answers, each exactly once.

One *sync* does, in one ``BEGIN IMMEDIATE`` transaction of the label store (so two
processes, say ``balseg run`` and the ML backend's webhook, never sync at once, and a
crash leaves nothing half-written):

1. list the project's tasks that carry this run's key (``data.balseg_run``), with their
   annotations;
2. *pull*: for each query, the latest annotation of its tasks (by ``updated_at``, then
   id) becomes its Label Studio answer (source ``person``, annotator the Label Studio
   user's e-mail);
3. *push*: every open query without a task gets one (images are uploaded to Label Studio
   once per image, so it needs no access to balseg's files).

A task made by an upload that crashed before its commit is found again by its query id in
step 1, so no query is ever uploaded twice.

**The re-annotation rule.** Until the query's cycle has trained, the latest annotation
wins: a changed, newer or deleted annotation replaces (or withdraws) the answer it gave,
and a withdrawn query is open again (its task is uploaded again if it was deleted). Once
the cycle has trained (a later cycle has queries, or the cycle has a checkpoint or
metrics), the answer it trained on stays; a later change is recorded with status ``late``
and said in a warning, never applied silently and never dropped. Every version seen is a
row of ``labelstudio_annotations`` (Label Studio's annotation id, its ``updated_at``, the
class, the annotator, the balseg answer id it became, its status).

Skipped tasks (Label Studio's *Skip*) give no answer: the query stays open. Answer
``unknown`` to give up on a pixel.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from balseg.annotate.rundata import RunImages
from balseg.errors import BalsegWarning, ConfigError, LabelStudioError, NotFoundError
from balseg.labels.store import LabelStore, Query, StoreTx
from balseg.labelstudio.client import LabelStudio
from balseg.labelstudio.tasks import (
    CLASS,
    IMAGE,
    POINT,
    UNKNOWN_LABEL,
    balseg_order,
    label_config,
    read_choice,
    task_for,
)
from balseg.rundir import RunDir

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
SOURCE = "person"  # people answered in Label Studio, as in balseg annotate
META_PROJECT = "labelstudio.project"
META_RUN_KEY = "labelstudio.run_key"
UPLOAD_BATCH = 200
_BROWSER_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                  ".gif": "image/gif", ".webp": "image/webp", ".bmp": "image/bmp"}
APPLIED, REPLACED, WITHDRAWN, LATE = "applied", "replaced", "withdrawn", "late"

TABLES = (
    """CREATE TABLE IF NOT EXISTS labelstudio_tasks (
        project INTEGER NOT NULL, query_id INTEGER NOT NULL REFERENCES queries (id),
        task_id INTEGER NOT NULL, uploaded_at TEXT NOT NULL,
        PRIMARY KEY (project, query_id))""",
    """CREATE TABLE IF NOT EXISTS labelstudio_images (
        project INTEGER NOT NULL, image_id TEXT NOT NULL, url TEXT NOT NULL,
        PRIMARY KEY (project, image_id))""",
    """CREATE TABLE IF NOT EXISTS labelstudio_annotations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        query_id INTEGER NOT NULL REFERENCES queries (id),
        project INTEGER NOT NULL, task_id INTEGER NOT NULL,
        annotation_id INTEGER NOT NULL, updated_at TEXT NOT NULL,
        label INTEGER, annotator TEXT NOT NULL,
        answer_id INTEGER, status TEXT NOT NULL, seen_at TEXT NOT NULL, gone_at TEXT,
        UNIQUE (annotation_id, updated_at))""",
    "CREATE INDEX IF NOT EXISTS labelstudio_annotations_query"
    " ON labelstudio_annotations (query_id, status)",
)
_ROW = ("id, query_id, project, task_id, annotation_id, updated_at, label, annotator,"
        " answer_id, status, gone_at")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def read_token(token_file: str | None, env: dict[str, str] | None = None) -> str:
    """The API token: ``LABEL_STUDIO_API_KEY``, else the first line of ``oracle.token_file``.
    It is read at each start and never written anywhere."""
    env = os.environ if env is None else env
    token = (env.get(TOKEN_ENV) or "").strip()
    if token:
        return token
    if token_file:
        path = Path(token_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise ConfigError(f"oracle.token_file {path}: cannot read it"
                              f" ({err.strerror or err})") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ConfigError(f"oracle.token_file {path} is empty")
        return token
    raise ConfigError(f"no Label Studio API token: set {TOKEN_ENV} (or oracle.token_file) to"
                      " the access token of Account & Settings in Label Studio")


@dataclass(frozen=True)
class _Version:
    """One annotation of one task, as Label Studio has it now."""

    annotation_id: int
    task_id: int
    updated_at: str
    label: int | None
    annotator: str

    @property
    def key(self) -> tuple[datetime, int]:
        try:
            when = datetime.fromisoformat(self.updated_at.replace("Z", "+00:00"))
        except ValueError:
            when = datetime.min.replace(tzinfo=timezone.utc)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when, self.annotation_id


@dataclass
class SyncReport:
    """What one sync did."""

    project: int = 0
    url: str = ""
    answered: int = 0  # new balseg answers (replacements included)
    replaced: int = 0  # answers replaced by a newer annotation (before training)
    withdrawn: int = 0  # answers withdrawn: annotation or task deleted (before training)
    late: int = 0  # changes after the cycle trained: recorded, not applied
    uploaded: int = 0  # tasks made
    reuploaded: int = 0  # of which for queries whose task was deleted
    adopted: int = 0  # tasks found for queries (an upload that crashed before its commit)
    open: int = 0  # open queries left
    notes: list[str] = field(default_factory=list)

    @property
    def project_url(self) -> str:
        return f"{self.url}/projects/{self.project}/data"

    def summary(self) -> str:
        parts = [f"{self.answered} new answers"]
        for n, what in ((self.replaced, "replaced by a newer annotation"),
                        (self.withdrawn, "withdrawn"), (self.late, "recorded as late")):
            if n:
                parts.append(f"{n} {what}")
        up = f"{self.uploaded} tasks uploaded"
        if self.reuploaded:
            up += f" ({self.reuploaded} again: their task was deleted)"
        return (f"Label Studio project {self.project} ({self.project_url}): "
                + ", ".join(parts) + f"; {up}; {self.open} queries open")


class LabelStudioLink:
    """One run directory and its project in one Label Studio server."""

    def __init__(self, run_dir: str | Path, *, url: str, project: int | str | None,
                 token: str, images: RunImages | None = None,
                 client: LabelStudio | None = None) -> None:
        self.rundir = RunDir(run_dir)
        self.images = images or RunImages.open(self.rundir.path)
        self.client = client or LabelStudio(url, token)
        self.project_spec = project
        self._users: dict[int, str] | None = None

    @classmethod
    def from_config(cls, run_dir: str | Path, oracle: Any, **kwargs: Any) -> LabelStudioLink:
        """From a run's ``OracleConfig`` (``kind: labelstudio``); the token from the
        environment or ``oracle.token_file``."""
        if oracle.url is None:
            raise ConfigError("oracle.kind: labelstudio needs oracle.url (the address of"
                              " Label Studio, like http://localhost:8080)")
        return cls(run_dir, url=oracle.url, project=oracle.project,
                   token=read_token(oracle.token_file), **kwargs)

    @property
    def url(self) -> str:
        return self.client.url

    def close(self) -> None:
        self.client.close()

    @property
    def default_title(self) -> str:
        return f"balseg {self.rundir.path.resolve().name}"

    # -- the project ------------------------------------------------------------------------------
    def _check_config(self, project: dict[str, Any]) -> None:
        parsed = project.get("parsed_label_config") or {}
        want = [*self.images.class_names, UNKNOWN_LABEL]
        control = parsed.get(CLASS) or {}
        ok = (control.get("type") == "Choices" and set(want) <= set(control.get("labels") or [])
              and (parsed.get(POINT) or {}).get("type") == "KeyPointLabels")
        if not ok:
            raise LabelStudioError(
                f"Label Studio project {project.get('id')} ({project.get('title')!r}) at"
                f" {self.url} has not balseg's labeling config (a Choices '{CLASS}' with the"
                f" run's classes and '{UNKNOWN_LABEL}', a KeyPointLabels '{POINT}' on"
                f" '{IMAGE}'): name a new title in oracle.project and balseg creates it")

    def _create(self, title: str) -> dict[str, Any]:
        return self.client.create_project(
            title=title, label_config=label_config(self.images.class_names,
                                                   self.images.palette),
            description=f"balseg run {self.rundir.path.resolve()}: one task per queried"
                        " pixel; sort by score (descending) for balseg's order",
            show_collab_predictions=True, model_version="balseg", maximum_annotations=1,
            show_skip_button=True, enable_empty_annotation=False)

    def resolve_project(self, tx: StoreTx) -> int:
        """The run's project id: found by id or title, created when a title is missing.

        The id is recorded in the label store; a run whose project has vanished from the
        server (a new Label Studio database) continues in the one ``oracle.project`` names
        now, and its open queries are uploaded there."""
        spec = self.project_spec
        if isinstance(spec, int):
            found = self.client.project(spec)
            if found is None:
                raise LabelStudioError(f"Label Studio at {self.url} has no project {spec}"
                                       " (oracle.project): give an existing id, or a title"
                                       " for balseg to create")
        else:
            title = spec or self.default_title
            same = self.client.projects_titled(title)
            if len(same) > 1:
                raise LabelStudioError(
                    f"Label Studio at {self.url} has {len(same)} projects titled {title!r}"
                    f" (ids {', '.join(str(p['id']) for p in same)}): set oracle.project to"
                    " the id")
            found = same[0] if same else self._create(title)
        self._check_config(found)
        pid = int(found["id"])
        stored = tx.get_meta(META_PROJECT)
        if stored is not None and stored.isdigit() and int(stored) != pid:
            if self.client.project(int(stored)) is not None:
                raise LabelStudioError(
                    f"this run's tasks are in Label Studio project {stored} at {self.url},"
                    f" but oracle.project now names project {pid}: set it back to {stored}")
            warnings.warn(f"Label Studio project {stored} of this run is gone from {self.url}:"
                          f" continuing in project {pid} (its open queries are uploaded"
                          " there; answers already pulled are kept)", BalsegWarning,
                          stacklevel=3)
        tx.set_meta(META_PROJECT, str(pid))
        return pid

    @staticmethod
    def run_key(tx: StoreTx) -> str:
        """A random key of this run, in every task's data: tasks of other runs (or copies)
        in the same project are never taken for this run's."""
        key = tx.get_meta(META_RUN_KEY)
        if key is None:
            key = uuid.uuid4().hex
            tx.set_meta(META_RUN_KEY, key)
        return key

    # -- reading Label Studio ---------------------------------------------------------------------
    def _annotator(self, ann: dict[str, Any]) -> str:
        uid = ann.get("completed_by")
        if isinstance(uid, dict):
            uid = uid.get("id")
        if self._users is None:
            try:
                self._users = self.client.users()
            except LabelStudioError:  # a token without the right to list users
                self._users = {}
        if isinstance(uid, int) and uid in self._users:
            return self._users[uid][:64]
        named = str(ann.get("created_username") or "").strip()
        name = named.rsplit(",", 1)[0].strip() or f"labelstudio user {uid}"
        return name[:64]

    def _listing(self, project: int, key: str, tx: StoreTx, report: SyncReport
                 ) -> tuple[dict[int, list[int]], dict[int, list[_Version]]]:
        """(query id -> its task ids, query id -> its annotations) of this run's tasks."""
        tasks: dict[int, list[int]] = {}
        versions: dict[int, list[_Version]] = {}
        names = self.images.class_names
        for task in self.client.tasks(project):
            data = task.get("data") or {}
            qid = data.get("balseg_query_id")
            if data.get("balseg_run") != key or not isinstance(qid, int):
                continue
            tid = int(task["id"])
            tasks.setdefault(qid, []).append(tid)
            for ann in task.get("annotations") or []:
                if ann.get("was_cancelled"):
                    continue
                choice = read_choice(ann.get("result"), names)
                if choice.problem is not None:
                    report.notes.append(f"task {tid} (query {qid}): annotation {ann.get('id')}"
                                        f" gives no answer: {choice.problem}")
                    continue
                versions.setdefault(qid, []).append(_Version(
                    int(ann["id"]), tid, str(ann.get("updated_at") or ann.get("created_at")
                                             or ""), choice.label, self._annotator(ann)))
        for qid in list(tasks):
            try:
                tx.query(qid)
            except NotFoundError:
                report.notes.append(f"tasks {tasks.pop(qid)} name query {qid}, which this"
                                    " run does not have: ignored")
                versions.pop(qid, None)
        return tasks, versions

    # -- the sync ---------------------------------------------------------------------------------
    def sync(self, store: LabelStore, *, trained_through: int | None = None) -> SyncReport:
        """Pull every new annotation, then upload every open query that has no task."""
        report = SyncReport(url=self.url)
        self.client.whoami()  # one clear line for a wrong URL or token, before any work
        self._users = None
        with store.transaction() as tx:
            for statement in TABLES:
                tx.execute(statement)
            project = self.resolve_project(tx)
            report.project = project
            key = self.run_key(tx)
            tasks, versions = self._listing(project, key, tx, report)
            trained = self.trained_through(tx) if trained_through is None else trained_through
            for qid, tids in tasks.items():
                self._adopt(tx, project, qid, tids, report)
            self._pull(tx, project, tasks, versions, trained, report)
            self._push(tx, project, key, tasks, report)
            report.open = tx.counts()["open"]
        for note in report.notes:
            warnings.warn(note, BalsegWarning, stacklevel=2)
        return report

    def trained_through(self, tx: StoreTx) -> int:
        """The last cycle whose model was trained (-1: none): a later cycle has queries,
        or it has a checkpoint or metrics."""
        latest = tx.latest_cycle()
        done = [-1 if latest is None else latest - 1, *self.rundir.checkpoint_cycles()]
        done += [int(r["cycle"]) for r in self.rundir.read_metrics() if "cycle" in r]
        return max(done)

    @staticmethod
    def _adopt(tx: StoreTx, project: int, qid: int, tids: list[int], report: SyncReport
               ) -> None:
        row = tx.execute("SELECT task_id FROM labelstudio_tasks WHERE project = ? AND"
                         " query_id = ?", (project, qid)).fetchone()
        if row is None or row[0] not in tids:
            tx.execute("INSERT OR REPLACE INTO labelstudio_tasks VALUES (?, ?, ?, ?)",
                       (project, qid, min(tids), _now()))
            if row is None:
                report.adopted += 1

    def _rows(self, tx: StoreTx, qid: int) -> list[tuple]:
        return tx.execute(f"SELECT {_ROW} FROM labelstudio_annotations WHERE query_id = ?"
                          " ORDER BY id", (qid,)).fetchall()

    def _answer(self, tx: StoreTx, qid: int, v: _Version) -> int:
        return tx.add_answers([(qid, v.label)], source=SOURCE, annotator=v.annotator)[0]

    @staticmethod
    def _retract(tx: StoreTx, answer_id: int | None) -> None:
        if answer_id is None:
            return
        with contextlib.suppress(NotFoundError):  # taken back in balseg already (an undo)
            tx.delete_answer(answer_id)

    def _pull(self, tx: StoreTx, project: int, tasks: dict[int, list[int]],
              versions: dict[int, list[_Version]], trained: int, report: SyncReport) -> None:
        applied_qids = {r[0] for r in tx.execute(
            "SELECT query_id FROM labelstudio_annotations WHERE status = ?", (APPLIED,))}
        for qid in sorted(set(versions) | applied_qids):
            q = tx.query(qid)
            rows = self._rows(tx, qid)
            applied = next((r for r in rows if r[9] == APPLIED), None)
            mine = versions.get(qid) or []
            latest = max(mine, key=lambda v: v.key) if mine else None
            open_cycle = q.cycle > trained
            if latest is None:  # its annotation or its task was deleted in Label Studio
                if applied is None:
                    continue
                if open_cycle:
                    self._retract(tx, applied[8])
                    tx.execute("UPDATE labelstudio_annotations SET status = ?, gone_at = ?"
                               " WHERE id = ?", (WITHDRAWN, _now(), applied[0]))
                    report.withdrawn += 1
                    report.notes.append(
                        f"query {qid}: its annotation {applied[4]} is gone from Label Studio"
                        f" (task {applied[3]}): its answer was withdrawn and the query is"
                        " open again")
                elif applied[10] is None:
                    tx.execute("UPDATE labelstudio_annotations SET gone_at = ? WHERE id = ?",
                               (_now(), applied[0]))
                    report.notes.append(
                        f"query {qid}: its annotation {applied[4]} is gone from Label Studio,"
                        f" but cycle {q.cycle} trained on it already: the answer is kept")
                continue
            same = next((r for r in rows if (r[4], r[5]) == (latest.annotation_id,
                                                              latest.updated_at)), None)
            if same is not None and (same[9] in (APPLIED, LATE) or not open_cycle):
                continue  # seen before: nothing changed
            if not open_cycle:
                self._record(tx, project, qid, latest, None, LATE)
                report.late += 1
                report.notes.append(
                    f"query {qid} (cycle {q.cycle}) was annotated again in Label Studio"
                    f" (annotation {latest.annotation_id}) after cycle {q.cycle} trained: the"
                    " answer it trained on is kept, the new one is recorded as 'late' in the"
                    " label database (table labelstudio_annotations)")
                continue
            if applied is not None:
                self._retract(tx, applied[8])
                tx.execute("UPDATE labelstudio_annotations SET status = ? WHERE id = ?",
                           (REPLACED, applied[0]))
                report.replaced += 1
            answer_id = self._answer(tx, qid, latest)
            if same is not None:  # an older annotation that is the latest again
                tx.execute("UPDATE labelstudio_annotations SET status = ?, answer_id = ?,"
                           " gone_at = NULL WHERE id = ?", (APPLIED, answer_id, same[0]))
            else:
                self._record(tx, project, qid, latest, answer_id, APPLIED)
            report.answered += 1

    @staticmethod
    def _record(tx: StoreTx, project: int, qid: int, v: _Version, answer_id: int | None,
                status: str) -> None:
        tx.execute(
            "INSERT INTO labelstudio_annotations (query_id, project, task_id, annotation_id,"
            " updated_at, label, annotator, answer_id, status, seen_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (qid, project, v.task_id, v.annotation_id, v.updated_at, v.label, v.annotator,
             answer_id, status, _now()))

    def _image_url(self, tx: StoreTx, project: int, image_id: str) -> str:
        row = tx.execute("SELECT url FROM labelstudio_images WHERE project = ? AND"
                         " image_id = ?", (project, image_id)).fetchone()
        if row is not None:
            return str(row[0])
        path = self.images.image_path(image_id)
        mime = _BROWSER_TYPES.get(path.suffix.lower())
        if mime is not None:
            data, name = path.read_bytes(), path.name
        else:  # TIFF, PPM, ...: what a browser shows
            from PIL import Image

            buf = io.BytesIO()
            with Image.open(path) as im:
                im.convert("RGB").save(buf, format="PNG")
            data, name, mime = buf.getvalue(), path.stem + ".png", "image/png"
        url = self.client.upload_file(project, name, data, mime)
        tx.execute("INSERT INTO labelstudio_images VALUES (?, ?, ?)", (project, image_id, url))
        return url

    def _push(self, tx: StoreTx, project: int, key: str, tasks: dict[int, list[int]],
              report: SyncReport) -> None:
        pending = [q for q in tx.open_queries() if q.id not in tasks]
        if not pending:
            return
        had = {r[0] for r in tx.execute(
            "SELECT query_id FROM labelstudio_tasks WHERE project = ?", (project,))}
        ordered = balseg_order(pending)
        for start in range(0, len(ordered), UPLOAD_BATCH):
            chunk = ordered[start:start + UPLOAD_BATCH]
            payload = []
            for rank, q in enumerate(chunk, start + 1):
                task = task_for(q, self._image_url(tx, project, q.image_id),
                                self.images.image_size(q.image_id), rank)
                task["data"]["balseg_run"] = key
                payload.append(task)
            ids = self.client.import_tasks(project, payload)
            for q, tid in zip(chunk, ids, strict=True):
                tx.execute("INSERT OR REPLACE INTO labelstudio_tasks VALUES (?, ?, ?, ?)",
                           (project, q.id, tid, _now()))
        report.uploaded = len(ordered)
        again = [q.id for q in ordered if q.id in had]
        report.reuploaded = len(again)
        if again:
            more = " ..." if len(again) > 10 else ""
            report.notes.append(f"the tasks of queries {again[:10]}{more} were deleted in"
                                " Label Studio while they were open: uploaded again")


class LabelStudioOracle:
    """``oracle.kind: labelstudio``: the loop's oracle (``answer_all``) and its pre-run
    ``sync``. ``answer_all`` answers what Label Studio holds and uploads the rest; the loop
    then waits (``balseg run`` exits 4) while queries remain open."""

    def __init__(self, run_dir: str | Path, oracle: Any,
                 connect: Callable[..., LabelStudioLink] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.oracle = oracle
        self._connect = connect or LabelStudioLink.from_config
        self._link: LabelStudioLink | None = None
        self.last: SyncReport | None = None

    @property
    def link(self) -> LabelStudioLink:
        if self._link is None:
            self._link = self._connect(self.run_dir, self.oracle)
        return self._link

    def sync(self, store: LabelStore) -> SyncReport:
        self.last = self.link.sync(store)
        return self.last

    def answer_all(self, store: LabelStore, queries: Sequence[Query], *, source: str) -> int:
        """Sync; returns how many new answers arrived (the loop counts what stays open).
        Answers are stored with source ``person`` whatever ``source`` the loop names."""
        return self.sync(store).answered

    def waiting_hint(self) -> str:
        """How people answer the open queries (``balseg run`` prints it before exit 4)."""
        where = self.last.project_url if self.last is not None else self.link.url
        return f"Answer them in Label Studio: {where}"

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
