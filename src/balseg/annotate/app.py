"""The annotation web app: thin HTTP routes over ``AnnotationService``.

Why it is shaped like this:
- The rules (answer, lease, skip, undo, review) live in ``balseg.annotate.service`` and are
  decided inside one SQLite write transaction; this module only parses requests, calls the
  service and shapes JSON. Every answer is committed before the response is sent, so a
  reload, a browser crash or a server restart loses nothing.
- Errors map by class, never by message: a ``BalsegError`` becomes its ``http_status``
  (``NotFoundError`` 404, ``ConflictError`` 409, ``ForbiddenError`` 403,
  ``InvalidValueError`` 422, ``DamagedDatabaseError`` 503). Messages that leave the server
  carry no absolute path of the server's file system and nothing that cannot be encoded.
- No request yields a 5xx for its content: a body that is not valid JSON, holds ``NaN``,
  ``Infinity``, ``1e400``, lone surrogates or raw invalid UTF-8 is a 422 whose message
  names the field and never echoes the input (FastAPI's default handler echoes it and then
  fails to encode it).
- Nothing reaches the file system from a request except through
  ``RunImages.image_path`` with an image id the label store knows.
- ``guard.Guard`` checks token or loopback Host, cross-site writes and body size first.
- The write-ahead log is checkpointed into ``labels.sqlite`` periodically and at shutdown
  (uvicorn turns SIGTERM and SIGINT into a shutdown), so a copy of that one file holds every
  acknowledged answer.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shlex
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt

from balseg.annotate.guard import Guard, is_loopback
from balseg.annotate.service import (
    AnnotationService,
    check_annotator,
    parse_keys,
)
from balseg.errors import BalsegError, LabelStoreError
from balseg.labels.store import Query as StoreQuery

__all__ = ["create_app", "is_loopback", "parse_keys"]

log = logging.getLogger("balseg.annotate")

STATIC_DIR = Path(__file__).with_name("static")
MAX_BODY_BYTES = 64 * 1024
CHECKPOINT_INTERVAL_S = 30.0
_BROWSER_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                        ".gif": "image/gif", ".webp": "image/webp", ".bmp": "image/bmp"}
_MAX_ID = 2**62
_MAX_MESSAGE = 2000
# an absolute path of two or more parts, not inside a URL: '/srv/run/x.png' -> 'x.png'
_ABS_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"]+/)+([^\s/'\"]*)")

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
    review: StrictBool = False
    accepted: StrictBool = False  # took the model's suggestion (then label is its class)


class SkipIn(_Body):
    annotator: Annotator
    query_id: QueryId


class UndoIn(_Body):
    annotator: Annotator
    current_query_id: QueryId | None = None


def safe_text(text: str) -> str:
    """Text that encodes as UTF-8: lone surrogates become ``\\udXXX`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class PublicMessages:
    """Error text as it may leave the server: known folders by name, other absolute paths
    by their last part, always encodable, bounded in length."""

    def __init__(self, folders: dict[str, Path]) -> None:
        pairs: dict[str, str] = {}
        for name, folder in folders.items():
            for form in {str(folder), str(folder.absolute()), os.path.realpath(folder)}:
                if len(form) > 1:
                    pairs.setdefault(form, name)
        self._pairs = sorted(pairs.items(), key=lambda kv: -len(kv[0]))

    def __call__(self, message: str) -> str:
        for prefix, name in self._pairs:
            message = message.replace(prefix, name)
        message = _ABS_PATH.sub(lambda m: m.group(1) or "...", message)
        return safe_text(message)[:_MAX_MESSAGE]


def validation_message(errors: Any) -> str:
    """'body.label: Input should be a valid integer; ...': where and what, never the input."""
    parts = []
    for err in list(errors)[:5]:
        loc = ".".join(safe_text(str(p))[:64] for p in err.get("loc", ()))
        msg = safe_text(str(err.get("msg", "invalid value")))[:300]
        ctx = err.get("ctx") or {}
        if err.get("type") == "json_invalid" and isinstance(ctx.get("error"), str):
            msg = f"{msg}: {safe_text(ctx['error'])[:200]}"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


def _checkpointer(svc: AnnotationService, stop: threading.Event, interval_s: float) -> None:
    """Copy the write-ahead log into labels.sqlite every ``interval_s`` seconds."""
    while not stop.wait(interval_s):
        try:
            svc.store.checkpoint()
        except LabelStoreError as err:
            log.warning("periodic checkpoint of the label database failed: %s", err)


def create_app(
    run_dir: str | Path,
    *,
    token: str | None = None,
    lease_ttl_s: float = 120.0,
    continue_run: bool = False,
    keys: str | list[str] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
    check_store: bool = False,
) -> FastAPI:
    """The FastAPI app for one run directory (see docs/annotate.md for the endpoints).

    ``token``: when set, every request must carry it (header, ``?token=`` or the cookie the
    server sets after a valid ``?token=``). Without one, only loopback Host headers pass.
    The OpenAPI schema is not served; ``app.openapi()`` builds it (the API fuzz test uses
    it).
    """
    svc = AnnotationService(run_dir, lease_ttl_s=lease_ttl_s, continue_run=continue_run,
                            keys=keys, check_store=check_store)
    public = PublicMessages({"RUN_DIR": svc.run_dir, "DATA_ROOT": svc.images.root,
                             "HOME": Path.home(), "CWD": Path.cwd()})

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        worker = threading.Thread(target=_checkpointer, args=(svc, stop, checkpoint_interval_s),
                                  name="balseg-checkpoint", daemon=True)
        worker.start()
        try:
            yield
        finally:
            stop.set()
            worker.join()
            try:
                svc.store.checkpoint(truncate=True)
            except LabelStoreError as err:
                log.warning("final checkpoint of the label database failed: %s", err)

    app = FastAPI(title="balseg annotate", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.annotation = svc

    @app.exception_handler(BalsegError)
    async def _on_balseg_error(_req: Any, err: BalsegError) -> JSONResponse:
        return JSONResponse({"detail": public(str(err))}, status_code=err.http_status)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(_req: Any, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_message(err.errors())}, status_code=422)

    def query_json(q: StoreQuery) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": q.id, "image_id": q.image_id, "y": q.y, "x": q.x, "cycle": q.cycle,
            "image_url": "/api/images/" + quote(q.image_id, safe=""),
            "width": None, "height": None,
            "suggestion": svc.suggestion(q.id),  # the model's guess: a class id or null
        }
        size = svc.image_size(q.image_id)
        if isinstance(size, str):
            out["image_error"] = public(size)
        else:
            out["width"], out["height"] = size
        return out

    def shown(q: StoreQuery | None, who: str, note: str | None = None) -> dict[str, Any]:
        """A query to show, with the progress of its image (or none)."""
        return {"query": None if q is None else query_json(q), "note": note,
                "progress": svc.progress(who, query=q)}

    @app.get("/", response_class=HTMLResponse)
    def index() -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-store"})

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        images = svc.images
        return {
            "run": svc.run_dir.resolve().name,
            "classes": [
                {"id": i, "name": n,
                 "color": "#{:02x}{:02x}{:02x}".format(*images.palette[i]),
                 "key": svc.keys[i]}
                for i, n in enumerate(images.class_names)
            ],
            "keys": {"unknown": "u", "skip": "s", "undo": ["Backspace", "z"],
                     "accept": ["Enter", " "], "darker": "[", "brighter": "]",
                     "stretch": "\\"},
            "lease_ttl_s": svc.lease_ttl_s,
            "continue_run": svc.continue_run,
            # what picks the answers up, with this run's path as it was typed; a server
            # that others reach (a token) names only the folder, never a server path
            "continue_command": "balseg run " + shlex.quote(
                str(svc.run_dir) if token is None else svc.run_dir.resolve().name),
        }

    @app.get("/api/progress")
    def progress(annotator: Annotated[Annotator, Query()],
                 image_id: Annotated[str | None, Query(max_length=1024)] = None
                 ) -> dict[str, Any]:
        return svc.progress(annotator, image_id=image_id)

    @app.post("/api/next")
    def next_query(body: WhoIn) -> dict[str, Any]:
        q, note = svc.next_for(body.annotator)
        return shown(q, body.annotator, note)

    @app.post("/api/answer")
    def answer(body: AnswerIn) -> dict[str, Any]:
        done = svc.answer(body.annotator, body.query_id, body.label, review=body.review,
                          accepted=body.accepted)
        return {"answer_id": done.answer_id, "query_id": done.query.id, "label": done.label,
                "conflict": done.conflict,
                "progress": svc.progress(body.annotator, query=done.query)}

    @app.post("/api/skip")
    def skip(body: SkipIn) -> dict[str, Any]:
        q, note = svc.skip(body.annotator, body.query_id)
        return shown(q, body.annotator, note)

    @app.post("/api/undo")
    def undo(body: UndoIn) -> dict[str, Any]:
        done = svc.undo(body.annotator, body.current_query_id)
        a = done.retracted
        return {"retracted": {"answer_id": a.id, "query_id": a.query_id, "label": a.label},
                "query": query_json(done.query),
                "progress": svc.progress(body.annotator, query=done.query)}

    @app.get("/api/review/next")
    def review_next(annotator: Annotated[Annotator, Query()],
                    after: Annotated[int, Query(ge=0, le=_MAX_ID)] = 0) -> dict[str, Any]:
        """Answered queries this person has not answered, for a deliberate second opinion."""
        q = svc.review_next(annotator, after)
        return {"query": None if q is None else query_json(q),
                "progress": svc.progress(annotator, query=q)}

    @app.get("/api/conflicts")
    def conflicts() -> dict[str, Any]:
        return {"conflicts": [
            {"query": {"id": q.id, "image_id": q.image_id, "y": q.y, "x": q.x},
             "answers": [{"annotator": a.annotator, "label": a.label, "source": a.source,
                          "answered_at": a.answered_at} for a in answers]}
            for q, answers in svc.conflicts()]}

    @app.get("/api/queries/{query_id}")
    def get_query(query_id: Annotated[int, PathParam(ge=1, le=_MAX_ID)]) -> dict[str, Any]:
        q, n_answers, holder = svc.query_detail(query_id)
        return {"query": query_json(q), "answers": n_answers, "lease_holder": holder}

    def image_response(image_id: str) -> Response:
        path = svc.image_file(image_id)
        headers = {"Cache-Control": "private, max-age=3600"}
        media = _BROWSER_IMAGE_TYPES.get(path.suffix.lower())
        if media is not None:
            return FileResponse(path, media_type=media, headers=headers)
        from PIL import Image

        try:
            with Image.open(path) as im:
                buf = io.BytesIO()
                im.convert("RGB").save(buf, format="PNG")
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise HTTPException(404, public(f"image of {image_id!r} cannot be read: {err}")
                                ) from None
        return Response(buf.getvalue(), media_type="image/png", headers=headers)

    @app.get("/api/queries/{query_id}/image")
    def query_image(query_id: Annotated[int, PathParam(ge=1, le=_MAX_ID)]) -> Response:
        q, _, _ = svc.query_detail(query_id)
        return image_response(q.image_id)

    @app.get("/api/images/{image_id:path}")
    def image(image_id: str) -> Response:
        if len(image_id) > 1024:
            raise HTTPException(414, "image id too long")
        return image_response(image_id)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(Guard, token=token, max_body=max_body_bytes)
    return app
