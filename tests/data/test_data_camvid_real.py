"""The real CamVid (SegNet version) next to the repository: ../shared/data/camvid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from balseg.data import IGNORE_INDEX, open_source, prepare_split

CAMVID = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "camvid"

pytestmark = pytest.mark.skipif(
    not (CAMVID / "trainannot").is_dir(),
    reason=f"real CamVid not found at {CAMVID} (expected ../shared/data/camvid from the repo)",
)


@pytest.mark.slow
def test_real_camvid_splits_classes_and_prepare(tmp_path: Path) -> None:
    train = open_source("camvid", CAMVID, "train")
    val = open_source("camvid", CAMVID, "val")
    assert (len(train), len(val)) == (367, 101)
    assert train.info.num_classes == 11 and train.info.class_names[3] == "Road"
    assert train.image_id(0) == "0001TP_006690"
    prep = prepare_split(train, size=(176, 240), pad_multiple=16, cache_dir=tmp_path)
    assert prep.images.shape == (367, 3, 176, 240) and prep.labels.shape == (367, 176, 240)
    assert prep.valid_hw == (176, 240) and set(prep.orig_sizes) == {(360, 480)}
    counts = np.bincount(prep.labels.numpy().ravel(), minlength=256)
    assert counts[11:IGNORE_INDEX].sum() == 0 and counts[IGNORE_INDEX + 1 :].sum() == 0
    assert (counts[:11] > 0).all() and counts[IGNORE_INDEX] > 0
    # Full-resolution labels of the val split: values 0..10 or 255 only.
    for i in range(0, len(val), 10):
        image, label = val.load(i)
        assert image.shape == (360, 480, 3) and label.shape == (360, 480)
        assert set(np.unique(label).tolist()) <= set(range(11)) | {IGNORE_INDEX}
    again = prepare_split(train, size=(176, 240), pad_multiple=16, cache_dir=tmp_path)
    assert again.image_ids == prep.image_ids
