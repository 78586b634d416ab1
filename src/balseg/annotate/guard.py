"""The annotation server's gate: every request passes it before any route runs.

What it checks, in order:

1. **Who may talk to the server.** Without a token the server only listens on loopback,
   and only loopback ``Host`` headers pass, so a web page cannot reach it through DNS
   rebinding. With a token every request must carry it (``X-Balseg-Token``, ``Bearer``,
   ``?token=``, or the cookie the server sets after a valid ``?token=``).
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
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any
from urllib.parse import parse_qs

from fastapi.responses import JSONResponse

TOKEN_HEADER = "x-balseg-token"
TOKEN_COOKIE = "balseg_token"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
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


def _host_name(host: str) -> str:
    """The name part of a Host header ('[::1]:8000' -> '[::1]', 'a:80' -> 'a')."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0]


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


class Guard:
    """ASGI middleware: token or loopback Host, cross-site writes, body size."""

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

    @staticmethod
    def cross_site_problem(scope: dict[str, Any], headers: dict[str, str]) -> tuple[int, str
                                                                                   ] | None:
        """(status, message) when a write must be refused as a possible CSRF, else None."""
        if scope.get("method", "GET") in SAFE_METHODS:
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
                await self._reply(scope, send, 403, "this Host is refused: the server is"
                                                    " loopback-only")
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
        problem = self.cross_site_problem(scope, headers)
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
