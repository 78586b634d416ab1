"""Property-based fuzz of the whole HTTP API, driven by the app's own OpenAPI schema.

Hypothesis generates requests for every operation the schema lists (new routes are fuzzed
without touching this file): parameters and bodies that fit the schema, near misses (a
required field dropped, an unknown one added, a value of the wrong type or out of range)
and plain garbage (``NaN``, ``Infinity``, ``1e400``, lone surrogates, raw invalid UTF-8,
deep nesting, other content types, other origins). At least 7,500 requests per run
(test_schema.py sends schemathesis's on top, about 2,000: together under 10,500).

What must hold:
- no response is a 5xx, every JSON response decodes as strict UTF-8, no response carries a
  path of the server's file system;
- every status is one the schema documents for the operation, and every error body is the
  documented ``{"detail": "one line"}``;
- the database ends exactly as the acknowledged writes say: the answers are the initial
  ones plus those a 200 from ``/api/answer`` reported minus those a 200 from ``/api/undo``
  retracted (same ids, queries, labels, annotators), every other table except the session
  state (leases, skips, undo floors) is byte-identical, and the counters agree with a count
  from scratch.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from balseg.annotate.app import create_app

from .annotate_support import make_run

pytestmark = pytest.mark.slow

REQUESTS_PER_EXAMPLE = 25
EXAMPLES = 300  # 7,500 requests
NAMES = ["alice", "bob", "carol"]
QUERIES = ([("city/a", y, x) for y in range(0, 48, 8) for x in range(0, 64, 9)]  # 42
           + [("city/b", y, x) for y in range(0, 32, 8) for x in range(0, 40, 9)])  # + 20
SESSION_TABLES = {"leases", "skips", "annotators"}  # who holds what right now: may change
DERIVED = {"cycle_tally", "image_tally", "annotator_tally", "tally", "sqlite_sequence"}
NAN, INF, HUGE, SURROGATE = "\x00NaN\x00", "\x00Inf\x00", "\x00Huge\x00", "\x00Sur\x00"


# -- strategies from the schema ---------------------------------------------------------------
def _resolve(schema: dict, spec: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = spec["components"]["schemas"][name]
    return schema


NASTY = st.sampled_from([NAN, INF, HUGE, SURROGATE, -(2**63), 2**64, 1.5, "", "1", True,
                         [], {}, None, "\u202e", "a" * 300, "\x00", 10**30])
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | NASTY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8)


def value_for(schema: dict, spec: dict, name: str = "", *, valid: bool = False
              ) -> st.SearchStrategy[Any]:
    """Values the schema allows, biased to ones that name real things (``valid``), or
    mostly those and sometimes anything at all."""
    schema = _resolve(schema, spec)
    if "anyOf" in schema:
        good = st.one_of([value_for(s, spec, name, valid=True) for s in schema["anyOf"]])
    elif schema.get("type") == "integer":
        lo, hi = schema.get("minimum", -(2**63)), schema.get("maximum", 2**63)
        top = 3 if name == "label" else len(QUERIES) + 2  # classes, or query ids
        near = st.integers(max(lo, -1), min(hi, top))
        good = near if valid or lo > top else near | st.integers(lo, hi)
    elif schema.get("type") == "string":
        if "annotator" in name:
            names = st.sampled_from(NAMES)
            good = names if valid else names | st.text(max_size=schema.get("maxLength", 70))
        elif "image" in name:
            images = st.sampled_from(["city/a", "city/b"])
            good = images if valid else images | st.text(max_size=12)
        else:
            good = st.text(max_size=schema.get("maxLength", 40))
    elif schema.get("type") == "boolean":
        good = st.booleans()
    elif schema.get("type") == "null":
        good = st.none()
    else:
        good = ANY_JSON
    return good if valid else st.one_of(good, good, good, ANY_JSON)


def body_for(schema: dict, spec: dict, *, valid: bool) -> st.SearchStrategy[Any]:
    schema = _resolve(schema, spec)
    props = schema.get("properties", {})
    required = set(schema.get("required", []))

    @st.composite
    def build(draw: Any) -> Any:
        doc = {}
        for key, sub in props.items():
            if key in required or draw(st.booleans()):
                doc[key] = draw(value_for(sub, spec, key, valid=valid))
        if valid:
            return doc
        mutation = draw(st.integers(0, 5))
        if mutation == 0 and doc:
            doc.pop(draw(st.sampled_from(sorted(doc))))
        elif mutation == 1:
            doc[draw(st.text(max_size=6) | st.just(SURROGATE))] = draw(ANY_JSON)
        elif mutation == 2:
            return draw(ANY_JSON)
        return doc

    return build()


def encode_json(value: Any) -> bytes:
    """JSON text with the tokens no well-behaved client sends."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=True)
    text = (text.replace(json.dumps(NAN), "NaN").replace(json.dumps(INF), "Infinity")
            .replace(json.dumps(HUGE), "1e400").replace(json.dumps(SURROGATE), '"\\ud800"'))
    return text.encode("utf-8", "surrogatepass")


