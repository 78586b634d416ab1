"""The API as ``/openapi.json`` describes it, checked by schemathesis against a live server.

This runs ``benchmarks/bench_api_fuzz.py`` (the long run of docs/benchmarks.md) with a
bounded budget: schemathesis's command line with all its checks against uvicorn, which
reads the schema the server serves behind its guard and sends what it describes and what it
forbids: no 5xx, every status documented for its operation, every body, header and content
type as documented, requests the schema refuses are refused, requests it allows are not
refused as invalid, methods a path does not list are 405 with an Allow header, and with a
token, requests without it are 401. The server counts what it answered, so the budget and
the 0 x 5xx are measured where the requests land; the database's counters are checked
afterwards. test_fuzz.py sends nastier bodies still and checks every answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_api_fuzz.py"
EXAMPLES = 100  # per operation and server; schemathesis stops early on small input spaces
MIN_REQUESTS = 700  # per server, as the server counted them (about 1,000 arrive)


@pytest.mark.parametrize("token", [False, True], ids=["loopback", "token"])
def test_the_live_server_is_what_its_schema_says(tmp_path: Path, token: bool) -> None:
    if not Path(sys.executable).with_name("schemathesis").exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    summary_file = tmp_path / "summary.json"
    done = subprocess.run(
        # one worker: hypothesis's ast.parse from two threads at once can trip CPython
        # 3.11's "AST constructor recursion depth mismatch" inside schemathesis
        [sys.executable, str(BENCH), "--examples", str(EXAMPLES), "--queries", "200",
         "--workers", "1", "--summary", str(summary_file), *(["--token"] if token else [])],
        capture_output=True, text=True, timeout=900)
    assert summary_file.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(summary_file.read_text())
    output = summary.pop("output")
    print({k: v for k, v in summary.items()})
    assert summary["schemathesis_exit"] == 0, output
    assert "Tested: 13" in output, output
    assert summary["requests"] >= MIN_REQUESTS, summary
    assert summary["5xx"] == 0 and summary["tallies_differ"] == [], summary
    statuses = summary["statuses"]
    assert any(key.endswith(" 405") for key in statuses), statuses  # methods a path lacks
    if token:
        assert statuses.get("GET 401") and statuses.get("POST 401"), statuses
    assert done.returncode == 0, done.stdout[-3000:]
