"""Running the annotation app with uvicorn, with the token rule applied.

Why here and not in the CLI: the rule "loopback needs no token, any other address does" must
hold for every way of starting the server, so ``serve`` enforces it itself.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from balseg.annotate.app import create_app, is_loopback


def decide_token(host: str, token: str | None) -> str | None:
    """The token the server will require: the given one, a fresh one off loopback, or none."""
    if token is not None:
        if len(token) < 8:
            raise ValueError("a token must be at least 8 characters")
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(24)


def page_url(host: str, port: int, token: str | None) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    *,
    keys: str | None = None,
    lease_ttl_s: float = 120.0,
    continue_run: bool = False,
) -> None:
    """Serve the page for ``run_dir`` until interrupted; prints the URL to open."""
    import uvicorn

    token = decide_token(host, token)
    app = create_app(run_dir, token=token, lease_ttl_s=lease_ttl_s,
                     continue_run=continue_run, keys=keys)
    print(f"balseg annotate: open {page_url(host, port, token)}", flush=True)
    if token is not None and not is_loopback(host):
        print("  the token is required on every request; share the URL only with annotators",
              flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
