"""What the annotation API says about itself at ``/openapi.json``: response bodies, every
status each route returns, and how to authenticate.

Why a module of its own: the routes in ``balseg.annotate.app`` return plain dicts (cheap, and
what the page reads); the models here only describe those dicts, they never filter or
validate them. The fuzz tests (``tests/annotate/test_fuzz.py`` and
``tests/annotate/test_schema.py``) check every response against this description, so a
route that changes its body or its statuses without changing this module fails there.
Models allow extra properties: a new field is an addition, not a break.

Statuses: the guard (``balseg.annotate.guard``) answers before any route, so its statuses are
on every operation: 400 (a Content-Length that is not a number), 413 (a body over the
limit), 403 without a token (a Host that is not loopback) and for writes (another site),
401 with a token (none or a wrong one), 415 for writes (not JSON). Routes add their own:
404, 409, 414, 422; 503 when the label database is damaged or unusable and 507 when the disk
is full (``balseg.errors``). Every error body is ``{"detail": "one line"}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from balseg.annotate.guard import TOKEN_COOKIE, TOKEN_HEADER

TOKEN_HEADER_NAME = "X-Balseg-Token"  # as the docs spell it; any case works
assert TOKEN_HEADER_NAME.lower() == TOKEN_HEADER

BROWSER_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                       ".gif": "image/gif", ".webp": "image/webp", ".bmp": "image/bmp"}
"""Image files served as they are; any other format is converted to PNG."""

DESCRIPTION = (
    "The annotation page's API (docs/annotate.md). Every error is `{\"detail\": \"one line\"}`"
    " naming what was wrong, never echoing the input. Writes must be JSON"
    " (`Content-Type: application/json`); HEAD works on every GET route; methods a path does"
    " not list are 405. A full disk is 507: nothing was saved, and the same request succeeds"
    " once space is freed."
)

STATUS_TEXT = {
    400: "Malformed request: a Content-Length that is not a number, or dataset files the"
         " server cannot use",
    401: "No token, or a wrong one (header X-Balseg-Token, Authorization: Bearer, ?token= or"
         " the cookie the server sets after a valid ?token=)",
    403: "Refused: a Host header that is not loopback (a server without a token), a write"
         " from another site (Origin, Sec-Fetch-Site), or an image outside the dataset root",
    404: "No such query, image or file",
    409: "The request clashes with the current state (already answered, leased by another"
         " annotator, nothing to undo)",
    413: "Request body over the limit (64 KiB by default)",
    414: "Image id over 1024 characters",
    415: "A write that is not JSON (Content-Type: application/json)",
    422: "A parameter or body the schema refuses, or a value the run does not allow (a class"
         " id outside its classes)",
    503: "The label database is damaged or cannot be used right now (the message says how to"
         " recover)",
    507: "The server's disk is full: nothing was saved; the same request succeeds once space"
         " is freed",
}


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorOut(_Out):
    detail: str = Field(description="What was wrong, in one line")


class QueryOut(_Out):
    id: int
    image_id: str
    y: int
    x: int
    cycle: int
    image_url: str
    width: int | None
    height: int | None
    image_error: str | None = Field(None, description="Why the image cannot be shown (absent"
                                                      " when it can)")


class ImageProgressOut(_Out):
    image_id: str
    total: int
    open: int
    answered: int


class ContinueOut(_Out):
    enabled: bool
    state: str = Field(description="off, idle, running, finished or failed")
    cycle: int | None = None
    returncode: int | None = None
    started_at: str | None = None
    log: str | None = None


class ProgressOut(_Out):
    total: int
    answered: int
    open: int
    unknown: int
    conflicts: int
    cycle: int | None
    cycle_total: int | None = None
    cycle_open: int | None = None
    cycle_answered: int | None = None
    image: ImageProgressOut | None = None
    mine: int | None = None
    continue_: ContinueOut = Field(alias="continue")


class ShownOut(_Out):
    query: QueryOut | None
    note: str | None
    progress: ProgressOut


class AnsweredOut(_Out):
    answer_id: int
    query_id: int
    label: int | None
    conflict: bool
    progress: ProgressOut


class RetractedOut(_Out):
    answer_id: int
    query_id: int
    label: int | None


class UndoneOut(_Out):
    retracted: RetractedOut
    query: QueryOut
    progress: ProgressOut


class ReviewOut(_Out):
    query: QueryOut | None
    progress: ProgressOut


class ConflictQueryOut(_Out):
    id: int
    image_id: str
    y: int
    x: int


class ConflictAnswerOut(_Out):
    annotator: str | None
    label: int | None
    source: str
    answered_at: str


class ConflictOut(_Out):
    query: ConflictQueryOut
    answers: list[ConflictAnswerOut]


class ConflictsOut(_Out):
    conflicts: list[ConflictOut]


class QueryDetailOut(_Out):
    query: QueryOut
    answers: int
    lease_holder: str | None


class ClassOut(_Out):
    id: int
    name: str
    color: str
    key: str | None


class KeysOut(_Out):
    unknown: str
    skip: str
    undo: list[str]


class InfoOut(_Out):
    run: str
    classes: list[ClassOut]
    keys: KeysOut
    lease_ttl_s: float
    continue_run: bool


class HealthOut(_Out):
    ok: bool
    problem: str | None = Field(description="Why answers are refused right now (a full disk),"
                                            " or null")


IMAGE_CONTENT = {media: {"schema": {"type": "string", "format": "binary"}}
                 for media in ["image/png", *sorted(set(BROWSER_IMAGE_TYPES.values())
                                                    - {"image/png"})]}


class Responses:
    """``responses=`` for a route: its own statuses plus the guard's."""

    def __init__(self, *, token: bool) -> None:
        self.token = token

    def __call__(self, *codes: int, model: type[BaseModel] | None = None, write: bool = False,
                 image: bool = False) -> dict[int | str, dict[str, Any]]:
        guard = {400, 413} | ({401} if self.token else set())
        if write:
            guard |= {403, 415}
        elif not self.token:
            guard |= {403}
        out: dict[int | str, dict[str, Any]] = {}
        if model is not None:
            out[200] = {"model": model, "description": "Done"}
        if image:
            out[200] = {"description": "The image (PNG when its file is in another format)",
                        "content": IMAGE_CONTENT}
        for code in sorted(guard | set(codes)):
            out[code] = {"model": ErrorOut, "description": STATUS_TEXT[code]}
        return out


