"""README's "Quick start: your own images", command by command, as a newcomer runs it.

The commands are read from README.md (a changed or added command fails here until this
test knows it) and run in a fresh folder holding `configs/folder.yaml` (copied from the
repository) and `my-images/`: once with pictures only (flat `images/`, no masks, nothing to
evaluate on) and once with `train/` + a labelled `val/`. `balseg run`, `report` and
`evaluate` go through the CLI in this process; `balseg annotate` is started as its own
process, and the queries are answered through its HTTP API as the page does, with the
class a person sees at that pixel, then the server is stopped with Ctrl-C.

The only change to the README's commands: the first `run` gets the overrides of
`own_folder.fast()` (a tiny model budget, images at their own 40x56) so that a run takes
seconds; `resume` and the rest use the run directory's snapshot, as the user's would.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from balseg.cli import _register_all, app
from balseg.labels import LabelStore

from .own_folder import fast, make_folder, set_args, truth

REPO = Path(__file__).resolve().parents[2]
RUN = "runs/my-images"


def quickstart_commands() -> list[list[str]]:
    """The balseg commands of the README's quick start (the bash block), as argv lists
    without the leading `.venv/bin/balseg`."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start: your own images", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the quick start has one bash block"
    commands = []
    for line in blocks[0].splitlines():
        line = line.split("  #", 1)[0].strip()
        if not line:
            continue
        argv = shlex.split(line)
        assert argv[0] in (".venv/bin/balseg", "balseg"), line
        commands.append(argv[1:])
    return commands


def test_the_quick_start_commands_are_the_ones_this_test_runs():
    assert quickstart_commands() == [
        ["run", "configs/folder.yaml", "--set", "data.root=my-images"],
        ["annotate", RUN],
        ["run", RUN],
        ["report", RUN],
        ["evaluate", RUN, "--split", "val"],
        ["run", RUN, "--set", "budget.cycles=6"],
    ]
    cfg = yaml.safe_load((REPO / "configs" / "folder.yaml").read_text())
    assert cfg["name"] == "my-images" and cfg["oracle"]["kind"] == "person"
    assert cfg["data"]["options"]["require_masks"] is False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def annotate_as_a_person(argv: list[str], cwd: Path) -> int:
    """`balseg annotate RUN` in its own process; answer every query through the HTTP API as
    the page does; Ctrl-C. Returns how many answers were given."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "balseg", *argv, "--port", str(port)],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    given = 0
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=url, timeout=10) as client:
            while True:
                try:
                    if client.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"balseg annotate did not start: {proc.stdout.read()}")
                time.sleep(0.1)
            assert client.get("/").status_code == 200  # the page the browser opens
            classes = [c["name"] for c in client.get("/api/info").json()["classes"]]
            assert classes == ["sky", "road", "car"]
            while True:
                shown = client.post("/api/next", json={"annotator": "newcomer"})
                assert shown.status_code == 200, shown.text
                query = shown.json()["query"]
                if query is None:
                    break
                assert client.get(query["image_url"]).status_code == 200  # the picture
                label = truth(query["image_id"], query["y"], query["x"])
                answer = client.post("/api/answer", json={
                    "annotator": "newcomer", "query_id": query["id"], "label": label})
                assert answer.status_code == 200, answer.text
                given += 1
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, as the README says
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert f"http://127.0.0.1:{port}/" in out  # the address to open
    assert proc.returncode in (0, 130), out
    return given


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["flat", "split"])
def test_quick_start_from_a_folder_of_images_to_a_trained_model(tmp_path, monkeypatch, layout):
    work = tmp_path / "work"
    (work / "configs").mkdir(parents=True)
    shutil.copy(REPO / "configs" / "folder.yaml", work / "configs" / "folder.yaml")
    make_folder(work / "my-images", layout=layout, masks=layout == "split", n=4)
    monkeypatch.chdir(work)
    _register_all()
    cli = CliRunner()
    run_dir = work / RUN
    n_pool = 4
    first, annotate, resume, report, evaluate, extend = quickstart_commands()

    started = cli.invoke(app, [*first, *set_args(fast(**{"data.size": None}))])
    assert started.exit_code == 4, started.output  # waiting for the person
    assert f"{n_pool * 4} queries of cycle 0 wait for answers" in started.output
    assert f"balseg annotate {RUN}" in started.output
    if layout == "flat":
        assert "using every image of" in started.output and "evaluating nothing" in started.output

    rounds = 0
    while True:  # "repeat annotate and run until run prints done:"
        assert annotate_as_a_person(annotate, work) > 0
        result = cli.invoke(app, resume)
        rounds += 1
        if result.exit_code == 0:
            break
        assert result.exit_code == 4, result.output
        assert rounds < 5
    assert rounds == 2  # cycle 0's and cycle 1's questions
    assert f"done: {RUN}" in result.output
    assert (run_dir / "checkpoints" / "cycle_001.pt").is_file()  # the trained model
    with LabelStore(run_dir / "labels.sqlite", readonly=True) as store:
        answers = store.answers()
        assert len(answers) == n_pool * (4 + 3) and {a.source for a in answers} == {"person"}
        assert not store.open_queries()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows] == (["none"] * 2 if layout == "flat" else ["val"] * 2)

    shown = cli.invoke(app, report)
    assert shown.exit_code == 0, shown.output
    page = (run_dir / "report" / "index.html").read_text()
    assert "Answers per class, by query cycle" in page and "overlays/" in page

    measured = cli.invoke(app, evaluate)
    if layout == "split":
        assert measured.exit_code == 0, measured.output
        assert re.search(r"mIoU 0\.\d{4} on val \(cycle 1\)\n", measured.output)
        assert (run_dir / "eval_val.json").is_file()
    else:  # no val/ folder: one line saying which folder is missing
        assert measured.exit_code == 2
        missing = work / "my-images" / "val" / "images"
        assert measured.output.strip() == (
            f"error: folder split 'val' not found: no folder {missing} (a split is"
            " <root>/<split>/images, its masks in <root>/<split>/masks)")

    more = cli.invoke(app, extend)
    assert more.exit_code == 4, more.output
    assert f"extending {RUN} from 1 to 6 cycles" in more.output
    assert f"{n_pool * 3} queries of cycle 2 wait for answers" in more.output


def test_readme_lists_the_files_of_a_run_and_how_to_back_it_up():
    from balseg.rundir import layout_markdown

    text = (REPO / "README.md").read_text()
    assert layout_markdown() in text, "copy `python -m balseg.rundir` into README.md"
    assert "`balseg backup RUN_DIR DEST`" in text


def test_the_quick_start_leaves_nothing_untracked_in_the_repository():
    """Issue 29: `my-images/` in the repository root showed as untracked. The quick start's
    data folder and its run directory are ignored."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("my-images/classes.txt", "my-images/train/images/a.png",
                 "runs/my-images/labels.sqlite"):
        checked = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
        assert checked.returncode == 0, f"{path} is not ignored by .gitignore"
