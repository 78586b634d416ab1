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
    num_classes: int = len(CLASS_NAMES)

    def store(self) -> LabelStore:
        return LabelStore(self.dir / "labels.sqlite", num_classes=self.num_classes)


def scene(width: int, height: int, seed: int) -> np.ndarray:
    """A street-like picture (sky, buildings, trees, road, a car), so that the page and its
    screenshot show something a person would label."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    horizon = height * 0.5
    img = np.empty((height, width, 3), np.float32)
    img[:] = np.stack([110 + 50 * yy / height, 160 + 40 * yy / height,
                       225 + 0 * yy], axis=-1)  # sky, lighter towards the horizon
    x0 = 0.0
    while x0 < width:  # buildings
        bw = rng.uniform(0.08, 0.2) * width
        top = horizon - rng.uniform(0.15, 0.4) * height
        grey = rng.uniform(120, 190)
        m = (xx >= x0) & (xx < x0 + bw - 1) & (yy >= top) & (yy < horizon)
        img[m] = [grey, grey * 0.95, grey * 0.9]
        x0 += bw
    for _ in range(3):  # trees
        cx, cy, r = rng.uniform(0, width), horizon - rng.uniform(0, 0.1) * height, 0.09 * width
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = [60, 120, 50]
    road = yy >= horizon
    img[road] = [90, 88, 96]
    img[road & (yy < horizon + 0.06 * height)] = [170, 160, 150]  # sidewalk
    lane = road & (np.abs(xx - width / 2) < (yy - horizon) * 0.03 + 0.5)
    img[lane & ((yy // max(2, height // 24)) % 2 == 0)] = [235, 235, 225]
    cx, cy = width * 0.3, height * 0.68
    img[(np.abs(xx - cx) < width * 0.14) & (np.abs(yy - cy) < height * 0.07)] = [25, 45, 160]
    img[(np.abs(xx - cx) < width * 0.08) & (np.abs(yy - cy + height * 0.09) < height * 0.04)
        ] = [40, 60, 150]
    for wx in (cx - width * 0.09, cx + width * 0.09):  # wheels
        img[(xx - wx) ** 2 + (yy - cy - height * 0.07) ** 2 < (0.03 * width) ** 2] = 20
    img += rng.normal(0, 1, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_run(
    base: Path, *, queries=QUERIES, sizes=SIZES, cycle: int = 0,
    class_names: list[str] = CLASS_NAMES, palette: list[list[int]] = PALETTE,
    name: str = "run",
) -> Run:
    """A run directory as ``balseg run`` leaves it for people: dataset.json (with an
    ``images`` mapping), the pool images, and labels.sqlite holding one cycle's queries."""
    data_root = base / "data"
    run_dir = base / name
    run_dir.mkdir(parents=True)
    images = {}
    for k, (image_id, (w, h)) in enumerate(sizes.items()):
        rel = f"images/{image_id.replace('/', '_')}.png"
        (data_root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene(w, h, k)).save(data_root / rel)
        images[image_id] = rel
    (run_dir / "dataset.json").write_text(json.dumps({
        "dataset": "folder", "root": str(data_root), "split": "train", "options": {},
        "class_names": class_names, "palette": palette, "ignore_index": 255,
        "images": images,
    }))
    with LabelStore(run_dir / "labels.sqlite", num_classes=len(class_names)) as store:
        ids = store.add_queries([(i, y, x, 0.5) for i, y, x in queries], cycle=cycle,
                                strategy="balent")
    return Run(run_dir, data_root, ids, len(class_names))


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
