"""The real CamVid val split (../shared/data/camvid): a short run's masks score what
``balseg evaluate`` says at 360x480 from a 180x240 model, and its exports verify."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from balseg.loop.evaluate import evaluate_checkpoint
from balseg.predict.job import open_split
from balseg.rundir import RunDir

from .conftest import CAMVID, invoke, miou_from_masks, read_manifest, read_png

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CAMVID / "valannot").is_dir(),
                       reason=f"real CamVid not found at {CAMVID}"),
    pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning"),
]
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "camvid.yaml"


@pytest.fixture(scope="module")
def camvid_run(tmp_path_factory, cli) -> Path:
    """configs/camvid.yaml trained for a few steps on the val images' initial pixels (the
    checkpoint's quality does not matter here, only that predict and evaluate agree)."""
    root = tmp_path_factory.mktemp("camvid")
    raw = yaml.safe_load(CONFIG.read_text())
    raw["data"].update(root=str(CAMVID), pool_split="val", eval_splits=[])
    raw["train"].update(steps=4, batch_size=4)
    raw["budget"]["cycles"] = 0
    (root / "camvid.yaml").write_text(yaml.safe_dump(raw))
    result = invoke(cli, "run", root / "camvid.yaml", "--run-dir", root / "run", "--quiet")
    assert result.exit_code == 0, result.output
    return root / "run"


def test_camvid_val_masks_score_the_miou_of_evaluate(cli, camvid_run, tmp_path):
    out = tmp_path / "val"
    result = invoke(cli, "predict", camvid_run, "--split", "val", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "wrote 101 of 101 images" in result.output
    source = open_split(RunDir(camvid_run).load_config(), "val", None)
    assert read_png(out / "masks" / f"{source.image_id(0)}.png").shape == (360, 480)
    assert len(read_manifest(out)) == 101
    assert miou_from_masks(source, out / "masks") == evaluate_checkpoint(camvid_run, "val")[
        "miou"]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_camvid_exports_verify_on_val_images(cli, camvid_run, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"camvid.{fmt}"
    result = invoke(cli, "export-model", camvid_run, "--format", fmt, "--out", out, "--mc",
                    "--verify-images", 4)
    assert result.exit_code == 0, result.output
    assert "on 4 images of the run (input sizes WxH 240x192, 256x208)" in result.output
    assert out.is_file()
