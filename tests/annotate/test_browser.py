"""A person at the keyboard: headless Chromium answers, skips, undoes, reloads and finishes."""

from __future__ import annotations

from pathlib import Path

import pytest

from balseg.annotate.app import create_app

from .annotate_support import LiveServer, make_run
from .browser_support import chromium_page, require_chromium, wait_ready

pytestmark = pytest.mark.browser


def test_keyboard_session_survives_a_reload_and_stores_exactly_the_answers(
    tmp_path: Path,
) -> None:
    require_chromium()
    run = make_run(tmp_path)
    q1, q2, q3, q4, q5 = run.query_ids
    expected: dict[int, int | None] = {}
    app = create_app(run.dir)
    with LiveServer(app) as srv, chromium_page() as page:
        console_errors: list[str] = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else 0)
        page.goto(srv.url + "/")
        page.wait_for_function("document.body.dataset.state === 'login'")
        page.fill("#name", "alice")
        page.press("#name", "Enter")

        assert wait_ready(page) == q1
        assert page.inner_text("#classes").split() == ["1", "road", "2", "car", "3", "sky"]
        assert page.eval_on_selector("#image", "c => c.width * c.height") > 0
        assert "cycle 0: 0 / 5 answered" in page.inner_text("#progress-text")
        page.keyboard.press("2")  # car
        expected[q1] = 1
        assert wait_ready(page, not_query=q1) == q2
        assert "saved: query 1 is car" in page.inner_text("#status")
        page.keyboard.press("u")  # unknown
        expected[q2] = None
        assert wait_ready(page, not_query=q2) == q3
        page.keyboard.press("s")  # skip: comes back at the end
        assert wait_ready(page, not_query=q3) == q4
        page.keyboard.press("1")  # road ... then undone
        assert wait_ready(page, not_query=q4) == q5
        page.keyboard.press("Backspace")
        assert wait_ready(page, not_query=q5) == q4
        assert "undone" in page.inner_text("#status")
        page.keyboard.press("3")  # sky, the corrected answer
        expected[q4] = 2
        assert wait_ready(page, not_query=q4) == q5
        assert "this image: 1 / 2" in page.inner_text("#progress-text")  # city/b

        page.reload()  # mid-way: the name and the held query come back
        assert wait_ready(page) == q5
        assert page.inner_text("#who-name") == "alice"
        assert "cycle 0: 3 / 5 answered" in page.inner_text("#progress-text")
        page.click("#classes button[data-label='1']")  # a click works too: car
        expected[q5] = 1
        assert wait_ready(page, not_query=q5) == q3  # only the skipped one is left
        assert "skipped" in page.inner_text("#status")
        page.keyboard.press("1")
        expected[q3] = 0
        page.wait_for_function("document.body.dataset.state === 'done'")
        assert "cycle 0: 5 / 5 answered" in page.inner_text("#done-text")
        assert not page.is_visible("#work")
        assert console_errors == []
    app.state.annotation.store.close()

    with run.store() as s:
        got = {a.query_id: a.label for a in s.answers()}
        assert got == expected
        assert {(a.source, a.annotator) for a in s.answers()} == {("person", "alice")}
        assert len(s.answers()) == 5 and s.counts()["open"] == 0


def test_page_with_a_token_works_through_the_printed_link(tmp_path: Path) -> None:
    require_chromium()
    run = make_run(tmp_path)
    token = "browser-token-123"
    app = create_app(run.dir, token=token)
    with LiveServer(app) as srv, chromium_page() as page:
        assert page.goto(srv.url + "/").status == 401
        page.goto(f"{srv.url}/?token={token}")
        page.wait_for_function("document.body.dataset.state === 'login'")
        page.fill("#name", "bob")
        page.press("#name", "Enter")
        first = wait_ready(page)
        page.keyboard.press("3")
        wait_ready(page, not_query=first)
    app.state.annotation.store.close()
    with run.store() as s:
        assert [(a.query_id, a.label, a.annotator) for a in s.answers()] == [(first, 2, "bob")]