RAW_BODIES = st.sampled_from([
    b"", b"{", b"[" * 3000 + b"]" * 3000, b'{"annotator":"\xed\xa0\x80","query_id":1,'
    b'"label":1}', b"\xff\xfe\xfd", b'{"annotator":"a","query_id":' + b"9" * 5000 + b"}",
    b"\xef\xbb\xbf{}", b"null", b'{"annotator":"alice","query_id":1,"label":NaN}',
]) | st.binary(max_size=64)


@st.composite
def request_for(draw: Any, ops: list[dict], spec: dict) -> dict:
    """One request: two in three are well-formed (and mostly name real queries, images and
    people), the rest anything from near misses to garbage."""
    op = draw(st.sampled_from(ops))
    valid = draw(st.integers(0, 2)) > 0
    path = op["path"]
    for p in op["params"]:
        if p["in"] == "path":
            value = draw(value_for(p["schema"], spec, p["name"], valid=valid))
            text = value if isinstance(value, str) else json.dumps(value)
            safe = "/" if draw(st.booleans()) else ""
            path = path.replace("{" + p["name"] + "}",
                                quote(text.encode("utf-8", "surrogatepass"), safe=safe))
    query = []
    for p in op["params"]:
        if p["in"] == "query" and (p.get("required") or draw(st.booleans())):
            value = draw(value_for(p["schema"], spec, p["name"], valid=valid))
            text = value if isinstance(value, str) else json.dumps(value)
            query.append(f"{p['name']}={quote(text.encode('utf-8', 'surrogatepass'))}")
    headers = {}
    content = None
    if op["method"] != "get" or (not valid and draw(st.integers(0, 10)) == 0):
        if op["body"] is not None and (valid or draw(st.integers(0, 3)) > 0):
            content = encode_json(draw(body_for(op["body"], spec, valid=valid)))
        else:
            content = draw(RAW_BODIES)
        headers["content-type"] = "application/json" if valid else draw(st.sampled_from(
            ["application/json"] * 3 + ["text/plain", "application/json; charset=latin-1",
                                        "application/x-www-form-urlencoded", ""]))
    if valid:
        if draw(st.booleans()):
            headers.update({"origin": "http://127.0.0.1", "sec-fetch-site": "same-origin"})
    else:
        if draw(st.integers(0, 6)) == 0:
            query.append(f"extra={quote(draw(st.binary(max_size=8)))}")
        site = draw(st.integers(0, 4))
        if site == 0:
            headers["origin"] = draw(st.sampled_from(["http://evil.example", "null",
                                                      "http://127.0.0.1"]))
        elif site == 1:
            headers["sec-fetch-site"] = draw(st.sampled_from(["cross-site", "same-site",
                                                              "same-origin", "none"]))
    return {"method": op["method"].upper(), "op": f"{op['method']} {op['path']}",
            "url": path + ("?" + "&".join(query) if query else ""), "headers": headers,
            "content": content}


