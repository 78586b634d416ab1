"""Pool scoring: exact label-resolution scores and the classifier-resolution shortcut."""

import pytest
import torch
from torch.nn import functional as F

from balseg.acquisition import MCMoments, balentacq
from balseg.mc import image_seed, normalize, score_pool
from balseg.models import ModelSpec, build_model

KW = dict(strategy="balentacq", samples=4, seed=1, cycle=2, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelSpec(encoder_weights=None, num_classes=5)).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (3, 3, 64, 96), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def test_label_resolution_scores_match_the_acquisition_core(model, images):
    scores = score_pool(model, images, [0, 2], valid_hw=(60, 90), batch_size=2, **KW)
    assert scores.shape == (2, 60, 90)
    x = normalize(images[[2]], (0.5,) * 3, (0.5,) * 3)
    probs = torch.stack(list(model.mc_probs(x, 4, seeds=[image_seed(1, 2, 2)])))
    expected = balentacq(probs[:, 0, :, :60, :90])
    assert torch.allclose(scores[1], expected.float(), rtol=1e-3, atol=1e-4)
    # an image's scores do not depend on its batch or its neighbours
    alone = score_pool(model, images, [2], valid_hw=(60, 90), batch_size=1, **KW)
    assert torch.allclose(alone[0], scores[1], rtol=1e-3, atol=1e-4)


def test_classifier_resolution_is_the_upsampled_low_resolution_score(model, images):
    scores = score_pool(model, images, [1], valid_hw=(60, 90), resolution="classifier", **KW)
    assert scores.shape == (1, 60, 90) and torch.isfinite(scores).all()
    x = normalize(images[[1]], (0.5,) * 3, (0.5,) * 3)
    moments = None
    for p in model.mc_probs(x, 4, seeds=[image_seed(1, 2, 1)], upsample=False):
        assert p.shape[-2:] == (16, 24)  # 1/4 of 64x96
        sample = p[:, :, :15, :23].transpose(0, 1).contiguous()  # ceil(60/4), ceil(90/4)
        moments = moments or MCMoments(5, tuple(sample.shape[1:]))
        moments.update(sample)
    low = balentacq(moments).float()
    expected = F.interpolate(low[:, None], scale_factor=(4, 4), mode="bilinear",
                             align_corners=False)[:, 0, :60, :90]
    assert torch.allclose(scores, expected, rtol=1e-3, atol=1e-4)
    exact = score_pool(model, images, [1], valid_hw=(60, 90), **KW)
    corr = torch.corrcoef(torch.stack([scores.flatten(), exact.flatten()]))[0, 1]
    assert corr > 0.5  # same picture of uncertainty, smoother


def test_bad_resolution_and_full_mode_shortcut_are_refused(model, images):
    with pytest.raises(ValueError, match="'label' or 'classifier'"):
        score_pool(model, images, [0], valid_hw=(60, 90), resolution="half", **KW)
    full = build_model(ModelSpec(encoder_weights=None, num_classes=5, mc_mode="full"))
    with pytest.raises(ValueError, match="need mc_mode 'last_layer'"):
        score_pool(full, images, [0], valid_hw=(60, 90), resolution="classifier", **KW)
