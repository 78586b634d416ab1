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
  ``Infinity``, ``1e400``, lone surrogates, raw invalid UTF-8, a number of thousands of
  digits or nesting a thousand levels deep is a 422 whose message names the field and never
  echoes the input (FastAPI's default handler echoes it and then fails to encode it, and
  answers the last three with a 400). A 5xx is the server's own state: 503 for a damaged or
  unusable database, 507 for a full disk (``balseg.annotate.storage``).
- The API describes itself: ``/openapi.json`` (behind the same guard) lists every status
  each route returns, with the error body as it is (``{"detail": "one line"}``), the
  response bodies, the images as images, and the constraints the server checks (an
  annotator name's pattern), so a schema-driven client or fuzzer sees the server as it is.
- Nothing reaches the file system from a request except through
  ``RunImages.image_path`` with an image id the label store knows.
- ``guard.Guard`` checks token or loopback Host, cross-site writes and body size first.
- The write-ahead log is checkpointed into ``labels.sqlite`` periodically and at shutdown
  (uvicorn turns SIGTERM and SIGINT into a shutdown), so a copy of that one file holds every
  acknowledged answer; ``balseg.annotate.storage`` keeps that going through a full disk.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shlex
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from balseg.annotate import api_schema as doc
from balseg.annotate.guard import Guard, is_loopback
from balseg.annotate.service import (
    ANNOTATOR_PATTERN,
    MAX_ANNOTATOR,
    AnnotationService,
    parse_keys,
)
from balseg.annotate.storage import Storage
from balseg.errors import BalsegError, DiskFullError
from balseg.labels.store import Query as StoreQuery

__all__ = ["create_app", "is_loopback", "parse_keys"]

log = logging.getLogger("balseg.annotate")

STATIC_DIR = Path(__file__).with_name("static")
MAX_BODY_BYTES = 64 * 1024
CHECKPOINT_INTERVAL_S = 30.0
_BROWSER_IMAGE_TYPES = doc.BROWSER_IMAGE_TYPES
_MAX_ID = 2**53 - 1  # JavaScript's largest exact integer: the page and any JSON reader agree
_MAX_MESSAGE = 2000
# an absolute path of two or more parts, not inside a URL: '/srv/run/x.png' -> 'x.png'
_ABS_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"]+/)+([^\s/'\"]*)")

# the schema's constraint is the server's whole check (service.check_annotator agrees)
Annotator = Annotated[str, Field(min_length=1, max_length=MAX_ANNOTATOR,
                                 pattern=ANNOTATOR_PATTERN)]


def _whole_number(value: object) -> object:
    """JSON Schema's 'integer' is any number without a fraction (2.0 is one); strings and
    booleans stay refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


QueryId = Annotated[StrictInt, Field(ge=1, le=_MAX_ID), BeforeValidator(_whole_number)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WhoIn(_Body):
    annotator: Annotator


class AnswerIn(_Body):
    annotator: Annotator
    query_id: QueryId
    label: Annotated[StrictInt, Field(ge=-_MAX_ID, le=_MAX_ID),
                     BeforeValidator(_whole_number)] | None
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


def one_value_each(request: Request) -> None:
    """A query parameter of a route given twice is refused (422): FastAPI would take the last
    value, so ``?after=[]&after=0`` would pass as ``after=0`` although the schema says one
    integer."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    names = {p.alias for p in getattr(dependant, "query_params", ())}
    counts: dict[str, int] = {}
    for key, _ in request.query_params.multi_items():
        if key in names:
            counts[key] = counts.get(key, 0) + 1
    repeated = sorted(k for k, n in counts.items() if n > 1)
    if repeated:
        raise RequestValidationError([{"type": "repeated", "loc": ("query", repeated[0]),
                                       "msg": "given more than once", "input": None}])


