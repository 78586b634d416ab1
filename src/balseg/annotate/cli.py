"""CLI commands of the annotation app and the label database: ``annotate``, ``export``,
``import`` and ``backup``.

Heavy imports (FastAPI, uvicorn, PIL) happen inside the commands so ``balseg --help`` and
the other concerns' commands stay fast; nothing here imports torch. Commands raise
``BalsegError``s and leave printing them to the CLI's one handler (``balseg.cli.guarded``).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer

from balseg.errors import InteropError, RunDirError
from balseg.fsutil import atomic_open
from balseg.rundir import BACKUPS, DATASET, LABELS

EXIT_PROBLEMS = 1
"""``import``: the file was read, but some points did not become answers (or there were none)."""


class ToolFormat(str, Enum):
    label_studio = "label-studio"
    cvat = "cvat"


# the listening options of every server command (annotate, labelstudio-backend)
HostOpt = Annotated[str, typer.Option(help="Address to listen on; anything but loopback "
                                           "requires a token.")]
PortOpt = Annotated[int, typer.Option(min=1, max=65535)]
RunDirArg = Annotated[Path, typer.Argument(help=f"Run directory (holds {DATASET} and "
                                                 f"{LABELS}).", show_default=False)]
DEFAULT_URL_PREFIX = "/data/local-files/?d="
UrlPrefixOption = Annotated[str, typer.Option(
    help="Label Studio: prefix of image URLs; the image path relative to the dataset root is"
         " appended (import: how tasks that carry only data.image are matched).")]


def user_file_mode() -> int:
    """The mode a new file of this user gets (0666 less the umask), as ``open`` would give.

    Read from /proc where there is one, so the process umask is never changed.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_export(path: Path, text: str) -> None:
    """Atomically (a crash never leaves half an export), with the user's normal file mode."""
    try:
        with atomic_open(path) as f:
            f.write(text.encode("utf-8"))
            os.fchmod(f.fileno(), user_file_mode())
    except OSError as err:
        raise RunDirError(f"cannot write {path}: {err.strerror or err}") from None


def _cvat_names(data: object, image_ids: list[str]) -> dict[str, str]:
    """Basenames when they are unique (what a CVAT task made from loose files shows), else
    paths relative to the dataset root."""
    rel = {i: data.image_relpath(i) for i in image_ids}  # type: ignore[attr-defined]
    base = {i: posixpath.basename(r) for i, r in rel.items()}
    return base if len(set(base.values())) == len(base) else rel


def _image_urls(data: object, prefix: str) -> Callable[[str], str]:
    def url_for(image_id: str) -> str:
        return prefix + quote(data.image_relpath(image_id))  # type: ignore[attr-defined]

    return url_for


def annotate(
    run_dir: RunDirArg,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8765,
    token: Annotated[str | None, typer.Option(
        help="Token every request must carry (generated when --host is not loopback).",
        envvar="BALSEG_ANNOTATE_TOKEN", show_default=False)] = None,
    keys: Annotated[str | None, typer.Option(
        "--keys", "--annotator-keys",
        help="One key per class in class order, e.g. 'asdfjkl' or 'a,s,d' "
             "(default 1-9, 0, then letters; u, s, z, [, ], \\ are reserved).",
        show_default=False)] = None,
    lease_ttl: Annotated[float, typer.Option(
        min=10.0, help="Seconds a query stays with one annotator without activity.")] = 120.0,
    continue_run: Annotated[bool, typer.Option(
        "--continue-run", help="Start `balseg run RUN_DIR` when the cycle is answered.")
    ] = False,
    checkpoint_every: Annotated[float, typer.Option(
        min=0.05, help=f"Seconds between copies of the write-ahead log into {LABELS} "
                       "(also done at exit).")] = 30.0,
) -> None:
    """Serve the annotation page: answer a run's pixel queries with the keyboard."""
    from balseg.annotate.server import serve

    serve(run_dir, host, port, token, keys=keys, lease_ttl_s=lease_ttl,
          continue_run=continue_run, checkpoint_interval_s=checkpoint_every)


