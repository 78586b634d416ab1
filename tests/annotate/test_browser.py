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
    app = create_app(run.dir)
    with LiveServer(app) as srv, chromium_page(1280, 720) as page:
        page.goto(srv.url + "/")
        page.evaluate("localStorage.setItem('balseg.annotator', 'maria')")
        page.reload()
        q = wait_ready(page)
        page.keyboard.press("3")  # building
        q = wait_ready(page, not_query=q)
        page.wait_for_timeout(400)  # let the button flash and the progress bar settle
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