SHOT_CLASSES = ["road", "sidewalk", "building", "vegetation", "sky", "person", "car",
                "bicycle"]
SHOT_PALETTE = [[128, 64, 128], [244, 35, 232], [70, 70, 70], [107, 142, 35],
                [70, 130, 180], [220, 20, 60], [0, 0, 142], [119, 11, 32]]


def test_screenshot_of_the_page(tmp_path: Path) -> None:
    """Renders the page as a person sees it; BALSEG_SCREENSHOT=docs/annotate.png keeps it."""
    import io
    import os

    import numpy as np
    from PIL import Image

    require_chromium()
    sizes = {"frankfurt_000001": (480, 300), "lindau_000042": (480, 300)}
    queries = [("frankfurt_000001", 204, 150), ("frankfurt_000001", 190, 79),
               ("frankfurt_000001", 260, 420), ("lindau_000042", 90, 60),
               ("lindau_000042", 200, 250), ("lindau_000042", 150, 400)]
    run = make_run(tmp_path, queries=queries, sizes=sizes, class_names=SHOT_CLASSES,
                   palette=SHOT_PALETTE, name="street-balent")
    import sqlite3

    con = sqlite3.connect(run.dir / "labels.sqlite")  # the model's guesses, as after cycle 0
    with con:
        con.executemany("UPDATE queries SET predicted = ? WHERE id = ?",
                        zip([2, 0, 0, 4, 0, 2], run.query_ids, strict=True))
    con.close()
    app = create_app(run.dir)
    with LiveServer(app) as srv, chromium_page(1280, 720) as page:
        page.goto(srv.url + "/")
        page.evaluate("localStorage.setItem('balseg.annotator', 'maria')")
        page.reload()
        q = wait_ready(page)
        page.keyboard.press("3")  # building
        q = wait_ready(page, not_query=q)
        page.wait_for_timeout(400)  # let the button flash and the progress bar settle
        assert page.get_attribute(".suggested", "data-label") == "0"  # road, outlined
        png = page.screenshot(full_page=False)
    app.state.annotation.store.close()
    im = Image.open(io.BytesIO(png))
    assert im.size == (1280, 720)
    small = np.asarray(im.convert("RGB").resize((64, 36))).reshape(-1, 3)
    assert len(np.unique(small, axis=0)) > 50  # not a blank page
    target = os.environ.get("BALSEG_SCREENSHOT")
    if target:
        # 256 colours without dithering: exact UI colours, a ~50 KB file instead of ~300 KB
        im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE,
                                   dither=Image.Dither.NONE).save(target, optimize=True)


def test_review_mode_adds_a_second_opinion_and_flags_the_conflict(tmp_path: Path) -> None:
    require_chromium()
    run = make_run(tmp_path)
    q1, q2, *_ = run.query_ids
    with run.store() as s:
        s.add_answers([(q, 0) for q in run.query_ids], source="person", annotator="alice")
    app = create_app(run.dir)
    with LiveServer(app) as srv, chromium_page() as page:
        page.goto(srv.url + "/?review=1")
        page.evaluate("localStorage.setItem('balseg.annotator', 'bob')")
        page.reload()
        assert wait_ready(page) == q1
        assert page.is_visible("#mode")
        page.keyboard.press("2")  # disagrees with alice
        assert wait_ready(page, not_query=q1) == q2
        assert "conflict" in page.inner_text("#status")
        page.keyboard.press("1")  # agrees
        wait_ready(page, not_query=q2)
    app.state.annotation.store.close()
    with run.store() as s:
        assert [(a.query_id, a.label) for a in s.answers() if a.annotator == "bob"] == [
            (q1, 1), (q2, 0)]
        assert s.conflicts() == [q1]


