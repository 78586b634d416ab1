"""A small client of Label Studio's REST API (plain httpx, no SDK).

Why not ``label-studio-sdk``: balseg needs a dozen endpoints; the SDK would add a large
dependency tree (and pins) to every install for them. The endpoints used are those of
Label Studio 1.23 (tested against a real server, tests/labelstudio).

Tokens: Label Studio has two kinds. A *personal access token* (the default since 1.17,
shown in Account & Settings) is a JWT refresh token: it is exchanged at
``/api/token/refresh/`` for a short-lived access token, sent as ``Bearer``, and exchanged
again when it expires. A *legacy token* (40 hex characters, or what ``label-studio start
--user-token`` set) is sent as ``Token ...``. The kind is told from the token's shape.

Every failure is a ``LabelStudioError`` with one line naming the server's URL: unreachable,
a refused token, or an answer Label Studio refused (its status and ``detail``). The token
never appears in a message.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from balseg.errors import ConfigError, LabelStudioError

PAGE_SIZE = 100
TIMEOUT_S = 30.0
_MAX_DETAIL = 300


def check_url(url: str) -> str:
    """``url`` without a trailing '/', or a ConfigError: it must be http(s)://host[:port]."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"oracle.url must be the address of Label Studio, like"
                          f" http://localhost:8080, got {url!r}")
    return url.strip().rstrip("/")


def is_jwt(token: str) -> bool:
    """A personal access token (JWT: three base64url parts) rather than a legacy token."""
    parts = token.split(".")
    return len(parts) == 3 and all(parts) and token.startswith("eyJ")


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        text = response.text
    else:
        text = body.get("detail") or body.get("validation_errors") or body if isinstance(
            body, dict) else body
        text = text if isinstance(text, str) else json.dumps(text)
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