def export(
    run_dir: RunDirArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")],
    fmt: Annotated[ToolFormat, typer.Option("--format", "-f")] = ToolFormat.label_studio,
    cycle: Annotated[int | None, typer.Option(
        min=0, help="Cycle to export (default: the latest with open queries).",
        show_default=False)] = None,
    image_url_prefix: UrlPrefixOption = DEFAULT_URL_PREFIX,
) -> None:
    """Export a cycle's open queries as Label Studio tasks or CVAT points."""
    import json

    from balseg.annotate.interop import export_cvat, export_label_studio, label_studio_config
    from balseg.annotate.rundata import RunImages

    data = RunImages.open(run_dir)
    with data.open_store(check=True) as store:
        if cycle is None:
            open_q = store.open_queries()
            if not open_q:
                raise InteropError(f"{data.rundir.labels}: no open query in this run")
            cycle = max(q.cycle for q in open_q)
        ids = sorted({q.image_id for q in store.open_queries(cycle=cycle)})
        if fmt is ToolFormat.label_studio:
            tasks = export_label_studio(store, cycle, _image_urls(data, image_url_prefix),
                                        data.class_names, data.image_size)
            config = out.with_name(out.stem + ".config.xml")
            write_export(out, json.dumps(tasks, indent=1) + "\n")
            write_export(config, label_studio_config(data.class_names, data.palette))
            typer.echo(f"wrote {len(tasks)} tasks to {out} and the labeling config to {config}")
        else:
            names = _cvat_names(data, ids)
            xml = export_cvat(store, cycle, names.__getitem__, data.class_names,
                              data.image_size, data.palette)
            write_export(out, xml)
            typer.echo(f"wrote {len(ids)} images to {out}")


def import_(
    run_dir: RunDirArg,
    file: Annotated[Path, typer.Argument(help="The tool's export (Label Studio JSON or CVAT "
                                              "for images 1.1 XML).", show_default=False)],
    annotator: Annotated[str, typer.Option(help="Name stored with every imported answer.")],
    fmt: Annotated[ToolFormat, typer.Option("--format", "-f")] = ToolFormat.label_studio,
    tolerance: Annotated[int, typer.Option(
        min=0, max=10, help="Pixels a point may lie off its query.")] = 1,
    image_url_prefix: UrlPrefixOption = DEFAULT_URL_PREFIX,
) -> None:
    """Import labeled points back as answers; exit 1 when some points did not match or the
    file held none, 2 when it cannot be used at all (then nothing is written)."""
    from balseg.annotate.interop import import_cvat, import_label_studio
    from balseg.annotate.rundata import RunImages
    from balseg.annotate.service import check_annotator
    from balseg.errors import BalsegError

    annotator = check_annotator(annotator)
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise InteropError(f"cannot read {file}: {err.strerror or err}") from None
    data = RunImages.open(run_dir)
    with data.open_store(check=True) as store:
        try:
            if fmt is ToolFormat.label_studio:
                url_for = _image_urls(data, image_url_prefix)

                def known_url(image_id: str) -> str:
                    try:
                        return url_for(image_id)
                    except BalsegError:  # a missing image file: matched by id only
                        return ""

                report = import_label_studio(
                    store, raw, annotator=annotator, class_names=data.class_names,
                    image_size_for=data.image_size, image_url_for=known_url,
                    tolerance=tolerance)
            else:
                ids = sorted({q.image_id for q in store.queries()})
                names = _cvat_names(data, ids)
                report = import_cvat(store, raw, annotator=annotator,
                                     class_names=data.class_names,
                                     image_name_for=names.__getitem__, tolerance=tolerance)
        except InteropError as err:
            raise InteropError(f"{file}: {err} (nothing was written)") from None
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(EXIT_PROBLEMS)


def backup(
    run_dir: RunDirArg,
    dest: Annotated[str | None, typer.Argument(
        help="File to write, or a folder to write a time-stamped copy into (an existing one,"
             " or any path ending in /; default: "
             f"RUN_DIR/{BACKUPS}/).", show_default=False)] = None,
) -> None:
    """Copy the label database consistently, even while servers and runs write to it.

    The copy is one self-contained file (no -wal or -shm beside it) holding every committed
    answer, also those still only in labels.sqlite-wal (a server stopped on a full disk)."""
    from balseg.labels.store import LabelStore
    from balseg.rundir import RunDir

    rundir = RunDir(run_dir)
    if not rundir.path.is_dir():
        raise RunDirError(f"run directory does not exist: {rundir.path}")
    if not rundir.labels.is_file():
        raise RunDirError(f"{rundir.labels} is missing: nothing to back up")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    if dest is None:
        target = rundir.backup_file(stamp)
    elif Path(dest).is_dir() or dest.endswith(("/", os.sep)):  # a folder, maybe to create
        target = Path(dest) / rundir.backup_file(stamp).name
    else:
        target = Path(dest)
    if target.exists() and target.resolve() == rundir.labels.resolve():
        raise RunDirError(f"{target} is the label database itself: back it up elsewhere")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create {target.parent}: {err.strerror or err}") from None
    with LabelStore(rundir.labels, readonly=True) as store:
        store.check()
        try:
            store.backup_to(target)
        except OSError as err:
            raise RunDirError(f"cannot write {target}: {err.strerror or err}") from None
    with LabelStore(target, readonly=True) as copy:
        copy.check()
        counts = copy.counts()
    typer.echo(f"backed up {counts['queries']} queries ({counts['answered']} answered) to"
               f" {target}")


COMMANDS = {"annotate": annotate, "export": export, "import": import_, "backup": backup}
