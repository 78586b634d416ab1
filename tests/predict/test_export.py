"""``balseg export-model``: ONNX and TorchScript files that compute what PyTorch computes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from balseg.data.augment import model_input
from balseg.models import input_mean_std, load_checkpoint
from balseg.predict.export import read_metadata
from balseg.rundir import RunDir

from .conftest import invoke, write_image

# tracing and exporting take 10-30 s per file on 2 busy cores; the tests load the files with
# torch.jit.load, which torch calls deprecated
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")]


def reference(run, image: np.ndarray, cycle: int = 1) -> np.ndarray:
    """PyTorch's logits for uint8 [N, 3, H, W], as balseg computes them."""
    model, spec, _ = load_checkpoint(RunDir(run).checkpoint(cycle))
    mean, std = input_mean_std(spec)
    with torch.no_grad():
        return model(model_input(torch.from_numpy(image), mean, std)).numpy()


def balseg_mc_probs(run, image: np.ndarray, samples: int, seed: int) -> tuple[np.ndarray, ...]:
    """balseg's MC samples of one image and the keep masks it drew for them."""
    model, spec, _ = load_checkpoint(RunDir(run).checkpoint(1))
    mean, std = input_mean_std(spec)
    x = model_input(torch.from_numpy(image), mean, std)
    probs = np.stack([p.numpy() for p in model.mc_probs(x, samples, [seed])])
    g = torch.Generator().manual_seed(seed)  # the draw of MCDropoutSegmenter._mc_head
    k = model.net.segmentation_head[0].in_channels
    keep = (torch.rand((samples, 1, k), generator=g) >= model.dropout_p).float()
    return probs, keep[:, 0, :, None, None].numpy()


def random_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, h, w), dtype=np.uint8)


def check_output(result, fmt: str) -> None:
    assert result.exit_code == 0, result.output
    assert f"({fmt}, cycle 1, input uint8 [N, 3, H, W] with H, W multiples of 16)" in (
        result.output)
    assert "verified: max |logit diff|" in result.output
    assert "argmax agreement 1.000000 (0 of " in result.output


def test_onnx_export_computes_what_pytorch_computes(cli, tiny_run, tmp_path, monkeypatch,
                                                    capsys):
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "models" / "tiny.onnx"
    result = invoke(cli, "export-model", tiny_run, "--format", "onnx", "--out", out, "--mc")
    check_output(result, "onnx")
    assert "max |MC logit diff|" in result.output
    meta = read_metadata(out)
    run_meta = json.loads((tiny_run / "dataset.json").read_text())
    assert meta["class_names"] == run_meta["class_names"]
    assert meta["palette"] == run_meta["palette"]
    assert meta["input"]["multiple_of"] == 16 and meta["mc"]["dropout_kind"] == "channel"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "mask"]
    # any batch size and any multiple of 16, not only the verified ones
    for n, h, w in [(3, 32, 80), (1, 96, 16)]:
        images = random_images(n, h, w, seed=h)
        # a mask of 1 - p cancels the file's 1 / (1 - p) scale: the deterministic logits
        mean_mask = np.full((1, meta["mc"]["feature_channels"], 1, 1),
                            1 - meta["mc"]["dropout_p"], np.float32)
        logits, mc = session.run(None, {"image": images, "mask": mean_mask})
        ref = reference(tiny_run, images)
        assert np.abs(logits - ref).max() < 1e-4
        assert (logits.argmax(1) == ref.argmax(1)).all()
        assert mc.shape == (1, *ref.shape) and np.abs(mc[0] - ref).max() < 1e-4
    # uncertainty outside balseg: the keep masks balseg draws give balseg's MC samples
    image = random_images(1, 48, 64, seed=5)
    probs, keep = balseg_mc_probs(tiny_run, image, samples=5, seed=123)
    _, mc = session.run(None, {"image": image, "mask": keep})
    soft = np.exp(mc - mc.max(2, keepdims=True))
    soft /= soft.sum(2, keepdims=True)
    assert np.abs(soft - probs).max() < 1e-4
    assert not list(out.parent.glob(".*.tmp"))
    # docs/predict.md's onnxruntime example runs as it stands on this file
    docs_example(out, tmp_path / "docs", monkeypatch, capsys)


