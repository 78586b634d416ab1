"""Run directories built by hand (no dataset adapter needed) and a live-server helper.

A uniquely named module (not conftest) so tests can import it without clashing with other
concerns' test helpers.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from balseg.labels.store import LabelStore

CLASS_NAMES = ["road", "car", "sky"]
PALETTE = [[128, 64, 128], [0, 0, 142], [70, 130, 180]]
# image_id -> (width, height); the store keeps (y, x) in this original resolution
SIZES = {"city/a": (64, 48), "city/b": (40, 32)}
QUERIES = [("city/a", 5, 10), ("city/a", 20, 30), ("city/a", 47, 63),
           ("city/b", 3, 4), ("city/b", 31, 39)]


@dataclass
class Run:
    dir: Path
    data_root: Path
    query_ids: list[int]

    def store(self) -> LabelStore:
        return LabelStore(self.dir / "labels.sqlite", num_classes=len(CLASS_NAMES))


def scene(width: int, height: int, seed: int) -> np.ndarray:
    """A small street-like picture: sky, road, a car, so screenshots look like something."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), np.float32)
    sky = yy < height * 0.45
    img[sky] = [110, 160, 220]
    img[sky] += (yy[sky, None] / height) * 60
    img[~sky] = [95, 90, 100]
    img[(~sky) & (np.abs(xx - width / 2) < (yy - height * 0.45) * 0.08 + 1)] = [230, 230, 230]
    cx, cy = width * 0.3, height * 0.6
    car = (np.abs(xx - cx) < width * 0.15) & (np.abs(yy - cy) < height * 0.08)
    img[car] = [20, 40, 150]
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_run(base: Path, *, queries=QUERIES, sizes=SIZES, cycle: int = 0) -> Run:
    data_root = base / "data"
    run_dir = base / "run"
    run_dir.mkdir(parents=True)
    images = {}
    for k, (image_id, (w, h)) in enumerate(sizes.items()):
        rel = f"images/{image_id.replace('/', '_')}.png"
        (data_root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene(w, h, k)).save(data_root / rel)
        images[image_id] = rel
    (run_dir / "dataset.json").write_text(json.dumps({
        "dataset": "folder", "root": str(data_root), "split": "train", "options": {},
        "class_names": CLASS_NAMES, "palette": PALETTE, "ignore_index": 255,
        "images": images,
    }))
    with LabelStore(run_dir / "labels.sqlite", num_classes=len(CLASS_NAMES)) as store:
        ids = store.add_queries([(i, y, x, 0.5) for i, y, x in queries], cycle=cycle,
                                strategy="balent")
    return Run(run_dir, data_root, ids)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn in a background thread on a free loopback port, stopped on exit."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
