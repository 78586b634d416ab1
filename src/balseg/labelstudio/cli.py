"""CLI commands of the Label Studio link: ``sync`` and ``labelstudio-backend``.

Nothing heavy is imported at module level (httpx, FastAPI and uvicorn load inside the
commands; torch only when the backend predicts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from balseg.annotate.cli import HostOpt, PortOpt
from balseg.rundir import CONFIG, LABELS

RunDirArg = Annotated[Path, typer.Argument(help=f"Run directory (holds {CONFIG} and {LABELS})"
                                                ".", show_default=False)]


def sync(run_dir: RunDirArg) -> None:
    """Pull Label Studio's new annotations into the run's label database and upload the
    open queries that have no task; continue with `balseg run RUN_DIR`."""
    from balseg.annotate.rundata import RunImages
    from balseg.errors import ConfigError
    from balseg.labelstudio.sync import LabelStudioLink
    from balseg.rundir import RunDir

    rundir = RunDir(run_dir)
    if not rundir.exists():
        raise ConfigError(f"{run_dir} is not a run directory (it has no {CONFIG})")
    cfg = rundir.load_config()
    if cfg.oracle.kind != "labelstudio":
        raise ConfigError(f"{rundir.config}: oracle.kind is {cfg.oracle.kind!r}; `balseg sync`"
                          " is for runs with oracle.kind: labelstudio")
    images = RunImages.open(run_dir)
    link = LabelStudioLink.from_config(run_dir, cfg.oracle, images=images)
    try:
        with images.open_store(check=True) as store:
            report = link.sync(store)
            with store.snapshot() as s:
                cycle = s.current_cycle()
                t = s.cycle_tally(cycle) if cycle is not None else None
    finally:
        link.close()
    typer.echo(report.summary())
    if t is not None:
        typer.echo(f"cycle {cycle}: {t.answered} of {t.total} queries answered"
                   + (f"; continue with: balseg run {run_dir}" if not t.open else ""))


def labelstudio_backend(
    run_dir: RunDirArg,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 9090,
    token: Annotated[str | None, typer.Option(
        help="Token every request must carry (generated when --host is not loopback); "
             "Label Studio sends it as the password of Basic auth.",
        envvar="BALSEG_BACKEND_TOKEN", show_default=False)] = None,
) -> None:
    """Serve Label Studio's ML-backend protocol for a run: predictions (the model's mask
    and uncertainty) and webhooks that pull answers and continue the run."""
    from balseg.labelstudio.backend import serve_backend

    serve_backend(run_dir, host, port, token)


COMMANDS = {"sync": sync, "labelstudio-backend": labelstudio_backend}