def body_parse_message(err: BaseException) -> str | None:
    """Why a JSON body could not be parsed, for the errors FastAPI turns into a 400
    (invalid UTF-8, an integer of thousands of digits, nesting too deep); None for others."""
    if isinstance(err, UnicodeDecodeError):
        return f"body: not valid UTF-8 (byte {err.start})"
    if isinstance(err, RecursionError):
        return "body: JSON nested too deeply"
    if isinstance(err, ValueError):  # int('9' * 5000): Python's digit limit
        return "body: a number with too many digits"
    return None


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
    The OpenAPI schema is served at ``/openapi.json``, behind the same guard.
    """
    svc = AnnotationService(run_dir, lease_ttl_s=lease_ttl_s, continue_run=continue_run,
                            keys=keys, check_store=check_store)
    public = PublicMessages({"RUN_DIR": svc.run_dir, "DATA_ROOT": svc.images.root,
                             "HOME": Path.home(), "CWD": Path.cwd()})
    storage = Storage(svc.store, checkpoint_interval_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        storage.start()
        try:
            yield
        finally:
            storage.stop(run_dir_hint=str(svc.run_dir))

    app = FastAPI(title="balseg annotate", version=doc.api_version(),
                  description=doc.DESCRIPTION, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", lifespan=lifespan,
                  dependencies=[Depends(one_value_each)])
    app.state.annotation = svc
    app.state.storage = storage
    guarded = doc.Responses(token=token is not None)

    @app.exception_handler(BalsegError)
    async def _on_balseg_error(_req: Any, err: BalsegError) -> JSONResponse:
        detail = public(str(err))
        if isinstance(err, DiskFullError):
            storage.failed(err, "write")
            detail = public(f"the server's disk is full, so this was not saved; it works again"
                            f" once space is freed on the server, no restart needed ({err})")
        return JSONResponse({"detail": detail}, status_code=err.http_status)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(_req: Any, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_message(err.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(req: Any, err: StarletteHTTPException) -> Response:
        why = body_parse_message(err.__cause__) if err.status_code == 400 else None
        if why is not None:  # what FastAPI calls 'error parsing the body': a bad body, 422
            return JSONResponse({"detail": why}, status_code=422)
        return await http_exception_handler(req, err)

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

    @app.get("/", response_class=HTMLResponse, responses=guarded())
    def index() -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-store"})

    @app.get("/api/health", response_model=None, responses=guarded(model=doc.HealthOut))
    def health() -> dict[str, Any]:
        problem = storage.problem
        return {"ok": True, "problem": None if problem is None else public(problem)}

    @app.get("/api/info", response_model=None, responses=guarded(model=doc.InfoOut))
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

    @app.get("/api/progress", response_model=None,
             responses=guarded(422, 503, model=doc.ProgressOut))
    def progress(annotator: Annotated[Annotator, Query()],
                 image_id: Annotated[str | None, Query(max_length=1024)] = None
                 ) -> dict[str, Any]:
        return svc.progress(annotator, image_id=image_id)

    @app.post("/api/next", response_model=None,
              responses=guarded(422, 503, 507, model=doc.ShownOut, write=True))
    def next_query(body: WhoIn) -> dict[str, Any]:
        q, note = svc.next_for(body.annotator)
        storage.wrote()
        return shown(q, body.annotator, note)

    @app.post("/api/answer", response_model=None,
              responses=guarded(404, 409, 422, 503, 507, model=doc.AnsweredOut, write=True))
    def answer(body: AnswerIn) -> dict[str, Any]:
        done = svc.answer(body.annotator, body.query_id, body.label, review=body.review,
                          accepted=body.accepted)
        storage.wrote()
        return {"answer_id": done.answer_id, "query_id": done.query.id, "label": done.label,
                "conflict": done.conflict,
                "progress": svc.progress(body.annotator, query=done.query)}

    @app.post("/api/skip", response_model=None,
              responses=guarded(404, 422, 503, 507, model=doc.ShownOut, write=True))
    def skip(body: SkipIn) -> dict[str, Any]:
        q, note = svc.skip(body.annotator, body.query_id)
        storage.wrote()
        return shown(q, body.annotator, note)

    @app.post("/api/undo", response_model=None,
              responses=guarded(409, 422, 503, 507, model=doc.UndoneOut, write=True))
    def undo(body: UndoIn) -> dict[str, Any]:
        done = svc.undo(body.annotator, body.current_query_id)
        storage.wrote()
        a = done.retracted
        return {"retracted": {"answer_id": a.id, "query_id": a.query_id, "label": a.label},
                "query": query_json(done.query),
                "progress": svc.progress(body.annotator, query=done.query)}

    @app.get("/api/review/next", response_model=None,
             responses=guarded(422, 503, model=doc.ReviewOut))
    def review_next(annotator: Annotated[Annotator, Query()],
                    after: Annotated[int, Query(ge=0, le=_MAX_ID)] = 0) -> dict[str, Any]:
        """Answered queries this person has not answered, for a deliberate second opinion."""
        q = svc.review_next(annotator, after)
        return {"query": None if q is None else query_json(q),
                "progress": svc.progress(annotator, query=q)}

    @app.get("/api/conflicts", response_model=None,
             responses=guarded(503, model=doc.ConflictsOut))
    def conflicts() -> dict[str, Any]:
        return {"conflicts": [
            {"query": {"id": q.id, "image_id": q.image_id, "y": q.y, "x": q.x},
             "answers": [{"annotator": a.annotator, "label": a.label, "source": a.source,
                          "answered_at": a.answered_at} for a in answers]}
            for q, answers in svc.conflicts()]}

    @app.get("/api/queries/{query_id}", response_model=None,
             responses=guarded(404, 422, 503, model=doc.QueryDetailOut))
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

    image_responses = guarded(403, 404, 422, 503, image=True)

    @app.get("/api/queries/{query_id}/image", response_class=Response,
             responses=image_responses)
    def query_image(query_id: Annotated[int, PathParam(ge=1, le=_MAX_ID)]) -> Response:
        q, _, _ = svc.query_detail(query_id)
        return image_response(q.image_id)

    @app.get("/api/images/{image_id:path}", response_class=Response,
             responses=guarded(403, 404, 414, 503, image=True))
    def image(image_id: str) -> Response:
        if len(image_id) > 1024:
            raise HTTPException(414, "image id too long")
        return image_response(image_id)

    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:  # cached by FastAPI: completed once, in place
            doc.complete(build_schema(), token=token is not None,
                         num_classes=svc.num_classes)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(Guard, token=token, max_body=max_body_bytes, routes=app.router.routes)
    return app