def complete(spec: dict[str, Any], *, token: bool, num_classes: int) -> None:
    """What FastAPI cannot say by itself, added to its schema in place: the run's class ids
    (``service.check_label`` refuses the others, 422), error bodies as JSON also on routes
    whose success is HTML or an image, and the token's security schemes."""
    spec["components"]["schemas"]["AnswerIn"]["properties"]["label"] = {
        "anyOf": [{"type": "integer", "minimum": 0, "maximum": num_classes - 1},
                  {"type": "null"}],
        "title": "Label", "description": "a class id of the run, or null for 'unknown'"}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    for methods in spec["paths"].values():
        for op in methods.values():
            for code, response in op["responses"].items():
                if code != "200":
                    response["content"] = error
    schemes, requirement = security(token)
    if schemes:
        spec["components"]["securitySchemes"] = schemes
        spec["security"] = requirement


def security(token: bool) -> tuple[dict[str, Any], list[dict[str, list[str]]]]:
    """(components.securitySchemes, the top-level security requirement) for a server that
    requires a token; nothing for one that does not."""
    if not token:
        return {}, []
    schemes = {
        "tokenHeader": {"type": "apiKey", "in": "header", "name": TOKEN_HEADER_NAME},
        "bearer": {"type": "http", "scheme": "bearer"},
        "tokenQuery": {"type": "apiKey", "in": "query", "name": "token"},
        "tokenCookie": {"type": "apiKey", "in": "cookie", "name": TOKEN_COOKIE},
    }
    return schemes, [{name: []} for name in schemes]


def api_version() -> str:
    from balseg import __version__

    return __version__