def test_the_next_pixel_starts_without_a_highlighted_class_and_counts_its_own_image(
    tmp_path: Path,
) -> None:
    """The button pressed for one pixel must not look chosen on the next one, and the
    picture, the query line and "this image" change together: city/a (64x48, 3 queries) and
    city/b (40x32, 2 queries) are told apart by the canvas's aspect ratio while city/b's
    image is slow to arrive."""
    require_chromium()
    run = make_run(tmp_path)  # city/a: queries 1-3, city/b: 4-5
    app = create_app(run.dir)
    with LiveServer(app) as srv, chromium_page() as page:
        def slow(route) -> None:
            page.wait_for_timeout(600)
            route.continue_()

        page.route("**/api/images/city%2Fb", slow)
        page.goto(srv.url + "/")
        page.evaluate("localStorage.setItem('balseg.annotator', 'alice')")
        page.reload()
        q = wait_ready(page)
        page.evaluate("""() => { window.samples = []; setInterval(() => {
            const c = document.getElementById('image');
            window.samples.push({ratio: c.width / c.height,
              info: document.getElementById('query-info').textContent,
              text: document.getElementById('progress-text').textContent}); }, 15); }""")
        for key in ("1", "2", "3", "1"):
            page.keyboard.press(key)
            q = wait_ready(page, not_query=q)
            assert page.evaluate("document.querySelectorAll('.flash').length") == 0
        samples = page.evaluate("window.samples")
    app.state.annotation.store.close()
    shapes = {"city/a": (64 / 48, "/ 3"), "city/b": (40 / 32, "/ 2")}
    seen = set()
    for sample in samples:
        image = "city/a" if "image city/a" in sample["info"] else "city/b"
        ratio, total = shapes[image]
        assert abs(sample["ratio"] - ratio) < 0.05, sample  # the picture is that image
        counts = sample["text"].split("this image: ")[1].split(" ·")[0]
        assert counts.endswith(total), sample  # and so are the counts
        seen.add((image, counts))
    assert {("city/a", "1 / 3"), ("city/a", "3 / 3"), ("city/b", "0 / 2"),
            ("city/b", "1 / 2")} <= seen


def test_undo_after_a_skip_leaves_the_answer_before_the_skip(tmp_path: Path) -> None:
    require_chromium()
    run = make_run(tmp_path)
    q1, q2, q3, *_ = run.query_ids
    app = create_app(run.dir)
    with LiveServer(app) as srv, chromium_page() as page:
        page.goto(srv.url + "/")
        page.evaluate("localStorage.setItem('balseg.annotator', 'alice')")
        page.reload()
        assert wait_ready(page) == q1
        page.keyboard.press("2")
        assert wait_ready(page, not_query=q1) == q2
        page.keyboard.press("s")
        assert wait_ready(page, not_query=q2) == q3
        page.keyboard.press("Backspace")
        page.wait_for_function("document.getElementById('status').textContent"
                               ".includes('since the last skip')")
        assert wait_ready(page) == q3  # still the query after the skip
        page.keyboard.press("3")  # an answer after the skip can be undone
        wait_ready(page, not_query=q3)
        page.keyboard.press("z")
        assert wait_ready(page) == q3 and "undone" in page.inner_text("#status")
    app.state.annotation.store.close()
    with run.store() as s:
        assert [(a.query_id, a.label) for a in s.answers()] == [(q1, 1)]


def test_the_token_travels_in_a_cookie_not_in_image_urls(tmp_path: Path) -> None:
    require_chromium()
    run = make_run(tmp_path)
    token = "cookie-token-4567"
    app = create_app(run.dir, token=token)
    with LiveServer(app) as srv, chromium_page() as page:
        urls: list[str] = []
        page.on("request", lambda r: urls.append(r.url))
        page.goto(f"{srv.url}/?token={token}")
        page.evaluate("localStorage.setItem('balseg.annotator', 'bob')")
        page.reload()  # the printed link, with a name: images load right away
        first = wait_ready(page)
        assert page.eval_on_selector("#image", "c => c.width * c.height") > 0
        page.keyboard.press("1")
        second = wait_ready(page, not_query=first)
        page.goto(f"{srv.url}/")  # a later visit without the token: the cookie carries it
        assert wait_ready(page) == second
        page.keyboard.press("2")
        wait_ready(page, not_query=second)
    app.state.annotation.store.close()
    images = [u for u in urls if "/api/images/" in u]
    assert images and not any("token" in u for u in images), images
    assert {u for u in urls if "token=" in u} == {f"{srv.url}/?token={token}"}
    with run.store() as s:
        assert [(a.query_id, a.annotator) for a in s.answers()] == [(first, "bob"),
                                                                    (second, "bob")]


