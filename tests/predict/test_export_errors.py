"""Bad input to ``balseg export-model``: one line naming the culprit, exit 2, no file."""

from __future__ import annotations

from balseg.rundir import RunDir

from ..tmpfs_support import mounted_tmpfs
from .conftest import invoke
from .test_errors import error_line


def test_export_model_bad_input(cli, run_copy, tmp_path):
    rd = RunDir(run_copy)
    cases = [
        (["--format", "tflite", "--out", tmp_path / "m.tflite"], "--format 'tflite'"),
        (["--format", "onnx", "--out", tmp_path], "is a folder"),
        (["--format", "onnx", "--out", tmp_path / "m.onnx", "--cycle", 4],
         "no checkpoint of cycle 4"),
        (["--format", "onnx", "--out", tmp_path / "m.onnx", "--split", "test"], "test"),
        (["--format", "torchscript", "--out", tmp_path / "m.pt", "--verify-images", 0],
         "--verify-images must be >= 1"),
    ]
    for args, message in cases:
        result = invoke(cli, "export-model", run_copy, *args)
        assert result.exit_code == 2, result.output
        assert message in error_line(result)
    for c in rd.checkpoint_cycles():
        rd.checkpoint(c).unlink()
    none = invoke(cli, "export-model", run_copy, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert none.exit_code == 2 and "has no checkpoint yet" in error_line(none)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_unwritable_destination_is_refused_before_the_export_work(cli, tiny_run, tmp_path,
                                                                     monkeypatch):
    """Issue 30 F5: a read-only --out traced back from mkstemp after 30-45 s of export."""
    from balseg.predict import export

    def no_work(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the destination was checked")

    monkeypatch.setattr(export, "load_predictor", no_work)
    (tmp_path / "a-file").write_text("not a folder")
    result = invoke(cli, "export-model", tiny_run, "--format", "torchscript",
                    "--out", tmp_path / "a-file" / "model.pt")
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert "a-file/model.pt" in line and "cannot write there" in line
    with mounted_tmpfs(tmp_path / "readonly", size="1m", readonly=True) as readonly:
        result = invoke(cli, "export-model", tiny_run, "--format", "onnx",
                        "--out", readonly / "model.onnx")
        assert result.exit_code == 2, result.output
        line = error_line(result)
        assert "readonly/model.onnx" in line and "Read-only file system" in line
        assert list(readonly.iterdir()) == []
