"""Headless Chromium (Debian's package) driven by Playwright, for the page tests and the
docs screenshot.

Why Debian's chromium and not Playwright's own browser download: CI machines reach package
registries only, so the browser comes from ``apt-get install chromium``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("BALSEG_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def require_chromium() -> None:
    """Skip locally when Chromium or Playwright is missing; fail on CI, which must have them."""
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright python package is missing (pip install playwright)"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run on CI: {problem}")
        pytest.skip(problem)


@contextmanager
def chromium_page(width: int = 1280, height: int = 760) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


def wait_ready(page: Any, *, not_query: int | None = None) -> int:
    """Wait until the page shows a query (other than ``not_query``) and takes keys; its id."""
    page.wait_for_function(
        "(prev) => document.body.dataset.state === 'ready'"
        " && document.body.dataset.queryId && document.body.dataset.queryId !== prev",
        arg="" if not_query is None else str(not_query),
    )
    return int(page.evaluate("document.body.dataset.queryId"))