ATTACK_PAGE = """<!doctype html><html><body><script>
const target = "%(target)s";
const body = JSON.stringify({annotator: "mallory", query_id: %(qid)d, label: 1});
async function attack() {
  const tries = [
    () => fetch(target + "/api/answer", {method: "POST", mode: "no-cors", body: new Blob([body])}),
    () => fetch(target + "/api/answer", {method: "POST", mode: "no-cors", body}),
    () => fetch(target + "/api/answer", {method: "POST", mode: "no-cors",
                                         body: new Blob([body], {type: "application/json"})}),
    () => fetch(target + "/api/answer", {method: "POST", mode: "no-cors",
                                         headers: {"Content-Type": "application/json"}, body}),
    () => fetch(target + "/api/answer", {method: "POST", mode: "cors",
                                         headers: {"Content-Type": "application/json"}, body}),
    () => fetch(target + "/api/next", {method: "POST", mode: "no-cors",
                                       body: new Blob([JSON.stringify({annotator: "mallory"})],
                                                      {type: "application/json"})}),
  ];
  for (const t of tries) { try { await t(); } catch (e) {} }
  document.body.dataset.done = "1";
}
attack();
</script>
<form id="f" method="POST" enctype="text/plain" action="%(target)s/api/answer">
<input name='{"annotator":"mallory","query_id":%(qid)d,"label":1,"x":"' value='"}'>
</form></body></html>"""


class BodiesAreJson:
    """What FastAPI before 0.132 did: a body without a Content-Type was parsed as JSON. Put
    behind the guard, it shows the guard alone closes the hole, whatever the FastAPI."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not any(k.lower() == b"content-type"
                                               for k, _ in scope["headers"]):
            scope = {**scope, "headers": [*scope["headers"],
                                          (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


def test_a_page_on_another_origin_cannot_write(tmp_path: Path) -> None:
    """The CSRF of issue 17: fetch(no-cors) with a Blob body, text bodies, a JSON-typed Blob,
    a text/plain form. Every POST reaches the server (recorded) and is refused there."""
    require_chromium()
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    run = make_run(tmp_path)
    qid = run.query_ids[0]
    app = create_app(run.dir)
    app.user_middleware.append(Middleware(BodiesAreJson))  # inside the guard
    seen: list[tuple[str, str, int]] = []

    async def recorder(scope, receive, send):  # the server's view of every request
        status: list[int] = []

        async def send_status(msg):
            if msg["type"] == "http.response.start":
                status.append(msg["status"])
            await send(msg)

        await app(scope, receive, send_status)
        if scope["type"] == "http":
            seen.append((scope["method"], scope["path"], status[0] if status else 0))

    with LiveServer(recorder) as srv:
        page_html = ATTACK_PAGE % {"target": srv.url, "qid": qid}
        evil = Starlette(routes=[Route("/", lambda _req: HTMLResponse(page_html))])
        with LiveServer(evil) as attacker, chromium_page() as page:
            page.goto(attacker.url.replace("127.0.0.1", "localhost") + "/")
            page.wait_for_function("document.body.dataset.done === '1'")
            page.evaluate("document.getElementById('f').submit()")
            page.wait_for_load_state()
            page.wait_for_timeout(300)
    app.state.annotation.store.close()
    posts = [(path, code) for method, path, code in seen if method == "POST"]
    assert len(posts) >= 5, seen  # the browser did send them: the server refused them
    assert all(code in (403, 415) for _, code in posts), posts
    with run.store() as s:
        assert s.answers() == []
        assert s.lease_holder(qid) is None