def docs_example(model, folder, monkeypatch, capsys) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "predict.md").read_text()
    section = text.split("### Uncertainty outside balseg", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    folder.mkdir()
    shutil.copy(model, folder / "model.onnx")
    write_image(folder / "street.png", (40, 60), 4)
    monkeypatch.chdir(folder)
    scope: dict = {}
    exec(compile(code, "docs/predict.md", "exec"), scope)
    assert scope["classes"].shape == (40, 60) and scope["p"].shape == (20, 6, 40, 60)
    assert (scope["entropy"] >= 0).all() and (scope["bald"] > -1e-5).all()
    assert "(40, 60)" in capsys.readouterr().out


def test_torchscript_export_computes_what_pytorch_computes(cli, tiny_run, tmp_path):
    out = tmp_path / "tiny.pt"
    result = invoke(cli, "export-model", tiny_run, "--format", "torchscript", "--out", out,
                    "--verify-images", 3)
    check_output(result, "torchscript")
    assert "on 3 images of the run" in result.output
    extra = {"balseg.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["balseg.json"])
    assert meta == read_metadata(out) and meta["mc"] is None
    assert meta["cycle"] == 1 and len(meta["class_names"]) == 6
    images = random_images(2, 64, 112, seed=1)
    with torch.no_grad():
        logits = module(torch.from_numpy(images)).numpy()
    ref = reference(tiny_run, images)
    assert np.abs(logits - ref).max() < 1e-4 and (logits.argmax(1) == ref.argmax(1)).all()
    # the file says what is wrong with an input instead of failing deep inside
    with pytest.raises(Exception, match="multiples of 16, got 50x64"):
        module(torch.zeros((1, 3, 50, 64), dtype=torch.uint8))
    with pytest.raises(Exception, match="must be uint8"):
        module(torch.zeros((1, 3, 64, 64)))


def test_torchscript_mc_head_and_an_older_cycle(cli, tiny_run, tmp_path):
    out = tmp_path / "tiny0.pt"
    result = invoke(cli, "export-model", tiny_run, "--format", "torchscript", "--out", out,
                    "--mc", "--cycle", 0, "--verify-images", 2)
    assert result.exit_code == 0, result.output
    module = torch.jit.load(str(out))
    image = random_images(1, 48, 64, seed=2)
    mc_meta = read_metadata(out)["mc"]
    mean_mask = torch.full((1, mc_meta["feature_channels"], 1, 1), 1 - mc_meta["dropout_p"])
    with torch.no_grad():
        logits, mc = module(torch.from_numpy(image), mean_mask)
    ref = reference(tiny_run, image, cycle=0)
    assert np.abs(logits.numpy() - ref).max() < 1e-4
    assert np.abs(mc[0].numpy() - ref).max() < 1e-4
    with pytest.raises(Exception, match="mask must be float32"):
        module(torch.from_numpy(image), torch.ones((1, 3, 1, 1)))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_export_that_disagrees_leaves_nothing(cli, tiny_run, tmp_path, monkeypatch, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    import balseg.predict.export as export

    monkeypatch.setattr(export, "LOGIT_TOLERANCE", -1.0)  # any difference is too large
    out = tmp_path / "model.bin"
    out.write_bytes(b"the previous export")
    result = invoke(cli, "export-model", tiny_run, "--format", fmt, "--out", out,
                    "--verify-images", 2)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith(f"error: the {fmt} export of cycle 1 disagrees with PyTorch: max"
                           " |logit diff|") and "\n" not in line
    assert f"nothing was written to {out}" in line
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]
