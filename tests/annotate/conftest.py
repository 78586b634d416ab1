"""Fixtures of the annotation tests (helpers live in annotate_support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .annotate_support import LiveServer, Run, make_run


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return make_run(tmp_path)


@pytest.fixture
def live() -> type[LiveServer]:
    return LiveServer
