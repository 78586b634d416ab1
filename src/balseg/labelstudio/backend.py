"""``balseg labelstudio-backend RUN_DIR``: Label Studio's ML-backend protocol over a run.

Connect it in Label Studio (project Settings -> Model -> Connect model, URL
``http://HOST:9090``) and Label Studio calls:

- ``GET /health``, ``POST /setup``: alive, and the model version (``balseg-cycle-N``, the
  run's latest checkpoint; ``balseg-untrained`` before the first).
- ``POST /predict`` with tasks: per task the current model's mask as ``brushlabels``
  regions (Label Studio's RLE, one region per predicted class) and, as the prediction's
  ``score``, the image's mean uncertainty (the run's acquisition score over MC-dropout
  samples; ``entropy`` for model-free strategies), so that sorting by prediction score
  puts the least certain images first. Tasks of this run are read from the run's own
  files (``data.balseg_image_id``); any other task's image is fetched from the Label Studio
  of ``oracle.url`` with the run's token (never from another host).
- ``POST /webhook`` with annotation events (Label Studio makes that webhook itself when
  the model is connected): a sync is scheduled in a background thread and the request is
  answered at once. When the latest cycle has no open query left, ``balseg run RUN_DIR``
  is started once for it (output in ``RUN_DIR/continue.log``, as ``balseg annotate
  --continue-run``), which trains, selects and uploads the next cycle's tasks.

The same guard as ``balseg annotate``: loopback-only without a token; with one (any other
``--host``), every request carries it. Label Studio can send only HTTP Basic auth to a
model, so ``Authorization: Basic`` with the token as password (any user name) counts too.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from fastapi import Body, FastAPI

from balseg.annotate.guard import TOKEN_HEADER, Guard
from balseg.annotate.rundata import RunImages
from balseg.annotate.service import launch_continue
from balseg.errors import BalsegError, LabelStudioError
from balseg.labels.store import LabelStore
from balseg.labelstudio.tasks import IMAGE, MASK, brush_results
from balseg.rundir import RunDir

log = logging.getLogger("balseg.labelstudio")

MAX_BODY_BYTES = 32 * 1024 * 1024  # /predict carries whole tasks
CONTINUE_META = "labelstudio.continued_cycle"
SYNC_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED",
                          "ANNOTATIONS_DELETED", "TASKS_DELETED", "START_TRAINING"})
UNCERTAINTY_FALLBACK = "entropy"


class BasicAsToken:
    """``Authorization: Basic user:TOKEN`` (all Label Studio sends a model) as the guard's
    token header; everything else passes unchanged."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = list(scope.get("headers", []))
            for name, value in headers:
                if name.lower() == b"authorization" and value[:6].lower() == b"basic ":
                    try:
                        pair = base64.b64decode(value[6:].strip(), validate=True)
                    except (binascii.Error, ValueError):
                        break
                    password = pair.partition(b":")[2]
                    if password:
                        headers.append((TOKEN_HEADER.encode(), password))
                        scope = {**scope, "headers": headers}
                    break
        await self.app(scope, receive, send)


def brush_target(label_config: str | None) -> tuple[str, str, list[str]] | None:
    """(from_name, to_name, label values) of the config's first BrushLabels control."""
    if not label_config:
        return None
    if "<!DOCTYPE" in label_config.upper() or "<!ENTITY" in label_config.upper():
        return None
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError:
        return None
    for node in root.iter():
        if node.tag == "BrushLabels" and node.get("name") and node.get("toName"):
            labels = [str(c.get("value")) for c in node if c.tag == "Label" and c.get("value")]
            return node.get("name"), node.get("toName"), labels  # type: ignore[return-value]
    return None


