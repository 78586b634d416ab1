"""``balseg predict``: masks that score what ``balseg evaluate`` says, the files, names and
resume."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from balseg.loop.evaluate import evaluate_checkpoint
from balseg.predict.job import PredictSettings, open_split, predict_to_folder
from balseg.predict.outputs import read_uncertainty
from balseg.rundir import RunDir

from .conftest import invoke, miou_from_masks, read_manifest, read_png, write_image


@pytest.mark.parametrize("run_name", ["tiny_run", "resized_run"])
def test_masks_of_a_split_score_the_miou_that_evaluate_gives(cli, tmp_path, request, run_name):
    run = request.getfixturevalue(run_name)
    cycles = RunDir(run).checkpoint_cycles()
    for cycle in cycles:
        out = tmp_path / f"{run_name}-{cycle}"
        result = invoke(cli, "predict", run, "--split", "val", "--cycle", cycle, "--out", out,
                        "--quiet")
        assert result.exit_code == 0, result.output
        assert f"cycle {cycle}: wrote 4 of 4 images" in result.output
        source = open_split(RunDir(run).load_config(), "val", None)
        expected = evaluate_checkpoint(run, "val", cycle=cycle)["miou"]
        assert miou_from_masks(source, out / "masks") == expected  # exactly: same pixels
    # the model predicts several classes, so the comparison is not a trivial one
    classes = {int(v) for p in (out / "masks").iterdir() for v in np.unique(read_png(p))}
    assert len(classes) >= 2


def test_every_output_at_the_original_size(tiny_run, tmp_path):
    images = {f"a/x{i}.png": write_image(tmp_path / "in" / f"a/x{i}.png", hw, i)
              for i, hw in enumerate([(48, 64), (37, 53), (100, 30)])}
    out = tmp_path / "out"
    report = predict_to_folder(tiny_run, [tmp_path / "in"], out, PredictSettings(
        uncertainty="entropy", mc_samples=4, overlay=True, progress=False, batch_size=2))
    assert (report.written, report.total, report.failed) == (3, 3, [])
    from balseg.predict.job import open_run_info

    info = open_run_info(tiny_run)
    rows = {r["image"]: r for r in read_manifest(out)}
    assert sorted(rows) == ["a/x0", "a/x1", "a/x2"]
    assert list(rows["a/x0"])[:6] == ["image", "path", "width", "height", "mean_confidence",
                                      "mean_uncertainty"]
    from balseg import load_run

    run = load_run(tiny_run)
    for name, image in images.items():
        key = name.removesuffix(".png")
        mask = read_png(out / "masks" / f"{key}.png")
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        assert mask.max() < len(info.class_names)
        colour = read_png(out / "color" / f"{key}.png")
        assert np.array_equal(colour, info.palette[mask])
        overlay = read_png(out / "overlay" / f"{key}.png").astype(int)
        h = image.shape[0]  # the blend at the image's size, a legend of its classes under it
        assert np.abs(overlay[:h] - (image.astype(int) + colour.astype(int)) / 2).max() <= 1
        legend = {tuple(px) for px in overlay[h:].reshape(-1, 3)}
        assert overlay.shape[1] == image.shape[1] and len(legend) > 1
        assert {tuple(int(v) for v in info.palette[c]) for c in np.unique(mask)} <= legend
        # the uncertainty map: 16 bits, decoded with its sidecar to the engine's values
        unc = read_uncertainty(out / "uncertainty" / f"{key}.png")
        side = json.loads((out / "uncertainty" / f"{key}.json").read_text())
        assert side["score"] == "entropy" and side["mc_samples"] == 4 and side["cycle"] == 1
        assert unc.shape == mask.shape
        assert side["lo"] <= unc.min() and unc.max() <= side["hi"]
        # the manifest row describes the written mask
        row = rows[key]
        assert (int(row["width"]), int(row["height"])) == (image.shape[1], image.shape[0])
        counts = np.bincount(mask.ravel(), minlength=len(info.class_names)) / mask.size
        fractions = [float(row[f"fraction_{c}"]) for c in info.class_names]
        assert fractions == pytest.approx(counts, abs=1e-6)
        assert float(row["mean_uncertainty"]) == pytest.approx(float(unc.mean()), rel=1e-3)
        # the API gives the same mask and confidence
        pred = run.predict(image)[0]
        assert np.array_equal(pred.classes, mask)
        assert float(row["mean_confidence"]) == pytest.approx(float(pred.confidence.mean()),
                                                              abs=1e-6)
        assert 1 / len(info.class_names) <= pred.confidence.min() <= pred.confidence.max() <= 1
    assert (out / "classes.txt").read_text().splitlines()[0] == (
        f"{info.class_names[0]} " + " ".join(map(str, info.palette[0])))


def test_uncertainty_as_npy_is_exact_and_reproducible(tiny_run, tmp_path):
    image = write_image(tmp_path / "in" / "x.png", (48, 64), 3)
    outs = []
    for name in ("one", "two"):
        out = tmp_path / name
        predict_to_folder(tiny_run, [tmp_path / "in" / "x.png"], out, PredictSettings(
            uncertainty="bald", mc_samples=3, uncertainty_format="npy", progress=False))
        outs.append(np.load(out / "uncertainty" / "x.npy"))
    assert outs[0].dtype == np.float32 and outs[0].shape == image.shape[:2]
    assert np.array_equal(outs[0], outs[1])  # the masks depend on the run seed and the name
    assert (outs[0] >= 0).all() and outs[0].max() > 0
    from balseg import load_run

    api = load_run(tiny_run).scores([image], "bald", samples=3)[0]
    assert api.shape == image.shape[:2] and np.isfinite(api).all()


def test_same_stem_in_other_folders_and_extensions_never_collide(tiny_run, tmp_path):
    src = tmp_path / "in"
    for rel in ("a/x.png", "b/x.png", "b/deep/er/x.png", "c/y.png", "c/y.jpg"):
        write_image(src / rel, (32, 48))
    (src / "b" / "notes.txt").write_text("not an image")  # ignored in folders
    out = tmp_path / "out"
    report = predict_to_folder(tiny_run, [src / "a", src / "b", src / "c"], out,
                               PredictSettings(progress=False))
    assert report.written == 5 and not report.failed
    keys = sorted(r["image"] for r in read_manifest(out))
    assert keys == ["a/x", "b/deep/er/x", "b/x", "c/y_jpg", "c/y_png"]
    for key in keys:
        assert (out / "masks" / f"{key}.png").is_file()
    # one file alone is named by its stem
    single = tmp_path / "single"
    predict_to_folder(tiny_run, [src / "a" / "x.png"], single, PredictSettings(progress=False))
    assert [r["image"] for r in read_manifest(single)] == ["x"]


def test_symlinked_inputs_are_named_by_their_links_and_read_through_them(cli, tiny_run,
                                                                         tmp_path):
    """Issue 30 F4: a folder of links to images elsewhere traced back (ValueError from
    relative_to on the link's target)."""
    elsewhere = tmp_path / "elsewhere"
    one = write_image(elsewhere / "one.png", (32, 48), 1)
    write_image(elsewhere / "two.png", (32, 48), 2)
    links = tmp_path / "links"
    (links / "sub").mkdir(parents=True)
    (links / "a.png").symlink_to(elsewhere / "one.png")
    (links / "sub" / "b.png").symlink_to(elsewhere / "two.png")
    (links / "again.png").symlink_to(elsewhere / "one.png")  # the same file: predicted once
    (links / "dangling.png").symlink_to(tmp_path / "gone.png")  # no file: not an input
    out = tmp_path / "out"
    result = invoke(cli, "predict", tiny_run, links, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    rows = read_manifest(out)
    assert sorted(r["image"] for r in rows) == ["a", "sub/b"]
    assert read_png(out / "masks" / "a.png").shape == one.shape[:2]
    # a link named on its own is named by the link too
    single = tmp_path / "single"
    assert invoke(cli, "predict", tiny_run, links / "sub" / "b.png", "--out", single,
                  "--quiet").exit_code == 0
    assert [r["image"] for r in read_manifest(single)] == ["b"]


def test_resume_skips_finished_images_and_overwrite_redoes_them(cli, tiny_run, tmp_path):
    for i in range(5):
        write_image(tmp_path / "in" / f"im{i}.png", (48, 64), i)
    out = tmp_path / "out"
    first = invoke(cli, "predict", tiny_run, tmp_path / "in", "--out", out, "--quiet")
    assert first.exit_code == 0 and "wrote 5 of 5 images" in first.output
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    # a kill after im1's mask but before the manifest held its row; im3's colour mask lost
    rows = [r for r in read_manifest(out) if r["image"] != "im1"]
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "color" / "im3.png").unlink()
    again = invoke(cli, "predict", tiny_run, tmp_path / "in", "--out", out, "--quiet")
    assert again.exit_code == 0, again.output
    assert "wrote 2 of 5 images" in again.output and "3 already done" in again.output
    after = {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    assert {n for n in after if after[n] != stamps[n]} == {"im1.png", "im3.png"}
    assert [r["image"] for r in read_manifest(out)] == [f"im{i}" for i in range(5)]
    assert (out / "color" / "im3.png").is_file()
    # nothing left to do
    done = invoke(cli, "predict", tiny_run, tmp_path / "in", "--out", out, "--quiet")
    assert "wrote 0 of 5 images" in done.output
    # more images into the same folder: the manifest merges the rows of both commands
    write_image(tmp_path / "more" / "extra.png", (40, 40), 9)
    more = invoke(cli, "predict", tiny_run, tmp_path / "more" / "extra.png", "--out", out,
                  "--quiet")
    assert more.exit_code == 0 and "wrote 1 of 1 images" in more.output
    assert [r["image"] for r in read_manifest(out)] == ["extra"] + [f"im{i}" for i in range(5)]
    # other settings are refused without --overwrite, and --overwrite redoes everything
    other = invoke(cli, "predict", tiny_run, tmp_path / "in", "--out", out, "--cycle", 0)
    assert other.exit_code == 2
    assert "another checkpoint (cycle 1" in other.output and "--overwrite" in other.output
    redo = invoke(cli, "predict", tiny_run, tmp_path / "in", "--out", out, "--overwrite",
                  "--quiet")
    assert redo.exit_code == 0 and "wrote 5 of 5 images" in redo.output
    assert all(p.stat().st_mtime_ns != after[p.name] for p in (out / "masks").iterdir()
               if p.name in after)
    assert [r["image"] for r in read_manifest(out)] == ["extra"] + [f"im{i}" for i in range(5)]
    assert not [p for p in out.rglob(".*.tmp")]


def test_default_output_folder_is_per_cycle_in_the_run(cli, run_copy):
    result = invoke(cli, "predict", run_copy, "--split", "val", "--quiet")
    assert result.exit_code == 0, result.output
    out = RunDir(run_copy).default_predictions(1, "val")
    assert out.is_relative_to(run_copy) and len(list((out / "masks").iterdir())) == 4
    state = json.loads((out / "predict.json").read_text())
    assert state["cycle"] == 1 and state["run"] == str(run_copy.resolve())


def test_memory_stays_bounded_for_a_large_image(tiny_run):
    """Above the budget, classes are upsampled a few at a time: the same classes."""
    import torch

    from balseg.predict.engine import upsample_argmax

    g = torch.Generator().manual_seed(0)
    logits = torch.randn((1, 6, 12, 16), generator=g) * 3
    full = upsample_argmax(logits, (301, 397))
    chunked = upsample_argmax(logits, (301, 397), budget=2 * 301 * 397)
    assert (full[0] == chunked[0]).mean() > 0.9999
    assert np.abs(full[1] - chunked[1]).max() < 1e-5


def test_predict_reads_images_in_batches(tiny_run, tmp_path, monkeypatch):
    """Streaming: never more than two batches of decoded images at a time."""
    import balseg.predict.job as job

    for i in range(7):
        write_image(tmp_path / "in" / f"im{i}.png", (48, 64), i)
    live, peak = [0], [0]
    real = job._read

    def counting(batch):
        out = real(batch)
        live[0] += len(out)
        peak[0] = max(peak[0], live[0])
        return out

    real_write = job.O.Layout.write

    def write(self, *args, **kwargs):
        live[0] -= 1
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(job, "_read", counting)
    monkeypatch.setattr(job.O.Layout, "write", write)
    report = predict_to_folder(tiny_run, [tmp_path / "in"], tmp_path / "out",
                               PredictSettings(progress=False, batch_size=2))
    assert report.written == 7 and peak[0] <= 4
    assert os.path.isfile(tmp_path / "out" / "manifest.csv")
