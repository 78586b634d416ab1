"""The annotation web app: people answer a run's pixel queries, one pixel at a time.

Why it is shaped like this:
- Every answer is one committed store transaction before the response is sent, so a reload,
  a browser crash or a server restart loses nothing; the page asks ``/api/next`` and gets the
  query it held (leases survive in the database) or the next open one.
- Leases hand a query to one person at a time; an answer to a query that someone else holds,
  or that is already answered, is refused with 409 unless the person is deliberately
  reviewing (then both answers are kept and a disagreement shows up as a store conflict).
- Nothing reaches the file system from a request except through ``RunData.image_path`` with
  an image id the label store knows, so no user-supplied path is ever opened.
- Bad requests get a 4xx with a message: bodies are validated by pydantic and size-limited,
  class ids are checked against the run's class list, and store refusals map to 404/409.
"""

from __future__ import annotations

import hmac
import io
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

from balseg.annotate.rundata import ImageAccessError, RunData
from balseg.labels.store import LabelStore, LabelStoreError
from balseg.labels.store import Query as StoreQuery

STATIC_DIR = Path(__file__).with_name("static")
MAX_BODY_BYTES = 64 * 1024
TOKEN_HEADER = "x-balseg-token"
TOKEN_COOKIE = "balseg_token"
RESERVED_KEYS = ("u", "s", "z")  # unknown, skip, undo (Backspace undoes too)
DEFAULT_KEYS = "1234567890" + "".join(c for c in "abcdefghijklmnopqrstuvwxyz"
                                      if c not in RESERVED_KEYS)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
CONTINUE_META = "annotate.continued_cycle"
CONTINUE_LOG = "continue.log"
_BROWSER_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                        ".gif": "image/gif", ".webp": "image/webp", ".bmp": "image/bmp"}
_MAX_ID = 2**62


def check_annotator(name: str) -> str:
    """An annotator name is stored with every answer, so it must be short and printable."""
    name = name.strip()
    if not name:
        raise ValueError("annotator name must not be empty")
    if len(name) > 64:
        raise ValueError("annotator name must be at most 64 characters")
    if not name.isprintable():
        raise ValueError("annotator name must be printable text")
    return name