class Backend:
    """The state behind the routes: the run, its model, the Label Studio link, the sync
    thread and the ``balseg run`` it may start."""

    def __init__(self, run_dir: str | Path, *, link: Any = None,
                 launcher: Callable[[Path], Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.rundir = RunDir(self.run_dir)
        self.images = RunImages.open(self.run_dir)
        self.config = self.rundir.load_config()
        self._link = link
        self.launcher = launcher or launch_continue
        self._run: Any = None
        self._model_lock = threading.Lock()
        self._wake = threading.Condition()
        self._pending = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.proc: Any = None
        self.syncs = 0
        self.last_error: str | None = None

    # -- model --------------------------------------------------------------------------------
    def model_version(self) -> str:
        latest = self.rundir.latest_checkpoint()
        return "balseg-untrained" if latest is None else f"balseg-cycle-{latest[0]}"

    def _score_name(self) -> str:
        from balseg.acquisition.registry import score_names

        name = self.config.acquisition.strategy
        return name if name in score_names() and name != "random" else UNCERTAINTY_FALLBACK

    @property
    def link(self) -> Any:
        if self._link is None and self.config.oracle.kind == "labelstudio":
            from balseg.labelstudio.sync import LabelStudioLink

            self._link = LabelStudioLink.from_config(self.run_dir, self.config.oracle,
                                                     images=self.images)
        return self._link

    def _image(self, task: dict[str, Any], to_name: str) -> np.ndarray:
        from balseg.data.base import read_rgb

        data = task.get("data") or {}
        image_id = data.get("balseg_image_id")
        if isinstance(image_id, str):
            try:
                return read_rgb(self.images.image_path(image_id))
            except BalsegError:
                pass  # not this run's image: its URL then
        url = data.get(to_name) or data.get(IMAGE)
        if not isinstance(url, str) or not url:
            raise LabelStudioError(f"task {task.get('id')} names no image in data.{to_name}")
        link = self.link
        if link is None:
            raise LabelStudioError(f"task {task.get('id')}: its image is not one of this run's,"
                                   " and the run has no Label Studio (oracle.url) to fetch it"
                                   " from")
        parts, own = urlsplit(url), urlsplit(link.url)
        if parts.netloc and (parts.scheme, parts.netloc) != (own.scheme, own.netloc):
            raise LabelStudioError(f"task {task.get('id')}: its image is not on {link.url}:"
                                   " not fetched")
        from PIL import Image

        raw = link.client.get_bytes(parts.path + (f"?{parts.query}" if parts.query else ""))
        with Image.open(io.BytesIO(raw)) as im:
            return np.asarray(im.convert("RGB"))

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        tasks = body.get("tasks") or []
        version = self.model_version()
        target = brush_target(body.get("label_config")) or (MASK, IMAGE,
                                                             list(self.images.class_names))
        from_name, to_name, labels = target
        names = [n if n in labels else "" for n in self.images.class_names]
        results: list[dict[str, Any]] = []
        for task in tasks if isinstance(tasks, list) else []:
            if version == "balseg-untrained" or not isinstance(task, dict):
                results.append({"result": [], "score": None, "model_version": version})
                continue
            try:
                image = self._image(task, to_name)
                with self._model_lock:
                    if self._run is None:
                        import balseg

                        self._run = balseg.load_run(self.run_dir)
                    pred = self._run.predict(image)[0]
                    score = float(np.nanmean(self._run.scores(image, self._score_name())[0]))
            except BalsegError as err:
                log.warning("no prediction for task %s: %s", task.get("id"), err)
                results.append({"result": [], "score": None, "model_version": version})
                continue
            regions = [r for r in brush_results(pred.classes, self.images.class_names,
                                                from_name=from_name, to_name=to_name,
                                                names=names)
                       if r["value"]["brushlabels"][0]]
            results.append({"result": regions, "score": score, "model_version": version})
        return {"results": results, "model_version": version}

    # -- sync in the background -----------------------------------------------------------------
    def schedule_sync(self) -> bool:
        """Ask the sync thread for one more sync (coalesced); False without Label Studio."""
        if self.config.oracle.kind != "labelstudio":
            return False
        with self._wake:
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._worker, name="balseg-ls-sync",
                                                daemon=True)
                self._thread.start()
            self._wake.notify()
        return True

    def _worker(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopped:
                    self._wake.wait()
                if self._stopped:
                    return
                self._pending = False
            try:
                self.sync_once()
                self.last_error = None
            except BalsegError as err:
                self.last_error = str(err)
                log.warning("sync with Label Studio failed: %s", err)
            except Exception as err:  # a bug: keep the server up, say it
                self.last_error = f"{type(err).__name__}: {err}"
                log.exception("sync with Label Studio failed")

    def sync_once(self) -> None:
        """Pull and push once, then start ``balseg run`` when the latest cycle is answered."""
        store = LabelStore(self.rundir.labels, num_classes=self.images.num_classes)
        try:
            self.link.sync(store)
            self.syncs += 1
            self._maybe_continue(store)
        finally:
            store.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _maybe_continue(self, store: LabelStore) -> None:
        if self.running():
            return
        with store.transaction() as tx:
            latest = tx.latest_cycle()
            if latest is None or tx.cycle_tally(latest).open:
                return
            metrics = {int(r["cycle"]) for r in self.rundir.read_metrics() if "cycle" in r}
            if latest >= self.config.budget.cycles and latest in metrics:
                return  # the run is finished
            done = tx.get_meta(CONTINUE_META)
            if done is not None and done.isdigit() and int(done) >= latest:
                return
            tx.set_meta(CONTINUE_META, str(latest))
        self.proc = self.launcher(self.run_dir)

    def status(self) -> dict[str, Any]:
        rc = None if self.proc is None else self.proc.poll()
        return {"model_version": self.model_version(), "syncs": self.syncs,
                "last_error": self.last_error,
                "run": "idle" if self.proc is None else "running" if rc is None else
                "finished" if rc == 0 else "failed", "returncode": rc}

    def close(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._link is not None:
            self._link.close()


def create_backend(run_dir: str | Path, *, token: str | None = None, link: Any = None,
                   launcher: Callable[[Path], Any] | None = None) -> FastAPI:
    """The ML backend's app for ``run_dir`` (``app.state.backend`` holds its state)."""
    backend = Backend(run_dir, link=link, launcher=launcher)
    app = FastAPI(title="balseg Label Studio ML backend", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.backend = backend

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "UP", "model_class": "balseg", "model_version":
                backend.model_version()}

    @app.post("/setup")
    def setup(body: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:
        return {"model_version": backend.model_version()}

    @app.post("/predict")
    def predict(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        return backend.predict(body)

    @app.post("/webhook")
    def webhook(body: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:
        action = str(body.get("action", ""))
        scheduled = action in SYNC_ACTIONS and backend.schedule_sync()
        return {"status": "ok", "action": action[:64], "sync_scheduled": scheduled}

    @app.post("/train")
    def train(body: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:
        return {"status": "ok", "sync_scheduled": backend.schedule_sync()}

    @app.get("/status")
    def status() -> dict[str, Any]:
        return backend.status()

    app.add_middleware(Guard, token=token, max_body=MAX_BODY_BYTES)
    app.add_middleware(BasicAsToken)
    return app


def serve_backend(run_dir: str | Path, host: str = "127.0.0.1", port: int = 9090,
                  token: str | None = None) -> None:
    """Serve the ML backend until interrupted; prints how to connect it."""
    import uvicorn

    from balseg.annotate.guard import is_loopback
    from balseg.annotate.server import check_port, decide_token, page_url

    token = decide_token(host, token)
    check_port(host, port)
    app = create_backend(run_dir, token=token)
    url = page_url(host, port, None).rstrip("/")
    print(f"balseg labelstudio-backend: in Label Studio, project Settings -> Model -> Connect"
          f" model, URL {url}", flush=True)
    if token is not None and not is_loopback(host):
        print(f"  Authentication: Basic, any user name, password {token}", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        app.state.backend.close()
