"""CLI commands of the annotation app: ``annotate``, ``export`` and ``import``.

Heavy imports (FastAPI, uvicorn, PIL) happen inside the commands so ``balseg --help`` and
the other concerns' commands stay fast.
"""

from __future__ import annotations

import posixpath
from enum import Enum
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer

from balseg.fsutil import atomic_write_bytes


class ToolFormat(str, Enum):
    label_studio = "label-studio"
    cvat = "cvat"


RunDirArg = Annotated[Path, typer.Argument(help="Run directory (holds dataset.json and "
                                                 "labels.sqlite).", show_default=False)]


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _write_atomic(path: Path, text: str) -> None:
    """A crash never leaves half an export behind."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _cvat_names(data: object, image_ids: list[str]) -> dict[str, str]:
    """Basenames when they are unique (what a CVAT task made from loose files shows), else
    paths relative to the dataset root."""
    rel = {i: data.image_relpath(i) for i in image_ids}  # type: ignore[attr-defined]
    base = {i: posixpath.basename(r) for i, r in rel.items()}
    return base if len(set(base.values())) == len(base) else rel


def annotate(
    run_dir: RunDirArg,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback "
                                           "requires a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8765,
    token: Annotated[str | None, typer.Option(
        help="Token every request must carry (generated when --host is not loopback).",
        envvar="BALSEG_ANNOTATE_TOKEN", show_default=False)] = None,
    keys: Annotated[str | None, typer.Option(
        "--keys", "--annotator-keys",
        help="One key per class in class order, e.g. 'asdfjkl' or 'a,s,d' "
             "(default 1-9, 0, then letters; u, s, z are reserved).",
        show_default=False)] = None,
    lease_ttl: Annotated[float, typer.Option(
        min=10.0, help="Seconds a query stays with one annotator without activity.")] = 120.0,
    continue_run: Annotated[bool, typer.Option(
        "--continue-run", help="Start `balseg run RUN_DIR` when the cycle is answered.")
    ] = False,
) -> None:
    """Serve the annotation page: answer a run's pixel queries with the keyboard."""
    from balseg.annotate.rundata import RunDataError
    from balseg.annotate.server import serve
    from balseg.labels.store import LabelStoreError

    try:
        serve(run_dir, host, port, token, keys=keys, lease_ttl_s=lease_ttl,
              continue_run=continue_run)
    except (RunDataError, LabelStoreError, ValueError) as err:
        _fail(str(err))


def export(
    run_dir: RunDirArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")],
    fmt: Annotated[ToolFormat, typer.Option("--format", "-f")] = ToolFormat.label_studio,
    cycle: Annotated[int | None, typer.Option(
        min=0, help="Cycle to export (default: the latest with open queries).",
        show_default=False)] = None,
    image_url_prefix: Annotated[str, typer.Option(
        help="Label Studio: prefix of image URLs; the image path relative to the dataset "
             "root is appended.")] = "/data/local-files/?d=",
) -> None:
    """Export a cycle's open queries as Label Studio tasks or CVAT points."""
    from balseg.annotate.interop import (
        InteropError,
        export_cvat,
        export_label_studio,
        label_studio_config,
    )
    from balseg.annotate.rundata import ImageAccessError, RunData, RunDataError
    from balseg.labels.store import LabelStoreError

    try:
        data = RunData.open(run_dir)
        with data.open_store() as store:
            if cycle is None:
                open_q = store.open_queries()
                if not open_q:
                    _fail("no open query in this run")
                cycle = max(q.cycle for q in open_q)
            ids = sorted({q.image_id for q in store.open_queries(cycle=cycle)})
            if fmt is ToolFormat.label_studio:
                import json

                tasks = export_label_studio(
                    store, cycle,
                    lambda i: image_url_prefix + quote(data.image_relpath(i)),
                    data.class_names, data.image_size)
                config = out.with_name(out.stem + ".config.xml")
                _write_atomic(out, json.dumps(tasks, indent=1) + "\n")
                _write_atomic(config, label_studio_config(data.class_names, data.palette))
                typer.echo(f"wrote {len(tasks)} tasks to {out} and the labeling config to "
                           f"{config}")
            else:
                names = _cvat_names(data, ids)
                xml = export_cvat(store, cycle, names.__getitem__, data.class_names,
                                  data.image_size, data.palette)
                _write_atomic(out, xml)
                typer.echo(f"wrote {len(ids)} images to {out}")
    except (RunDataError, LabelStoreError, InteropError, ImageAccessError) as err:
        _fail(str(err))


def import_(
    run_dir: RunDirArg,
    file: Annotated[Path, typer.Argument(help="The tool's export (Label Studio JSON or CVAT "
                                              "for images 1.1 XML).", show_default=False)],
    annotator: Annotated[str, typer.Option(help="Name stored with every imported answer.")],
    fmt: Annotated[ToolFormat, typer.Option("--format", "-f")] = ToolFormat.label_studio,
    tolerance: Annotated[int, typer.Option(
        min=0, max=10, help="Pixels a point may lie off its query.")] = 1,
) -> None:
    """Import labeled points back as answers; exit 1 when some points did not match."""
    from balseg.annotate.app import check_annotator
    from balseg.annotate.interop import InteropError, import_cvat, import_label_studio
    from balseg.annotate.rundata import ImageAccessError, RunData, RunDataError
    from balseg.labels.store import LabelStoreError

    try:
        annotator = check_annotator(annotator)
        raw = file.read_bytes()
        data = RunData.open(run_dir)
        with data.open_store() as store:
            if fmt is ToolFormat.label_studio:
                report = import_label_studio(
                    store, raw, annotator=annotator, class_names=data.class_names,
                    image_size_for=data.image_size, tolerance=tolerance)
            else:
                ids = sorted({q.image_id for q in store.queries()})
                names = _cvat_names(data, ids)
                report = import_cvat(store, raw, annotator=annotator,
                                     class_names=data.class_names,
                                     image_name_for=names.__getitem__, tolerance=tolerance)
    except OSError as err:
        _fail(f"cannot read {file}: {err}")
    except (RunDataError, LabelStoreError, InteropError, ImageAccessError, ValueError) as err:
        _fail(f"{err} (nothing was written)")
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)


COMMANDS = {"annotate": annotate, "export": export, "import": import_}
