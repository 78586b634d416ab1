"""A long schemathesis run against a live annotation server: 0 x 5xx, 0 schema mismatches.

The same checks as ``tests/annotate/test_schema.py`` (schemathesis's command line with
``--checks all``: no 5xx, statuses, bodies, headers and content types as documented, data
the schema refuses is refused and data it allows is not, 405s with ``Allow``, the token
enforced), for as long as ``--minutes`` allows, instead of a bounded budget. The server is
uvicorn in this process, on a run directory of ``--queries`` queries (half answered, see
``bench_annotate.build_run``), wrapped in a counter: the request count and the statuses are
what the server answered, not what the client meant to send. At the end the label
database's counters are checked against a count from scratch. The run directory lies in
/dev/shm where there is one (no fsync waits: this is about the API, not the disk).

    .venv/bin/python benchmarks/bench_api_fuzz.py --minutes 14 --workers 2
    .venv/bin/python benchmarks/bench_api_fuzz.py --minutes 2 --token   # with a token

``tests/annotate/test_schema.py`` runs this script with a bounded ``--examples``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench_annotate import build_run, free_port

from balseg.annotate.app import create_app
from balseg.labels.store import LabelStore

TOKEN = "bench-api-fuzz-token"


class Counted:
    """ASGI wrapper counting the statuses the app answered, per method."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.statuses: Counter[tuple[str, int]] = Counter()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                self.statuses[(scope["method"], msg["status"])] += 1
            await send(msg)

        await self.app(scope, receive, counting)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=None,
                    help="time budget: schemathesis repeats fuzzing until it is spent"
                         " (default: none, stop after --examples per operation)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--examples", type=int, default=100,
                    help="schemathesis's --max-examples per operation (per round, with"
                         " --minutes)")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--token", action="store_true", help="serve with a token")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--summary", type=Path, default=None, help="also write the summary here")
    args = ap.parse_args()

    import uvicorn

    shm = Path("/dev/shm")  # in RAM where there is one: the run is about the API, not fsync
    base = Path(tempfile.mkdtemp(prefix="balseg-api-fuzz-", dir=shm if shm.is_dir() else None))
    run_dir = build_run(base, args.queries)
    token = TOKEN if args.token else None
    app = create_app(run_dir, lease_ttl_s=0.05, token=token)
    counted = Counted(app)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(counted, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    cmd = [str(Path(sys.executable).with_name("schemathesis")), "run",
           f"http://127.0.0.1:{port}/openapi.json", "--checks", "all",
           "--phases", "examples,coverage,fuzzing",
           *(["--max-time", str(int(args.minutes * 60))] if args.minutes else []),
           "-n", str(args.examples), "-w", str(args.workers), "--generation-database", "none",
           "--no-color", *(["--seed", str(args.seed)] if args.seed is not None else []),
           *(["-H", f"X-Balseg-Token: {token}"] if token else [])]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=base)
    seconds = time.monotonic() - started
    server.should_exit = True
    thread.join(timeout=30)
    with LabelStore(run_dir / "labels.sqlite", readonly=True) as store:
        tallies = store.verify_tallies()
    app.state.annotation.close()
    statuses = counted.statuses
    total = sum(statuses.values())
    summary = {
        "requests": total, "seconds": round(seconds), "requests_per_s": round(total / seconds, 1),
        "5xx": sum(n for (_, code), n in statuses.items() if code >= 500),
        "schemathesis_exit": done.returncode, "tallies_differ": tallies,
        "statuses": {f"{m} {c}": n for (m, c), n in sorted(statuses.items())},
        "token": bool(token), "queries": args.queries, "workers": args.workers,
    }
    tail = [line for line in done.stdout.splitlines() if line.strip()][-30:]
    print("\n".join(tail))
    print(json.dumps(summary, indent=1))
    if args.summary is not None:
        args.summary.write_text(json.dumps({**summary, "output": done.stdout[-8000:]}))
    return 0 if done.returncode == 0 and summary["5xx"] == 0 and not tallies else 1


if __name__ == "__main__":
    sys.exit(main())
