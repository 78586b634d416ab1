"""CLI commands of the loop: run (and resume), evaluate, demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: printed as one clear line, exit code 2."""
    from balseg.config import ConfigError
    from balseg.data import DataError
    from balseg.labels import LabelStoreError
    from balseg.models import WeightsUnavailableError

    return (ConfigError, DataError, LabelStoreError, WeightsUnavailableError, ValueError,
            FileNotFoundError)


def fail(err: BaseException) -> typer.Exit:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def open_run(target: Path, overrides: list[str], run_dir: Path | None):
    """A config file starts (or resumes) a run; a run directory resumes it."""
    from balseg.config import ConfigError, load_config, parse_config

    if target.is_dir():
        snapshot = target / "config.yaml"
        if not snapshot.exists():
            raise ConfigError(f"{target} is a folder without config.yaml: not a run directory")
        if overrides:
            raise ConfigError("--set cannot change the config of an existing run directory")
        raw = yaml.safe_load(snapshot.read_text())
        return parse_config(raw, source=str(snapshot)), target
    cfg = load_config(target, overrides)
    return cfg, run_dir or Path("runs") / cfg.name


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        target: Annotated[Path, typer.Argument(help="CONFIG.yaml to start, or RUN_DIR to resume")],
        set_: Annotated[list[str] | None, typer.Option(
            "--set", help="override a config key: --set train.steps=100")] = None,
        run_dir: Annotated[Path | None, typer.Option(help="default: runs/<name>")] = None,
        quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    ) -> None:
        """Run pixel-level active learning until the budget is spent (resumes if interrupted)."""
        from balseg.distributed import DistributedError, init_distributed, shutdown
        from balseg.loop import ActiveLearningLoop

        try:
            cfg, directory = open_run(target, set_ or [], run_dir)
            ctx = init_distributed(cfg.device)
        except user_errors() as err:
            raise fail(err) from None
        try:
            loop = ActiveLearningLoop(cfg, directory, progress=not quiet, ctx=ctx)
            result = loop.run()
        except (*user_errors(), DistributedError) as err:
            typer.secho(f"error (rank {ctx.rank} of {ctx.world_size}): {err}",
                        fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        finally:
            shutdown(ctx)
        if not ctx.is_main:
            return
        if result.status == "waiting_for_answers":
            typer.echo(
                f"{result.open_queries} queries of cycle {result.cycles_done} wait for answers."
                f"\nAnswer them with: balseg annotate {directory}"
                f"\nthen continue with: balseg run {directory}"
            )
            return
        rows = loop.read_metrics()
        if rows:
            last = rows[-1]
            typer.echo(f"done: {directory} (mIoU {last['miou']:.4f} on {last['split']} at"
                       f" {last['pixels_per_image']:.0f} pixels/image)")

    @app.command()
    def evaluate(
        run_dir: Annotated[Path, typer.Argument(help="a run directory")],
        split: Annotated[str, typer.Option(help="split to evaluate, e.g. val or test")] = "val",
        data_root: Annotated[Path | None, typer.Option(help="dataset root, if moved")] = None,
        quiet: bool = False,
    ) -> None:
        """Evaluate the run's latest checkpoint on any split of its dataset."""
        try:
            result = evaluate_run(run_dir, split, data_root, progress=not quiet)
        except user_errors() as err:
            raise fail(err) from None
        typer.echo(f"mIoU {result['miou']:.4f} on {split} (cycle {result['cycle']})")
        for name, iou in zip(result["class_names"], result["per_class_iou"], strict=True):
            typer.echo(f"  {name:>20s}  {'-' if iou is None else f'{iou:.4f}'}")

    @app.command()
    def bench(
        config: Annotated[Path, typer.Argument(help="base config of every run")],
        out: Annotated[Path, typer.Option(help="folder of the runs")] = Path("runs/bench"),
        strategy: Annotated[list[str] | None, typer.Option(
            help="repeatable; name[+pixelpick[N]][+compat][@seeds] (N: pool %); "
                 "default: all baselines")] = None,
        seed: Annotated[list[int] | None, typer.Option(help="repeatable")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set")] = None,
        report: Annotated[bool, typer.Option(help="write the report at the end")] = True,
        share_cycle0: Annotated[bool, typer.Option(
            help="train cycle 0 once per seed and start every strategy from it")] = True,
        quiet: bool = False,
    ) -> None:
        """Compare strategies x seeds on one config (resumable; finished runs are skipped)."""
        from balseg.config import load_config
        from balseg.loop.bench import DEFAULT_STRATEGIES, run_bench

        try:
            base = load_config(config, set_ or [])
            dirs = run_bench(base, out, strategy or list(DEFAULT_STRATEGIES),
                             seed or [0, 1, 2], progress=not quiet,
                             share_cycle0=share_cycle0)
        except user_errors() as err:
            raise fail(err) from None
        if report:
            from balseg.report import make_report

            typer.echo(f"report: {make_report(dirs, out / 'report')}")

    @app.command()
    def demo(
        run_root: Annotated[Path, typer.Option(help="where the demo runs go")] = Path("runs/demo"),
        quiet: bool = False,
    ) -> None:
        """BalEntAcq against random on the built-in synthetic dataset, then a report."""
        from balseg.loop.demo import run_demo

        try:
            index = run_demo(run_root, progress=not quiet)
        except user_errors() as err:
            raise fail(err) from None
        typer.echo(f"report: {index}")


def evaluate_run(run_dir: Path, split: str, data_root: Path | None, *,
                 progress: bool = False) -> dict:
    """Evaluate the newest checkpoint of ``run_dir`` on ``split``; writes eval_<split>.json."""
    import torch

    from balseg.config import ConfigError
    from balseg.data import open_source, prepare_split
    from balseg.fsutil import atomic_write_bytes
    from balseg.loop.runner import _default_cache
    from balseg.models import ModelSpec, build_model, input_mean_std
    from balseg.train import confusion_matrix, iou_from_confusion

    cfg, _ = open_run(run_dir, [], None)
    checkpoints = sorted((run_dir / "checkpoints").glob("cycle_*.pt"))
    if not checkpoints:
        raise ConfigError(f"{run_dir} has no checkpoint yet: run it first")
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)
    spec = ModelSpec(**state["spec"])
    model = build_model(ModelSpec(**{**spec.__dict__, "encoder_weights": None}))
    model.load_state_dict(state["model"])
    d = cfg.data
    root = str(data_root) if data_root else d.root
    src = open_source(d.dataset, root, split, **d.options)
    prepared = prepare_split(src, size=d.size, pad_multiple=d.pad_multiple,
                             cache_dir=_default_cache(), progress=progress)
    targets = [torch.from_numpy(src.load(i)[1]) for i in range(len(src))]
    mean, std = input_mean_std(spec)
    cm = confusion_matrix(model, prepared.images, targets, src.info.num_classes,
                          valid_hw=prepared.valid_hw, mean=mean, std=std, progress=progress)
    miou, per_class = iou_from_confusion(cm)
    result = {"split": split, "cycle": int(state["cycle"]), "miou": miou,
              "per_class_iou": per_class, "class_names": list(src.info.class_names)}
    atomic_write_bytes(run_dir / f"eval_{split}.json", json.dumps(result, indent=1).encode())
    return result
