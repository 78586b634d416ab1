"""Running the annotation app with uvicorn, with the token rule applied.

Why here and not in the CLI: the rule "loopback needs no token, any other address does" must
hold for every way of starting the server, so ``serve`` enforces it itself.

Which link to print: bound to one address, the link names it. Bound to every address
(``0.0.0.0`` or ``::``), a ``127.0.0.1`` link works on this machine only, so the links for
other machines name this machine's host name and its non-loopback addresses.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import socket
from pathlib import Path

from balseg.annotate.guard import is_loopback
from balseg.errors import InvalidValueError

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "", "[::]"})


def decide_token(host: str, token: str | None) -> str | None:
    """The token the server will require: the given one, a fresh one off loopback, or none."""
    if token is not None:
        if len(token) < 8:
            raise InvalidValueError("a token must be at least 8 characters")
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(24)


def _url(host: str, port: int, token: str | None) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/" + (f"?token={token}" if token else "")


def page_url(host: str, port: int, token: str | None) -> str:
    """The link that works on this machine."""
    return _url("127.0.0.1" if host in WILDCARD_HOSTS else host, port, token)


def machine_addresses() -> list[str]:
    """This machine's host name, then its non-loopback IP addresses (no packet is sent)."""
    names: list[str] = []
    hostname = socket.gethostname()
    if hostname and not is_loopback(hostname):
        names.append(hostname)
    found: list[str] = []
    with contextlib.suppress(OSError):
        for *_, sockaddr in socket.getaddrinfo(hostname, None, type=socket.SOCK_STREAM):
            found.append(str(sockaddr[0]))
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        # connecting a UDP socket only picks the outgoing interface; nothing is sent
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            found.append(str(s.getsockname()[0]))
    for addr in found:
        try:
            ip = ipaddress.ip_address(addr.split("%")[0])
        except ValueError:
            continue
        if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
            continue
        if str(ip) not in names:
            names.append(str(ip))
    return names


def page_urls(host: str, port: int, token: str | None) -> list[tuple[str, str]]:
    """(where it works, link) for every link worth printing."""
    if host not in WILDCARD_HOSTS:
        return [("", page_url(host, port, token))]
    out = [("on this machine", page_url(host, port, token))]
    ipv4_only = host == "0.0.0.0"
    for name in machine_addresses():
        if ipv4_only and ":" in name:
            continue
        out.append(("from other machines", _url(name, port, token)))
    return out


def check_port(host: str, port: int) -> None:
    """Refuse a port another program holds before the app is built (uvicorn would exit)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as err:
            raise InvalidValueError(f"cannot listen on {_url(host, port, None)}: {err.strerror}"
                                    " (another server there? pick another --port or"
                                    " --host)") from None


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    *,
    keys: str | None = None,
    lease_ttl_s: float = 120.0,
    continue_run: bool = False,
    checkpoint_interval_s: float | None = None,
) -> None:
    """Serve the page for ``run_dir`` until interrupted (Ctrl-C or SIGTERM); prints the links.

    The label database is checked page by page first, so a damaged file is reported before
    anyone starts answering; at exit its write-ahead log is checkpointed into it.
    """
    import uvicorn

    from balseg.annotate.app import CHECKPOINT_INTERVAL_S, create_app

    token = decide_token(host, token)
    check_port(host, port)
    app = create_app(run_dir, token=token, lease_ttl_s=lease_ttl_s,
                     continue_run=continue_run, keys=keys, check_store=True,
                     checkpoint_interval_s=checkpoint_interval_s or CHECKPOINT_INTERVAL_S)
    try:
        links = page_urls(host, port, token)
        if len(links) == 1:
            print(f"balseg annotate: open {links[0][1]}", flush=True)
        else:
            print(f"balseg annotate: open {links[0][1]} ({links[0][0]})", flush=True)
            for where, link in links[1:]:
                print(f"  {where}: {link}", flush=True)
        if token is not None and not is_loopback(host):
            print("  the token is required on every request; share the URL only with"
                  " annotators", flush=True)
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        app.state.annotation.close()
