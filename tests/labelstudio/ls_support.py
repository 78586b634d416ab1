"""Helpers of the Label Studio tests: the server process, tiny runs, annotating as the page does.

The server comes from its own virtualenv (``make .venv-labelstudio/.installed-<version>``,
which ``make test`` builds): Label Studio pins versions balseg does not (Django, pydantic,
numpy), so it never shares balseg's ``.venv``. One server for the whole session, on a free
loopback port, with a fresh data folder (a copy of the migrated empty database the Makefile
made, so it starts in seconds), a created user and a legacy API token. Outbound calls are
off (version check, analytics); the browser test refuses any request to another host.

Without the virtualenv the tests skip locally and fail on CI, like the browser tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
LS_VENV = Path(os.environ.get("BALSEG_LABEL_STUDIO_VENV", REPO / ".venv-labelstudio"))
LS_BIN = LS_VENV / "bin" / "label-studio"
LS_PYTHON = LS_VENV / "bin" / "python"
SEED_DB = LS_VENV / "seed" / "label_studio.sqlite3"
USER = "annotator@example.org"
PASSWORD = "balseg-test-password"
TOKEN = "balsegtesttoken0123456789abcdef01234567"
START_TIMEOUT_S = 300.0


def require_label_studio() -> None:
    if LS_BIN.exists():
        return
    problem = f"{LS_BIN} is missing (make .venv-labelstudio/.installed-1.23.2)"
    if os.environ.get("CI"):
        pytest.fail(f"Label Studio tests cannot run on CI: {problem}")
    pytest.skip(problem)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LabelStudioServer:
    """``label-studio start`` on a loopback port with its own data folder."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.start_seconds: list[float] = []
        self.cpu_used = 0.0  # CPU seconds of the servers stopped so far

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LABEL_STUDIO_", "DJANGO_", "VIRTUAL_ENV"))}
        env.update({
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "HOME": str(self.data_dir),  # nothing written under the user's home
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",  # --user-token's kind
            "ML_BLOCK_LOCAL_IP": "false",  # the ML backend runs on 127.0.0.1
            "SSRF_PROTECTION_ENABLED": "false",  # ... and so does its webhook
            "LOG_LEVEL": "WARNING",
            "PATH": f"{LS_VENV / 'bin'}:{os.environ.get('PATH', '')}",
        })
        return env

    def start(self) -> None:
        if not (self.data_dir / "label_studio.sqlite3").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if SEED_DB.exists():  # migrated once by the Makefile
                shutil.copy(SEED_DB, self.data_dir / "label_studio.sqlite3")
        t0 = time.perf_counter()
        log = open(self.log, "ab")  # noqa: SIM115 - the child holds it
        try:
            self.proc = subprocess.Popen(
                [str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1",
                 "--port", str(self.port), "--username", USER, "--password", PASSWORD,
                 "--user-token", TOKEN],
                env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.data_dir)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label-studio exited ({self.proc.returncode}):\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.start_seconds.append(time.perf_counter() - t0)
                    return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"label-studio did not answer /health within {START_TIMEOUT_S} s:\n"
                           + self.log.read_text(errors="replace")[-3000:])

    def cpu_seconds(self) -> float:
        """CPU time the running server has used (user + system), from /proc."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.cpu_used += self.cpu_seconds()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


def run_config(tmp_path: Path, root: Path, url: str, project: Any, **overrides: Any) -> Path:
    """tests/loop's tiny run made tinier (3 images of 48x64, 2 queried pixels per image and
    cycle, one acquisition cycle) with Label Studio as its oracle; its config file."""
    from ..loop.conftest import tiny_config

    cfg = tiny_config(root, **{
        "name": "ls-tiny", "seed": 5, "overlay_images": 0,
        "data.options": {"num_train": 3, "num_val": 2, "size": [48, 64]},
        "train.batch_size": 3, "train.steps": 2, "acquisition.strategy": "entropy",
        "acquisition.mc_samples": 2, "acquisition.score_batch_size": 3,
        "budget.initial_pixels_per_image": 2, "budget.pixels_per_cycle": 2,
        "budget.cycles": 1, "oracle": {"kind": "labelstudio", "url": url, "project": project},
        **overrides})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def waiting_run(server: Any, ls: Any, root: Path, tmp_path: Path, title: str,
                **overrides: Any) -> tuple[Path, int]:
    """A run whose cycle 0 waits in Label Studio project ``title``: (run dir, project id)."""
    cfg = run_config(tmp_path, root, server.url, title, **overrides)
    run_dir = tmp_path / "run"
    r = balseg("run", cfg, "--run-dir", run_dir, "--quiet")
    assert r.exit_code == 4, r.output
    return run_dir, project_of(ls, title)["id"]


def balseg(*args: Any, token: str | None = TOKEN) -> Any:
    """``balseg ARGS...`` in-process, with the API token in the environment."""
    from balseg.cli import _register_all, app

    _register_all()
    env = {"LABEL_STUDIO_API_KEY": token} if token is not None else {}
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def project_of(ls: Any, title: str) -> dict[str, Any]:
    found = ls.projects_titled(title)
    assert len(found) == 1, found
    return ls.project(found[0]["id"])


def tasks_of(ls: Any, project_id: int) -> list[dict[str, Any]]:
    return list(ls.tasks(project_id))


def annotate(ls: Any, task: dict[str, Any], choice: str) -> dict[str, Any]:
    """Submit an annotation as Label Studio's page does: the pre-annotated point (copied
    from the prediction) and the chosen class."""
    pred = task["predictions"][0]
    point = {**pred["result"][0], "origin": "prediction"}
    body = {"result": [point, {"id": f"c{task['id']}", "type": "choices",
                               "from_name": "class", "to_name": "image", "origin": "manual",
                               "value": {"choices": [choice]}}],
            "lead_time": 2.5, "parent_prediction": pred["id"], "project": task["project"],
            "started_at": "2026-01-01T00:00:00Z"}
    return ls.request("POST", f"/api/tasks/{task['id']}/annotations",
                      params={"project": task["project"]}, json=body)


def reannotate(ls: Any, annotation: dict[str, Any], choice: str) -> dict[str, Any]:
    """Change an annotation's class (Label Studio's *Update*)."""
    result = [r for r in annotation["result"] if r.get("type") != "choices"]
    result.append({"id": "c-again", "type": "choices", "from_name": "class",
                   "to_name": "image", "origin": "manual", "value": {"choices": [choice]}})
    return ls.request("PATCH", f"/api/annotations/{annotation['id']}", json={"result": result})