Annotator = Annotated[str, Field(max_length=256), AfterValidator(check_annotator)]
QueryId = Annotated[StrictInt, Field(ge=1, le=_MAX_ID)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WhoIn(_Body):
    annotator: Annotator


class AnswerIn(_Body):
    annotator: Annotator
    query_id: QueryId
    label: Annotated[StrictInt, Field(ge=-_MAX_ID, le=_MAX_ID)] | None
    review: bool = False


class SkipIn(_Body):
    annotator: Annotator
    query_id: QueryId


class UndoIn(_Body):
    annotator: Annotator
    current_query_id: QueryId | None = None


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
            raise ValueError(f"class key {k!r} must be one printable, non-space character")
        if k in RESERVED_KEYS:
            raise ValueError(f"class key {k!r} is reserved (u unknown, s skip, z undo)")
    if len(set(seq)) != len(seq):
        raise ValueError(f"class keys must be unique, got {''.join(seq)!r}")
    return [seq[i] if i < len(seq) else None for i in range(num_classes)]


def is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def launch_continue(run_dir: Path) -> Any:
    """Start ``balseg run RUN_DIR`` detached, logging to RUN_DIR/continue.log.

    Module-level so tests can monkeypatch it; the argument list is fixed (no shell).
    """
    log = open(run_dir / CONTINUE_LOG, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "balseg", "run", str(run_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def _host_name(host: str) -> str:
    """The name part of a Host header ('[::1]:8000' -> '[::1]', 'a:80' -> 'a')."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0]


class _Guard:
    """ASGI middleware: token, Host header and body size, checked before any route runs.

    Without a token the server only listens on loopback, and the Host check stops a web page
    from reaching it through DNS rebinding. Bodies are read up to the limit and replayed, so
    an oversized or chunked body never reaches a handler.
    """

    def __init__(self, app: Any, token: str | None, max_body: int) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body

    @staticmethod
    async def _reply(scope: Any, send: Any, status: int, message: str) -> None:
        await JSONResponse({"detail": message}, status_code=status)(scope, _no_receive, send)

    def _token_ok(self, scope: dict[str, Any], headers: dict[str, str]) -> tuple[bool, bool]:
        """(authorised, came from the query string: then set the cookie)."""
        assert self.token is not None
        given = headers.get(TOKEN_HEADER)
        auth = headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        from_query = False
        if given is None:
            qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if "token" in qs:
                given, from_query = qs["token"][0], True
        if given is None:
            for part in headers.get("cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == TOKEN_COOKIE:
                    given = value
        ok = given is not None and hmac.compare_digest(
            given.encode("utf-8", "replace"), self.token.encode("utf-8")
        )
        return ok, from_query and ok

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        set_cookie = False
        if self.token is None:
            host = _host_name(headers.get("host", ""))
            if host.lower() not in LOOPBACK_HOSTS:
                await self._reply(scope, send, 403,
                                  f"host {host!r} refused: the server is loopback-only")
                return
        else:
            ok, set_cookie = self._token_ok(scope, headers)
            if not ok:
                await self._reply(scope, send, 401, "a valid token is required (?token=... or the "
                                             "X-Balseg-Token header)")
                return
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                await self._reply(scope, send, 400, "bad Content-Length")
                return
            if int(length) > self.max_body:
                await self._reply(scope, send, 413, f"request body over {self.max_body} bytes")
                return
        if scope.get("method") in ("POST", "PUT", "PATCH", "DELETE"):
            chunks, size, more = [], 0, True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    await self._reply(scope, send, 413, f"request body over {self.max_body} bytes")
                    return
                chunks.append(chunk)
                more = msg.get("more_body", False)
            body = b"".join(chunks)
            sent = False

            async def replay() -> dict[str, Any]:
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            receive = replay

        if set_cookie:
            async def send_with_cookie(msg: dict[str, Any]) -> None:
                if msg["type"] == "http.response.start":
                    cookie = (f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; "
                              "SameSite=Strict")
                    msg = {**msg, "headers": [*msg.get("headers", []),
                                              (b"set-cookie", cookie.encode("latin-1"))]}
                await send(msg)

            await self.app(scope, receive, send_with_cookie)
        else:
            await self.app(scope, receive, send)


class Annotation:
    """The app's state: the store, the run's images, skips and the continue-run process."""

    def __init__(
        self, run_dir: Path, *, lease_ttl_s: float, continue_run: bool,
        keys: str | list[str] | None,
    ) -> None:
        self.run_dir = run_dir
        self.data = RunData.open(run_dir)
        self.store: LabelStore = self.data.open_store()
        self.lease_ttl_s = lease_ttl_s
        self.keys = parse_keys(keys, self.data.num_classes)
        self.continue_run = continue_run
        self.lock = threading.RLock()
        self.skipped: dict[str, set[int]] = {}
        self.proc: Any = None
        self.proc_cycle: int | None = None
        self.proc_started: str | None = None

    # -- leases -----------------------------------------------------------------------------
    def lease(self, who: str, *, avoid: set[int] | None = None, want: int | None = None
              ) -> StoreQuery | None:
        """Next query for ``who``, skipping ``avoid`` or going for ``want``.

        Caller holds ``self.lock``.
        """
        if want is not None:
            return self.store.lease(want, who, ttl_s=self.lease_ttl_s)
        return self.store.lease_next(who, ttl_s=self.lease_ttl_s, exclude=avoid or ())

    def next_for(self, who: str) -> tuple[StoreQuery | None, str | None]:
        with self.lock:
            skipped = self.skipped.setdefault(who, set())
            q = self.lease(who, avoid=skipped)
            if q is None and skipped:
                skipped.clear()
                q = self.lease(who)
                if q is not None:
                    return q, "only queries you skipped are left: showing them again"
            return q, None

    # -- progress ---------------------------------------------------------------------------
    def current_cycle(self) -> int | None:
        open_q = self.store.open_queries()
        if open_q:
            return min(q.cycle for q in open_q)
        cycles = self.store.cycles()
        return cycles[-1] if cycles else None

    def progress(self, who: str | None, image_id: str | None = None) -> dict[str, Any]:
        store = self.store
        counts = store.counts()
        cycle = self.current_cycle()
        out: dict[str, Any] = {
            "total": counts["queries"], "answered": counts["answered"], "open": counts["open"],
            "unknown": counts["unknown"], "conflicts": counts["conflicts"], "cycle": cycle,
        }
        if cycle is not None:
            total = store.queries(cycle=cycle)
            open_ids = {q.id for q in store.open_queries(cycle=cycle)}
            out.update(cycle_total=len(total), cycle_open=len(open_ids),
                       cycle_answered=len(total) - len(open_ids))
            if image_id is not None:
                mine = [q for q in total if q.image_id == image_id]
                n_open = sum(q.id in open_ids for q in mine)
                out["image"] = {"image_id": image_id, "total": len(mine), "open": n_open,
                                "answered": len(mine) - n_open}
        if who is not None:
            out["mine"] = sum(a.annotator == who and a.source == "person"
                              for a in store.answers())
        out["continue"] = self.continue_status()
        return out

    def query_json(self, q: StoreQuery) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": q.id, "image_id": q.image_id, "y": q.y, "x": q.x, "cycle": q.cycle,
            "image_url": "/api/images/" + quote(q.image_id, safe=""),
            "width": None, "height": None,
        }
        try:
            out["width"], out["height"] = self.data.image_size(q.image_id)
        except ImageAccessError as err:
            out["image_error"] = str(err)
        return out

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

    def maybe_continue(self, cycle: int) -> None:
        """Start ``balseg run`` once when the latest cycle has no open query left.

        The launched cycle is recorded in the store's meta table so an app restart does not
        start a second run for the same cycle.
        """
        if not self.continue_run:
            return
        with self.lock:
            cycles = self.store.cycles()
            if not cycles or cycle != cycles[-1] or self.store.open_queries(cycle=cycle):
                return
            if self.proc is not None and self.proc.poll() is None:
                return
            done = self.store.get_meta(CONTINUE_META)
            if done is not None and int(done) >= cycle:
                return
            self.store.set_meta(CONTINUE_META, str(cycle))
            self.proc = launch_continue(self.run_dir)
            self.proc_cycle = cycle
            self.proc_started = datetime.now(timezone.utc).isoformat(timespec="seconds")


def _store_error(err: LabelStoreError) -> HTTPException:
    msg = str(err)
    return HTTPException(404 if msg.startswith("no ") else 409, msg)


def create_app(
    run_dir: str | Path,
    *,
    token: str | None = None,
    lease_ttl_s: float = 120.0,
    continue_run: bool = False,
    keys: str | list[str] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The FastAPI app for one run directory (see docs/annotate.md for the endpoints).

    ``token``: when set, every request must carry it (header, ``?token=`` or the cookie the
    server sets after a valid ``?token=``). Without one, only loopback Host headers pass.
    """
    st = Annotation(Path(run_dir), lease_ttl_s=lease_ttl_s, continue_run=continue_run,
                    keys=keys)
    app = FastAPI(title="balseg annotate", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.annotation = st

    @app.exception_handler(LabelStoreError)
    async def _on_store_error(_req: Any, err: LabelStoreError) -> JSONResponse:
        e = _store_error(err)
        return JSONResponse({"detail": e.detail}, status_code=e.status_code)

    @app.get("/", response_class=HTMLResponse)
    def index() -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-store"})

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        d = st.data
        return {
            "run": d.run_dir.resolve().name,
            "classes": [
                {"id": i, "name": n, "color": "#{:02x}{:02x}{:02x}".format(*d.palette[i]),
                 "key": st.keys[i]}
                for i, n in enumerate(d.class_names)
            ],
            "keys": {"unknown": "u", "skip": "s", "undo": ["Backspace", "z"]},
            "lease_ttl_s": st.lease_ttl_s,
            "continue_run": st.continue_run,
        }

    @app.get("/api/progress")
    def progress(annotator: Annotated[Annotator, Query()],
                 image_id: Annotated[str | None, Query(max_length=1024)] = None
                 ) -> dict[str, Any]:
        return st.progress(annotator, image_id)

    @app.post("/api/next")
    def next_query(body: WhoIn) -> dict[str, Any]:
        q, note = st.next_for(body.annotator)
        if q is None:
            cycle = st.current_cycle()
            if cycle is not None:
                st.maybe_continue(cycle)
            return {"query": None, "note": note,
                    "progress": st.progress(body.annotator)}
        return {"query": st.query_json(q), "note": note,
                "progress": st.progress(body.annotator, q.image_id)}

    @app.post("/api/answer")
    def answer(body: AnswerIn) -> dict[str, Any]:
        who, store = body.annotator, st.store
        with st.lock:
            q = store.query(body.query_id)
            c = st.data.num_classes
            if body.label is not None and not 0 <= body.label < c:
                raise HTTPException(422, f"class id {body.label} is outside 0..{c - 1}"
                                         " (use null for 'unknown')")
            previous = store.answers(q.id)
            if any(a.annotator == who for a in previous):
                raise HTTPException(409, f"{who} already answered query {q.id}"
                                         " (undo it first to change the answer)")
            holder = store.lease_holder(q.id)
            if holder is not None and holder != who:
                raise HTTPException(409, f"query {q.id} is being answered by {holder}")
            if previous and not body.review:
                names = ", ".join(sorted({a.annotator or a.source for a in previous}))
                raise HTTPException(409, f"query {q.id} was already answered by {names};"
                                         " answer in review mode to add a second opinion")
            answer_id = store.add_answer(q.id, body.label, source="person", annotator=who)
            st.skipped.get(who, set()).discard(q.id)
        st.maybe_continue(q.cycle)
        return {"answer_id": answer_id, "query_id": q.id, "label": body.label,
                "conflict": q.id in store.conflicts(),
                "progress": st.progress(who, q.image_id)}

    @app.post("/api/skip")
    def skip(body: SkipIn) -> dict[str, Any]:
        who = body.annotator
        with st.lock:
            st.store.query(body.query_id)  # 404 for an unknown query
            st.store.release(body.query_id, who)
            st.skipped.setdefault(who, set()).add(body.query_id)
        return next_query(WhoIn(annotator=who))

    @app.post("/api/undo")
    def undo(body: UndoIn) -> dict[str, Any]:
        who, store = body.annotator, st.store
        with st.lock:
            mine = [a for a in store.answers() if a.annotator == who and a.source == "person"]
            if not mine:
                raise HTTPException(409, f"{who} has no answer to undo")
            last = mine[-1]
            store.retract_answer(last.id, annotator=who)
            q = store.query(last.query_id)
            if not store.answers(q.id):  # open again: hand it back to the person who undid
                if body.current_query_id is not None:
                    store.release(body.current_query_id, who)
                st.skipped.get(who, set()).discard(q.id)
                st.lease(who, want=q.id)
        return {"retracted": {"answer_id": last.id, "query_id": q.id, "label": last.label},
                "query": st.query_json(q), "progress": st.progress(who, q.image_id)}

    @app.get("/api/review/next")
    def review_next(annotator: Annotated[Annotator, Query()],
                    after: Annotated[int, Query(ge=0, le=_MAX_ID)] = 0) -> dict[str, Any]:
        """Answered queries this person has not answered, for a deliberate second opinion."""
        answered_by: dict[int, set[str | None]] = {}
        for a in st.store.answers():
            answered_by.setdefault(a.query_id, set()).add(a.annotator)
        for qid in sorted(answered_by):
            if qid > after and annotator not in answered_by[qid]:
                q = st.store.query(qid)
                return {"query": st.query_json(q),
                        "progress": st.progress(annotator, q.image_id)}
        return {"query": None, "progress": st.progress(annotator)}

    @app.get("/api/conflicts")
    def conflicts() -> dict[str, Any]:
        out = []
        for qid in st.store.conflicts():
            q = st.store.query(qid)
            out.append({"query": {"id": q.id, "image_id": q.image_id, "y": q.y, "x": q.x},
                        "answers": [{"annotator": a.annotator, "label": a.label,
                                     "source": a.source, "answered_at": a.answered_at}
                                    for a in st.store.answers(qid)]})
        return {"conflicts": out}

    @app.get("/api/queries/{query_id}")
    def get_query(query_id: Annotated[int, PathParam(ge=1, le=_MAX_ID)]) -> dict[str, Any]:
        q = st.store.query(query_id)
        return {"query": st.query_json(q), "answers": len(st.store.answers(q.id)),
                "lease_holder": st.store.lease_holder(q.id)}

    def _image_response(image_id: str) -> Response:
        if not st.store.queries(image_id=image_id):
            raise HTTPException(404, f"no queried image with id {image_id!r}")
        try:
            path = st.data.image_path(image_id)
        except ImageAccessError as err:
            raise HTTPException(403 if err.forbidden else 404, str(err)) from None
        headers = {"Cache-Control": "private, max-age=3600"}
        media = _BROWSER_IMAGE_TYPES.get(path.suffix.lower())
        if media is not None:
            return FileResponse(path, media_type=media, headers=headers)
        from PIL import Image

        try:
            with Image.open(path) as im:
                buf = io.BytesIO()
                im.convert("RGB").save(buf, format="PNG")
        except OSError as err:
            raise HTTPException(404, f"image of {image_id!r} cannot be read: {err}") from None
        return Response(buf.getvalue(), media_type="image/png", headers=headers)

    @app.get("/api/queries/{query_id}/image")
    def query_image(query_id: Annotated[int, PathParam(ge=1, le=_MAX_ID)]) -> Response:
        return _image_response(st.store.query(query_id).image_id)

    @app.get("/api/images/{image_id:path}")
    def image(image_id: str) -> Response:
        if len(image_id) > 1024:
            raise HTTPException(414, "image id too long")
        return _image_response(image_id)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(_Guard, token=token, max_body=max_body_bytes)
    return app
