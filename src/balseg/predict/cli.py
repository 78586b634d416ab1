"""CLI commands of the trained model: ``predict`` and ``export-model`` (docs/predict.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EXIT_SOME_FAILED = 2
"""``balseg predict``: some images could not be read (the others were written). Bad input,
like every other mistake in what the user gave (``balseg.errors.EXIT_USER_ERROR``)."""


def predict(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    inputs: Annotated[list[Path] | None, typer.Argument(
        help="image files or folders (searched recursively)", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        help="output folder (default: RUN_DIR/predictions/cycle_XXX_<split or images>)")] = None,
    split: Annotated[str | None, typer.Option(
        help="predict a split of the run's dataset instead of files: val, test, ... or pool"
             " (the run's pool split)")] = None,
    with_answers: Annotated[bool, typer.Option(
        "--with-answers", help="with --split pool: every answered pixel keeps its answer"
                               " (dense pseudo-labels)")] = False,
    cycle: Annotated[int | None, typer.Option(help="checkpoint of this cycle (default: the"
                                                   " latest)")] = None,
    uncertainty: Annotated[str | None, typer.Option(
        help="also write this score's map (any acquisition score: entropy, bald, balentacq,"
             " margin, ...)")] = None,
    mc_samples: Annotated[int | None, typer.Option(
        help="MC-dropout samples for --uncertainty (default: the run's)")] = None,
    uncertainty_format: Annotated[str, typer.Option(
        help="png (16-bit, scale in a .json sidecar) or npy (float32)")] = "png",
    overlay: Annotated[bool, typer.Option("--overlay", help="also write the colour mask"
                                                            " blended over the image")] = False,
    batch_size: Annotated[int | None, typer.Option(
        help="images per model call (default: the run's train.eval_batch_size)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1, mps (default:"
                                                    " the run's device)")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="redo images whose outputs exist (default: skip them)")] = False,
    data_root: Annotated[Path | None, typer.Option(help="the dataset's root, if moved (with"
                                                        " --split)")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Predict masks (and uncertainty) for images with a checkpoint of a run.

    Per image, at its original size: masks/ (class ids), color/ (palette),
    optionally overlay/ and uncertainty/; manifest.csv has one row per image
    (mean confidence, mean uncertainty, class fractions). Resumable: images
    already done are skipped. docs/predict.md has the details.

    Exit status: 0 done, 2 bad input: nothing written, or images that could not
    be read (each named with why, then one summary line; the others were written).
    """
    from balseg.predict.job import PredictSettings, predict_to_folder

    settings = PredictSettings(
        cycle=cycle, uncertainty=uncertainty, mc_samples=mc_samples, batch_size=batch_size,
        device=device, overlay=overlay, split=split, with_answers=with_answers,
        overwrite=overwrite, uncertainty_format=uncertainty_format, data_root=data_root,
        progress=not quiet)
    report = predict_to_folder(run_dir, inputs or [], out, settings)
    speed = (f" ({report.images_per_s:.2f} images/s)" if report.written else "")
    skipped = f", {report.skipped} already done" if report.skipped else ""
    typer.echo(f"cycle {report.cycle}: wrote {report.written} of {report.total} images to"
               f" {report.out}{speed}{skipped}; manifest: {report.out / 'manifest.csv'}")
    if report.failed:
        for path, message in report.failed[:20]:
            typer.secho(f"failed: {message}" if path in message else f"failed: {path}:"
                        f" {message}", fg=typer.colors.RED, err=True)
        if len(report.failed) > 20:
            typer.secho(f"... and {len(report.failed) - 20} more", fg=typer.colors.RED,
                        err=True)
        typer.secho(skipped_summary(report.failed, report.total), fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_SOME_FAILED)


def skipped_summary(failed: list[tuple[str, str]], total: int) -> str:
    """One line: how many images were skipped, which, and why."""
    names = [Path(path).name for path, _ in failed]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"error: skipped {len(failed)} of {total} images that cannot be read as images"
            f" ({shown}; each is named above with why); the others were written")


def export_model(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    format: Annotated[str, typer.Option("--format", help="onnx or torchscript")],
    out: Annotated[Path, typer.Option(help="the file to write, e.g. model.onnx")],
    cycle: Annotated[int | None, typer.Option(help="checkpoint of this cycle (default: the"
                                                   " latest)")] = None,
    mc: Annotated[bool, typer.Option("--mc", help="also export the last-layer MC-dropout head"
                                                  " (input mask, output mc_logits)")] = False,
    verify_images: Annotated[int, typer.Option(
        help="real images of the run the export is checked on")] = 8,
    split: Annotated[str | None, typer.Option(
        help="split those images come from (default: the run's first evaluation split)")
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="the dataset's root, if moved")] = None,
) -> None:
    """Export a checkpoint as ONNX or TorchScript, verified against PyTorch.

    Input: uint8 [N, 3, H, W] RGB 0..255 (normalisation built in), H and W
    multiples of the encoder's stride; output: logits [N, C, H, W]. Class
    names, palette and preprocessing are in the file's metadata. The file is
    checked on real images of the run: exit status 2, and no file, if it
    disagrees with PyTorch beyond the tolerance (docs/predict.md).
    """
    from balseg.predict.export import export_model as run_export

    result = run_export(run_dir, out, format, cycle=cycle, mc=mc, verify_images=verify_images,
                        split=split, data_root=data_root)
    meta = result.metadata
    typer.echo(f"wrote {result.path} ({result.format}, cycle {result.cycle}, input uint8"
               f" [N, 3, H, W] with H, W multiples of {meta['input']['multiple_of']})")
    typer.echo(f"verified: {result.verification.summary()}")


COMMANDS = {"predict": predict, "export-model": export_model}
