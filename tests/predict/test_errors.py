"""Bad input to ``balseg predict`` and ``balseg export-model``: one line naming the culprit,
exit 2 and nothing written; an unreadable image is skipped, named, and exit 2 too (issue 30:
it was 1, unlike every other mistake in the user's input)."""

from __future__ import annotations

import pytest

from balseg.rundir import RunDir

from .conftest import invoke, read_manifest, write_image


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert lines[0].startswith("error: ")
    return lines[0]


def test_a_corrupt_image_is_named_skipped_and_the_rest_written(cli, tiny_run, tmp_path):
    src = tmp_path / "in"
    for i in range(4):
        write_image(src / f"ok{i}.png", (48, 64), i)
    (src / "garbage.png").write_bytes(b"this is not a png")
    whole = (src / "ok0.png").read_bytes()
    (src / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (src / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    result = invoke(cli, "predict", tiny_run, src, "--out", out, "--quiet", "--batch-size", 3)
    assert result.exit_code == 2, result.output
    for name in ("garbage.png", "truncated.png", "empty.jpg"):
        assert any(name in line and line.startswith("failed:")
                   for line in result.stderr.splitlines()), result.stderr
    (summary,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert summary.startswith("error: skipped 3 of 7 images that cannot be read as images (")
    for name in ("garbage.png", "truncated.png", "empty.jpg"):
        assert name in summary
    assert result.stderr.splitlines()[-1] == summary
    assert "Traceback" not in result.output
    rows = read_manifest(out)
    assert sorted(r["image"] for r in rows) == [f"ok{i}" for i in range(4)]
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"ok{i}.png" for i in range(4)]
    # a resumed command retries the failed ones only (and fails on them again)
    again = invoke(cli, "predict", tiny_run, src, "--out", out, "--quiet")
    assert again.exit_code == 2 and "wrote 0 of 7 images" in again.output


@pytest.mark.parametrize("case", [
    "no_checkpoint", "deleted_checkpoint", "unknown_cycle", "unknown_score", "too_few_samples",
    "out_is_a_file", "not_a_run", "missing_input", "empty_folder", "bad_device", "both_inputs",
    "unknown_split", "bad_format", "corrupt_checkpoint",
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(cli, run_copy, tmp_path, case):
    image = tmp_path / "in" / "x.png"
    write_image(image)
    out = tmp_path / "out"
    args: list = [run_copy, image, "--out", out]
    rd = RunDir(run_copy)
    expect: tuple[str, ...]
    if case == "no_checkpoint":  # a run without a finished cycle
        for c in rd.checkpoint_cycles():
            rd.checkpoint(c).unlink()
        expect = ("has no checkpoint yet", str(run_copy))
    elif case == "deleted_checkpoint":
        rd.checkpoint(1).unlink()
        args += ["--cycle", 1]
        expect = ("cycle_001.pt", "no checkpoint of cycle 1", "keeps 0")
    elif case == "unknown_cycle":
        args += ["--cycle", 7]
        expect = ("no checkpoint of cycle 7", "keeps 0, 1")
    elif case == "unknown_score":
        args += ["--uncertainty", "entropie"]
        expect = ("unknown acquisition score 'entropie'", "entropy")
    elif case == "too_few_samples":
        args += ["--uncertainty", "bald", "--mc-samples", 1]
        expect = ("--mc-samples 1", "'bald' needs at least 2")
    elif case == "out_is_a_file":
        out.write_text("I am a file")
        expect = (f"--out {out} is a file",)
    elif case == "not_a_run":
        args[0] = tmp_path / "in"
        expect = (str(tmp_path / "in"), "not a run directory")
    elif case == "missing_input":
        args[1] = tmp_path / "nope.png"
        expect = (f"input not found: {tmp_path / 'nope.png'}",)
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        args[1] = tmp_path / "empty"
        expect = (f"input folder {tmp_path / 'empty'} holds no image",)
    elif case == "bad_device":
        args += ["--device", "toaster"]
        expect = ("--device 'toaster'",)
    elif case == "both_inputs":
        args += ["--split", "val"]
        expect = ("not both",)
    elif case == "unknown_split":
        args = [run_copy, "--split", "test", "--out", out]
        expect = ("test",)
    elif case == "bad_format":
        args += ["--uncertainty", "entropy", "--uncertainty-format", "tiff"]
        expect = ("--uncertainty-format 'tiff'",)
    else:  # corrupt_checkpoint
        rd.checkpoint(1).write_bytes(b"not a checkpoint")
        expect = ("cycle_001.pt", "not a readable checkpoint")
    result = invoke(cli, "predict", *args)
    assert result.exit_code == 2, result.output
    line = error_line(result)
    for part in expect:
        assert part in line, line
    if case == "out_is_a_file":
        assert out.read_text() == "I am a file"
    else:
        assert not out.exists()
    assert not rd.predictions_dir.exists()