# -- the database as the acknowledged writes say it must be --------------------------------------
def table_dump(path: Path) -> dict[str, Any]:
    """Schema and rows of every table, as SQLite stores them (rows sorted)."""
    con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        out: dict[str, Any] = {"schema": sorted(
            con.execute("SELECT type, name, sql FROM sqlite_master").fetchall(), key=str)}
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            out[table] = sorted(con.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
        base = [c[1] for c in con.execute("PRAGMA table_info(queries)")
                if c[1] not in ("n_answers", "conflict")]
        out["queries"] = con.execute(f"SELECT {', '.join(base)} FROM queries ORDER BY id"
                                     ).fetchall()
        return out
    finally:
        con.close()


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    """A folder in RAM when there is one: fsync-free, the fuzz is about answers, not disks."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(dir=shm, prefix="balseg-fuzz-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_fuzzing_the_api_gives_no_5xx_and_writes_only_acknowledged_answers(base: Path) -> None:
    run = make_run(base, queries=QUERIES[:40])
    with run.store() as s:  # a second cycle and answers from before: review, conflicts
        s.add_queries([(i, y, x, None) for i, y, x in QUERIES[40:]], cycle=1, strategy="s")
        s.add_answers([(1, 0), (2, None)], source="oracle", annotator="oracle")
        s.add_answers([(1, 2)], source="person", annotator="dora")
    db = run.dir / "labels.sqlite"
    app = create_app(run.dir, lease_ttl_s=0.05)  # leases expire: others get to answer too
    svc = app.state.annotation
    svc.store.checkpoint(truncate=True)
    before = table_dump(db)
    spec = app.openapi()
    ops = [{"path": path, "method": method, "params": op.get("parameters", []),
            "body": (op.get("requestBody") or {}).get("content", {}).get(
                "application/json", {}).get("schema")}
           for path, methods in spec["paths"].items() for method, op in methods.items()]
    documented = {f"{method} {path}": {int(code) for code in op["responses"]}
                  for path, methods in spec["paths"].items() for method, op in methods.items()}
    assert len(ops) >= 13
    expected = {a.id: (a.id, a.query_id, a.label, a.source, a.annotator)
                for a in svc.store.answers()}
    seen: dict[str, dict[int, int]] = {}
    total = [0]

    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                               base_url="http://127.0.0.1")

    async def send(batch: list[dict]) -> list[httpx.Response]:
        return [await client.request(req["method"], req["url"], headers=req["headers"],
                                     content=req["content"]) for req in batch]

    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(request_for(ops, spec), min_size=REQUESTS_PER_EXAMPLE,
                          max_size=REQUESTS_PER_EXAMPLE))
    def fuzz(batch: list[dict]) -> None:
        for req, r in zip(batch, loop.run_until_complete(send(batch)), strict=True):
            total[0] += 1
            seen.setdefault(req["op"], {}).setdefault(r.status_code, 0)
            seen[req["op"]][r.status_code] += 1
            assert r.status_code < 500, (req, r.status_code, r.text[:300])
            assert r.status_code in documented[req["op"]], (req, r.status_code, r.text[:300])
            text = r.text
            if req["op"] == "get /api/info" and r.status_code == 200:
                # a loopback server names its run directory in the command that picks the
                # answers up, on purpose (only this machine can reach it)
                text = json.dumps({**r.json(), "continue_command": None})
            assert str(base) not in text, (req, text[:300])
            if r.headers.get("content-type", "").startswith("application/json"):
                data = json.loads(r.content.decode("utf-8"))  # strict: no lone surrogates
            if r.status_code != 200:
                assert list(data) == ["detail"] and isinstance(data["detail"], str), r.text
                continue
            if req["op"] == "post /api/answer":
                body = json.loads(req["content"])
                a = (data["answer_id"], data["query_id"], data["label"], "person",
                     body["annotator"].strip())
                assert a[0] not in expected, ("answer id reused", a)
                expected[a[0]] = a
            elif req["op"] == "post /api/undo":
                retracted = data["retracted"]
                gone = expected.pop(retracted["answer_id"])
                assert (gone[1], gone[2]) == (retracted["query_id"], retracted["label"])

    try:
        fuzz()
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
    svc.store.checkpoint(truncate=True)
    after = table_dump(db)
    with run.store() as s:
        assert s.verify_tallies() == []
    svc.close()

    print({op: dict(sorted(codes.items())) for op, codes in sorted(seen.items())})
    assert total[0] >= 7_500
    for op in ops:  # every operation was reached, and every one also succeeded sometimes
        key = f"{op['method']} {op['path']}"
        assert key in seen, key
        assert any(200 <= code < 300 for code in seen[key]), (key, seen[key])
    assert seen["post /api/answer"].get(200, 0) >= 10 and seen["post /api/undo"].get(200, 0)
    assert sorted(tuple(a[:5]) for a in after["answers"]) == sorted(expected.values())
    for table in sorted(set(before) | set(after)):
        if table not in SESSION_TABLES | DERIVED | {"answers"}:
            assert after.get(table) == before.get(table), table
    # session state names real queries and well-formed annotators only
    for annotator, query_id in [(r[1], r[0]) for r in after["leases"]] + after["skips"]:
        assert 1 <= query_id <= len(QUERIES) and annotator == annotator.strip() != ""
