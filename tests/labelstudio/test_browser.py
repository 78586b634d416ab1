"""Label Studio's own page in Chromium: the queried point and the classes are shown, a
class key and Ctrl+Enter answer, and the answer lands in balseg.

``BALSEG_SCREENSHOT=docs/labelstudio.png pytest tests/labelstudio -k browser`` redraws the
picture of docs/labelstudio.md.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from balseg.labels import LabelStore
from balseg.rundir import RunDir

from ..annotate.browser_support import chromium_page, require_chromium
from .ls_support import PASSWORD, USER, balseg, tasks_of, waiting_run

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(600)]

CLASSES = ["sky", "ground", "wall", "vegetation", "pole", "sign"]


def test_answering_in_label_studios_page_lands_in_balseg(label_studio, ls, synthetic_root,
                                                          tmp_path):
    require_chromium()
    root = synthetic_root.with_name(synthetic_root.name + "-large")  # a picture to see
    run_dir, pid = waiting_run(label_studio, ls, root, tmp_path, "balseg browser test",
                               **{"data.options.size": [180, 240]})
    task = tasks_of(ls, pid)[0]
    qid = task["data"]["balseg_query_id"]
    shot = Path(os.environ.get("BALSEG_SCREENSHOT") or tmp_path / "labelstudio.png")
    own = urlsplit(label_studio.url).netloc
    with chromium_page(1280, 860) as page:
        page.set_default_timeout(90_000)  # Label Studio's page is large; CI is slow

        def local_only(route):  # no request leaves the machine (Sentry, fonts, ...)
            if urlsplit(route.request.url).netloc in (own, "") or route.request.url.startswith(
                    ("blob:", "data:")):
                route.continue_()
            else:
                route.abort()

        page.route("**/*", local_only)
        page.goto(f"{label_studio.url}/user/login/")
        page.fill("input[name=email]", USER)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/user/login" not in url)
        page.goto(f"{label_studio.url}/projects/{pid}/data?task={task['id']}")
        page.wait_for_function(  # the task's image is drawn (Label Studio loads it as a blob)
            "Array.from(document.querySelectorAll('img')).some(i => i.src.startsWith('blob:')"
            " && i.complete && i.naturalWidth > 0)")
        page.wait_for_function("names => names.every(n => document.body.innerText.includes(n))",
                               arg=[*CLASSES, "unknown", "queried pixel",
                                    "Which class is the pixel under the yellow point?"])
        time.sleep(1.5)  # the canvas draws the point after the image
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
        page.keyboard.press("2")  # the second class: ground
        page.wait_for_function(  # the class's radio is checked, no other class's
            "() => { const on = Array.from(document.querySelectorAll('input[type=radio]'))"
            ".filter(i => i.checked).map(i => (i.closest('label') || i.parentElement"
            ".parentElement).innerText.trim()).filter(t => t); return on.length === 1"
            " && on[0].startsWith('ground'); }")
        page.keyboard.press("Control+Enter")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ls.request(
                "GET", f"/api/tasks/{task['id']}/annotations"):
            time.sleep(0.3)
    (ann,) = ls.request("GET", f"/api/tasks/{task['id']}/annotations")
    r = balseg("sync", run_dir)
    assert r.exit_code == 0 and "1 new answers" in r.output, r.output
    with LabelStore(RunDir(run_dir).labels) as store:
        (answer,) = store.answers(qid)
        with store.snapshot() as tx:
            (ls_id,) = tx.execute("SELECT annotation_id FROM labelstudio_annotations"
                                  " WHERE query_id = ?", (qid,)).fetchone()
    assert (answer.label, answer.annotator, answer.source) == (1, USER, "person")
    assert ls_id == ann["id"]
    assert shot.stat().st_size > 10_000
