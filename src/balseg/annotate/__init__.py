"""Web app for people answering pixel queries, and Label Studio / CVAT interop.

``create_app`` is imported lazily so that registering the CLI does not import FastAPI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from balseg.annotate.app import create_app

        return create_app
    raise AttributeError(f"module 'balseg.annotate' has no attribute {name!r}")
