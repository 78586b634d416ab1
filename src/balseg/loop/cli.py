"""CLI commands of the loop: ``run`` (start, resume, extend) and ``evaluate``."""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's or `kill`'s stop) ends the run as Ctrl-C does: the time spent
    is saved and the resume command printed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(
    target: Annotated[Path, typer.Argument(help="CONFIG.yaml to start, or RUN_DIR to resume")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="override a config key: --set train.steps=100")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="default: runs/<name>")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Run pixel-level active learning until the budget is spent (resumes if interrupted).

    Exit status: 0 done, 2 bad input, 3 a process of a multi-process run failed, 4 waiting
    for people's answers (person or labelstudio oracle), 130 interrupted.
    """
    from balseg.distributed import init_distributed, shutdown
    from balseg.errors import EXIT_WAITING, BalsegError, Interrupted
    from balseg.loop import ActiveLearningLoop
    from balseg.loop.session import open_run

    cfg, directory = open_run(target, set_ or [], run_dir)
    fresh = not directory.exists()  # a first start that fails before its loop exists
    ctx = init_distributed(cfg.device)  # leaves no folder behind (a missing data.root, ...)
    loop = None
    try:
        with _sigterm_as_interrupt():
            loop = ActiveLearningLoop.from_config(cfg, directory, progress=not quiet, ctx=ctx)
            result = loop.run()
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; every finished step is kept: resume with `balseg run"
                          f" {directory}`") from None
    except BalsegError as err:
        if ctx.enabled:  # say which process failed
            err.args = (f"(rank {ctx.rank} of {ctx.world_size}) {err}",)
        if fresh and loop is None and ctx.is_main:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        if loop is not None:
            loop.close()
            if hasattr(loop.oracle, "close"):
                loop.oracle.close()
        shutdown(ctx)
    if not ctx.is_main:
        return
    if result.status == "waiting_for_answers":
        hint = getattr(loop.oracle, "waiting_hint", None)  # Label Studio says where
        typer.echo(
            f"{result.open_queries} queries of cycle {result.cycles_done} wait for answers."
            + (f"\n{hint()}" if callable(hint) else
               f"\nAnswer them with: balseg annotate {directory}")
            + f"\nthen continue with: balseg run {directory}"
        )
        raise typer.Exit(EXIT_WAITING)
    rows = [r for r in loop.rundir.read_metrics() if r.get("miou") is not None]
    if rows:
        last = rows[-1]
        typer.echo(f"done: {directory} (mIoU {last['miou']:.4f} on {last['split']} at"
                   f" {last['pixels_per_image']:.0f} pixels/image)")
    else:
        typer.echo(f"done: {directory} (no evaluation split; the model of the last cycle is"
                   f" {loop.rundir.latest_checkpoint()[1]})")


def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    split: Annotated[str, typer.Option(help="split to evaluate, e.g. val or test")] = "val",
    data_root: Annotated[Path | None, typer.Option(help="dataset root, if moved")] = None,
    cycle: Annotated[int | None, typer.Option(help="checkpoint of this cycle (default: the"
                                                   " latest)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1, mps (default:"
                                                    " the run's device)")] = None,
    quiet: bool = False,
) -> None:
    """Evaluate a checkpoint of the run (the latest by default) on any split of its dataset."""
    from balseg.loop.evaluate import evaluate_run

    result = evaluate_run(run_dir, split, data_root, cycle=cycle, progress=not quiet,
                          device=device)
    typer.echo(f"mIoU {result['miou']:.4f} on {split} (cycle {result['cycle']})")
    for name, iou in zip(result["class_names"], result["per_class_iou"], strict=True):
        typer.echo(f"  {name:>20s}  {'-' if iou is None else f'{iou:.4f}'}")


COMMANDS = {"run": run, "evaluate": evaluate}
