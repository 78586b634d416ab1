"""The annotation server's gate: every request passes it before any route runs.

What it checks, in order:

1. **Who may talk to the server.** Without a token the server only listens on loopback,
   and only loopback ``Host`` headers pass (``localhost``, ``::1`` and every address of
   127.0.0.0/8, the ones the server may be bound to), so a web page cannot reach it through
   DNS rebinding. With a token every request must carry it (``X-Balseg-Token``, ``Bearer``,
   ``?token=``, or the cookie the server sets after a valid ``?token=``). Websocket
   upgrades pass the same check, and one from another origin is refused (no route takes
   a websocket today; one added later is guarded from the start).
2. **Cross-site writes (CSRF).** A page on another origin can make a browser send a POST
   to ``http://127.0.0.1:PORT`` without any CORS preflight (a form, or ``fetch`` with
   ``mode: 'no-cors'`` and a text or Blob body). Whatever the FastAPI version, a write is
   refused unless it is JSON (``Content-Type: application/json``, which a browser only
   sends cross-origin after a preflight this server never answers), its ``Origin`` (when
   sent) is this server's own, and ``Sec-Fetch-Site`` (when sent) is ``same-origin`` or
   ``none``. Browsers send both headers on every cross-origin POST; scripts (curl, httpx)
   send neither and are not a CSRF vector.
3. **Body size.** Bodies are read up to the limit and replayed, so an oversized or chunked
   body never reaches a handler.

Methods: a write (POST, PUT, PATCH, DELETE) that a route takes is checked as above; one no
route takes, and any other method (TRACE, OPTIONS, ...), goes to the routes, which answer
404, or 405 on a known path. HEAD is answered as the GET it stands for, without the body.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

from fastapi.responses import JSONResponse
from starlette.routing import Match

TOKEN_HEADER = "x-balseg-token"
TOKEN_COOKIE = "balseg_token"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
WS_POLICY_VIOLATION = 1008
SAME_ORIGIN_FETCH_SITES = frozenset({"same-origin", "none"})
JSON_TYPE = "application/json"


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _no_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def _headers_only(send: Any) -> Any:
    """``send`` for a HEAD request: the response's start (with its Content-Length), then an
    empty body."""
    async def send_head(msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.body":
            if msg.get("more_body", False):
                return
            msg = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(msg)

    return send_head


def _host_name(host: str) -> str:
    """The name part of a Host header ('[::1]:8000' -> '[::1]', 'a:80' -> 'a')."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0]


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a JSON body may have (balseg's bodies have 1)."""
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(body: bytes) -> int:
    """How deep arrays and objects nest in ``body`` (brackets inside strings ignored)."""
    depth = deepest = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub(b'""', body)):
        depth += 1 if m.group() in (b"[", b"{") else -1
        deepest = max(deepest, depth)
    return deepest


class Guard:
    """ASGI middleware: token or loopback Host, cross-site writes, body size."""

    def __init__(self, app: Any, token: str | None, max_body: int,
                 routes: Sequence[Any] | None = None) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.routes = routes

    def _has_handler(self, scope: dict[str, Any]) -> bool:
        """Whether a route takes this method on this path (else routing answers 404 or 405
        and no handler runs: nothing to protect from a cross-site write)."""
        if self.routes is None:
            return True
        return any(route.matches(scope)[0] is Match.FULL for route in self.routes)

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

    @staticmethod
    def cross_site_problem(scope: dict[str, Any], headers: dict[str, str]) -> tuple[int, str
                                                                                   ] | None:
        """(status, message) when a write must be refused as a possible CSRF, else None."""
        if scope.get("method", "GET") not in WRITE_METHODS:
            return None
        if media_type(headers.get("content-type", "")) != JSON_TYPE:
            return 415, f"write requests must send JSON (Content-Type: {JSON_TYPE})"
        site = headers.get("sec-fetch-site")
        if site is not None and site.strip().lower() not in SAME_ORIGIN_FETCH_SITES:
            return 403, "request from another site refused (Sec-Fetch-Site)"
        origin = headers.get("origin")
        if origin is not None:
            own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
            if origin.strip().lower() != own:
                return 403, "request from another origin refused (Origin is not this server)"
        return None

    def _who_problem(self, scope: dict[str, Any], headers: dict[str, str]
                     ) -> tuple[int, str, bool]:
        """(status, message, set the cookie): status 0 when the caller may talk to us."""
        if self.token is None:
            if not is_loopback(_host_name(headers.get("host", ""))):
                return 403, "this Host is refused: the server is loopback-only", False
            return 0, "", False
        ok, set_cookie = self._token_ok(scope, headers)
        if not ok:
            return 401, ("a valid token is required (?token=... or the X-Balseg-Token"
                         " header)"), False
        return 0, "", set_cookie

    async def _websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        status, message, _ = self._who_problem(scope, headers)
        origin = headers.get("origin")
        if status == 0 and origin is not None:
            scheme = "https" if scope.get("scheme") == "wss" else "http"
            if origin.strip().lower() != f"{scheme}://{headers.get('host', '')}".lower():
                status, message = 403, "websocket from another origin refused"
        if status == 0:
            await self.app(scope, receive, send)
            return
        msg = await receive()  # websocket.connect; closing before accepting is an HTTP 403
        if msg.get("type") == "websocket.connect":
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION,
                        "reason": message[:120]})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        status, message, set_cookie = self._who_problem(scope, headers)
        if status:
            await self._reply(scope, send, status, message)
            return
        if scope.get("method") == "HEAD":  # the GET it stands for, without the body
            scope, send = {**scope, "method": "GET"}, _headers_only(send)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                await self._reply(scope, send, 400, "bad Content-Length")
                return
            if int(length) > self.max_body:
                await self._reply(scope, send, 413, f"request body over {self.max_body} bytes")
                return
        problem = self.cross_site_problem(scope, headers) if self._has_handler(scope) else None
        if problem is not None:
            await self._reply(scope, send, *problem)
            return
        if scope.get("method") not in SAFE_METHODS:
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
            if (self._has_handler(scope) and "json" in headers.get("content-type", "")
                    and json_depth(body) > MAX_JSON_DEPTH):  # the interpreter's recursion
                await self._reply(scope, send, 422,  # limit varies; the server's does not
                                  f"body: JSON nested too deeply (over {MAX_JSON_DEPTH} levels)")
                return
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
