"""The other MC-dropout settings: element-wise masks and dropout through the whole network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from balseg import load_run
from balseg.data.augment import model_input
from balseg.models import input_mean_std, load_checkpoint
from balseg.rundir import RunDir

from .conftest import _train, invoke, write_image


@pytest.fixture(scope="module")
def element_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("element"), "run", **{
        "budget.cycles": 0, "train.steps": 2, "model.dropout_kind": "element"})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("full"), "run", **{
        "budget.cycles": 0, "train.steps": 2, "model.mc_mode": "full"})


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_element_dropout_export_reproduces_balseg_samples(cli, element_run, tmp_path):
    out = tmp_path / "element.pt"
    result = invoke(cli, "export-model", element_run, "--format", "torchscript", "--out", out,
                    "--mc", "--verify-images", 2)
    assert result.exit_code == 0, result.output
    module = torch.jit.load(str(out))
    model, spec, _ = load_checkpoint(RunDir(element_run).checkpoint(0))
    image = np.random.default_rng(1).integers(0, 256, (1, 3, 48, 64), dtype=np.uint8)
    x = model_input(torch.from_numpy(image), *input_mean_std(spec))
    probs = torch.stack(list(model.mc_probs(x, 4, [77])))  # [T, 1, C, H, W]
    feats = model.features(x)
    g = torch.Generator().manual_seed(77)  # the draw of MCDropoutSegmenter._mc_head
    keep = (torch.rand((4, *feats.shape[1:]), generator=g) >= model.dropout_p).float()
    assert keep.shape[-2:] == (12, 16)  # the feature size: H / 4, W / 4
    with torch.no_grad():
        _, mc = module(torch.from_numpy(image), keep)
    assert torch.allclose(torch.softmax(mc, dim=2), probs, atol=1e-5)


def test_full_network_dropout_predicts_uncertainty_but_exports_no_mc_head(cli, full_run,
                                                                          tmp_path):
    write_image(tmp_path / "in" / "x.png", (48, 64), 2)
    out = tmp_path / "out"
    result = invoke(cli, "predict", full_run, tmp_path / "in", "--out", out, "--uncertainty",
                    "bald", "--mc-samples", 3, "--uncertainty-format", "npy", "--quiet")
    assert result.exit_code == 0, result.output
    first = np.load(out / "uncertainty" / "x.npy")
    again = invoke(cli, "predict", full_run, tmp_path / "in", "--out", out, "--uncertainty",
                   "bald", "--mc-samples", 3, "--uncertainty-format", "npy", "--overwrite",
                   "--quiet")
    assert again.exit_code == 0
    assert np.array_equal(first, np.load(out / "uncertainty" / "x.npy"))  # seeded per image
    refused = invoke(cli, "export-model", full_run, "--format", "onnx", "--out",
                     tmp_path / "m.onnx", "--mc")
    assert refused.exit_code == 2
    assert "--mc exports last-layer MC dropout" in refused.output
    assert "'full'" in refused.output and not (tmp_path / "m.onnx").exists()
    # the random score needs no model pass and is seeded too
    rnd = load_run(full_run).scores(np.zeros((20, 30, 3), np.uint8), "random")[0]
    assert rnd.shape == (20, 30) and rnd.min() >= 0 and rnd.max() < 1