class LabelStudio:
    """One Label Studio server and one user's token; thread-safe (one httpx client)."""

    def __init__(self, url: str, token: str, *, timeout: float = TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = check_url(url)
        if not token or not token.strip():
            raise ConfigError("the Label Studio API token is empty")
        self._token = token.strip()
        self._access: str | None = None
        self._lock = threading.Lock()
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise LabelStudioError(f"Label Studio at {self.url} did not answer within"
                                   f" {self._http.timeout.read:g} s ({method} {path})") from None
        except httpx.TransportError as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            raise LabelStudioError(f"cannot reach Label Studio at {self.url} ({reason}): is it"
                                   " running there? (oracle.url)") from None

    def _refused(self, response: httpx.Response) -> LabelStudioError:
        kind = "personal access token" if is_jwt(self._token) else "legacy API token"
        return LabelStudioError(
            f"Label Studio at {self.url} refused the {kind} (HTTP {response.status_code}:"
            f" {_detail(response)}): set LABEL_STUDIO_API_KEY (or oracle.token_file) to a"
            " token from Account & Settings of that server")

    def _headers(self, fresh: bool = False) -> dict[str, str]:
        if not is_jwt(self._token):
            return {"Authorization": f"Token {self._token}"}
        with self._lock:
            if self._access is None or fresh:
                r = self._send("POST", "/api/token/refresh/", json={"refresh": self._token})
                if r.status_code >= 400:
                    raise self._refused(r)
                try:
                    self._access = str(r.json()["access"])
                except (ValueError, KeyError, TypeError):
                    raise LabelStudioError(f"Label Studio at {self.url} gave no access token"
                                           " for the personal access token") from None
            return {"Authorization": f"Bearer {self._access}"}

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        r = self._send(method, path, headers=self._headers(), **kwargs)
        if r.status_code == 401 and is_jwt(self._token):  # the access token expired
            r = self._send(method, path, headers=self._headers(fresh=True), **kwargs)
        if r.status_code == 401:
            raise self._refused(r)
        return r

    def _json(self, r: httpx.Response, method: str, path: str) -> Any:
        if r.status_code >= 400:
            raise LabelStudioError(f"Label Studio at {self.url} refused {method} {path}"
                                   f" (HTTP {r.status_code}: {_detail(r)})")
        if r.status_code == 204 or not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            raise LabelStudioError(f"Label Studio at {self.url} answered {method} {path} with"
                                   " something that is not JSON: is oracle.url the address of"
                                   " Label Studio?") from None

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """JSON of a successful answer; a LabelStudioError otherwise."""
        return self._json(self._call(method, path, **kwargs), method, path)

    def get_bytes(self, path: str) -> bytes:
        """A file Label Studio serves (``/data/upload/...``), with the token."""
        r = self._call("GET", path)
        if r.status_code >= 400:
            raise LabelStudioError(f"Label Studio at {self.url}: GET {path} failed (HTTP"
                                   f" {r.status_code})")
        return r.content

    # -- the endpoints balseg uses --------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        """The token's user; the first call of every session (checks URL and token)."""
        return self.request("GET", "/api/current-user/whoami")

    def project(self, project_id: int) -> dict[str, Any] | None:
        path = f"/api/projects/{project_id}"
        r = self._call("GET", path)
        return None if r.status_code == 404 else self._json(r, "GET", path)

    def projects_titled(self, title: str) -> list[dict[str, Any]]:
        found = self.request("GET", "/api/projects", params={"title": title,
                                                            "page_size": PAGE_SIZE})
        items = found.get("results", []) if isinstance(found, dict) else found
        return [p for p in items if p.get("title") == title]

    def create_project(self, **fields: Any) -> dict[str, Any]:
        return self.request("POST", "/api/projects", json=fields)

    def update_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        return self.request("PATCH", f"/api/projects/{project_id}", json=fields)

    def upload_file(self, project_id: int, name: str, data: bytes, mime: str) -> str:
        """Store a file in Label Studio (no task made); the URL tasks refer to it by."""
        done = self.request("POST", f"/api/projects/{project_id}/import",
                            params={"commit_to_project": "false"},
                            files={"file": (name, data, mime)})
        ids = (done or {}).get("file_upload_ids") or []
        if len(ids) != 1:
            raise LabelStudioError(f"Label Studio at {self.url} did not store {name!r}"
                                   f" (file_upload_ids: {ids})")
        listed = self.request("GET", f"/api/projects/{project_id}/file-uploads",
                              params={"ids": json.dumps(ids)})
        for item in listed or []:
            if item.get("id") == ids[0] and item.get("file"):
                return "/data/" + str(item["file"]).lstrip("/")
        raise LabelStudioError(f"Label Studio at {self.url} does not list the upload of"
                               f" {name!r}")

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Create tasks (with their predictions) in one request; their ids, in order."""
        done = self.request("POST", f"/api/projects/{project_id}/import",
                            params={"return_task_ids": "true"}, json=tasks)
        ids = (done or {}).get("task_ids") or []
        if len(ids) != len(tasks):
            raise LabelStudioError(f"Label Studio at {self.url} made {len(ids)} of"
                                   f" {len(tasks)} tasks in project {project_id}")
        return [int(i) for i in ids]

    def tasks(self, project_id: int) -> Iterator[dict[str, Any]]:
        """Every task of the project with its annotations, page by page."""
        page = 1
        seen = 0
        while True:
            got = self.request("GET", "/api/tasks", params={
                "project": project_id, "fields": "all", "page": page,
                "page_size": PAGE_SIZE})
            items = got.get("tasks", []) if isinstance(got, dict) else got
            yield from items
            seen += len(items)
            total = got.get("total", seen) if isinstance(got, dict) else seen
            if not items or seen >= total:
                return
            page += 1

    def users(self) -> dict[int, str]:
        """User id -> e-mail (or user name): who an annotation's ``completed_by`` is."""
        out = {}
        for u in self.request("GET", "/api/users") or []:
            name = u.get("email") or u.get("username") or f"user {u.get('id')}"
            out[int(u["id"])] = str(name)
        return out
