"""CLI commands of the experiments: ``bench`` (strategies x seeds) and ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def bench(
    config: Annotated[Path, typer.Argument(help="base config of every run")],
    out: Annotated[Path, typer.Option(help="folder of the runs")] = Path("runs/bench"),
    strategy: Annotated[list[str] | None, typer.Option(
        help="repeatable; score[+pixelpick[N]|+classes[N]|+contour[N]][+compat]"
             "[+first<score>][@seeds] (N: pool %); default: the config's bench.strategies"
             " (every baseline if it has none)")] = None,
    seed: Annotated[list[int] | None, typer.Option(
        help="repeatable; default: the config's bench.seeds (0 1 2 if it has none)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set")] = None,
    report: Annotated[bool, typer.Option(help="write the report at the end")] = True,
    baseline: Annotated[str | None, typer.Option(
        help="the report pairs every strategy with this one, seed by seed (default"
             " margin+pixelpick when benched)")] = None,
    share_cycle0: Annotated[bool, typer.Option(
        help="train cycle 0 once per seed and start every strategy from it")] = True,
    quiet: bool = False,
) -> None:
    """Compare strategies x seeds on one config (resumable; finished runs are skipped)."""
    from balseg.config import load_config
    from balseg.experiments.bench import run_bench

    base = load_config(config, set_ or [])
    strategies = strategy or base.bench.strategies
    if report:  # a baseline none of the strategies is fails now, not after the runs
        from balseg.report.paired import check_baseline

        check_baseline(baseline, strategies)
    dirs = run_bench(base, out, strategies, seed or base.bench.seeds,
                     progress=not quiet, share_cycle0=share_cycle0)
    if report:
        from balseg.report import make_report

        typer.echo(f"report: {make_report(dirs, out / 'report', baseline=baseline)}")


def demo(
    run_root: Annotated[Path, typer.Option(help="where the demo runs go")] = Path("runs/demo"),
    quiet: bool = False,
) -> None:
    """BalEntAcq against random on the built-in synthetic dataset, then a report; the last
    line says which reached which mIoU and how long it took."""
    import time

    from balseg.experiments.demo import run_demo

    start = time.perf_counter()
    result = run_demo(run_root, progress=not quiet)
    typer.echo(f"{result.conclusion}; report: {result.report}"
               f" (took {time.perf_counter() - start:.0f} s)")


COMMANDS = {"bench": bench, "demo": demo}
