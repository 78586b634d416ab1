import time

import pytest
import torch
from torch import nn

from balseg.models import ModelSpec, WeightsUnavailableError, build_model
from balseg.models import weights as W


def small(**kw) -> ModelSpec:
    base = dict(encoder="tu-tf_efficientnet_lite0", encoder_weights=None, num_classes=4,
                dropout_p=0.5, mc_mode="last_layer")
    return ModelSpec(**{**base, **kw})


def test_offline_lite0_weights_are_the_packaged_imagenet_tensors():
    model = build_model(small(encoder_weights="offline-lite0"))
    mapped = W.offline_state_dict("offline-lite0")
    enc = model.net.encoder.state_dict()
    assert torch.equal(enc["model.conv_stem.weight"], mapped["conv_stem.weight"])
    key = "blocks.6.0.conv_pwl.weight"
    assert torch.equal(enc[f"model.{key}"], mapped[key])


@pytest.mark.parametrize("k", [0, 1, 2])
def test_smp_encoder_with_offline_weights_matches_timm_backbone(k):
    import timm

    ref = timm.create_model(f"tf_efficientnet_lite{k}", pretrained=False)
    ref.load_state_dict(W.offline_state_dict(f"offline-lite{k}"))
    ref.eval()
    model = build_model(small(encoder=f"tu-tf_efficientnet_lite{k}",
                              encoder_weights=f"offline-lite{k}"))
    model.eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        # DeepLabV3+ dilates the last stage (output stride 16): compare the stride-16 stage
        expected = ref.blocks[:5](ref.bn1(ref.conv_stem(x)))
        got = model.net.encoder(x)[-2]
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)


def test_imagenet_weights_offline_fail_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("BALSEG_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="offline-lite0"):
        build_model(small(encoder_weights="imagenet"))
    assert time.perf_counter() - start < 1.0


def test_local_weights_file(tmp_path):
    src = build_model(small())
    path = tmp_path / "enc.pt"
    torch.save(src.net.encoder.state_dict(), path)
    dst = build_model(small(encoder_weights=str(path)))
    for k, v in src.net.encoder.state_dict().items():
        assert torch.equal(v, dst.net.encoder.state_dict()[k])
    with pytest.raises(WeightsUnavailableError, match="not found"):
        build_model(small(encoder_weights=str(tmp_path / "missing.pt")))


def test_bad_arch_and_mismatched_offline_encoder():
    with pytest.raises(ValueError, match="not an smp architecture"):
        build_model(small(arch="NoSuchNet"))
    with pytest.raises(ValueError, match="fit only encoder"):
        build_model(small(encoder="resnet18", encoder_weights="offline-lite0"))
    with pytest.raises(ValueError, match="fit only encoder 'tu-tf_efficientnet_lite2'"):
        build_model(small(encoder_weights="offline-lite2"))


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("kind", ["channel", "element"])
def test_last_layer_mc_runs_backbone_once_and_is_batch_invariant(kind):
    torch.manual_seed(0)
    model = build_model(small(dropout_kind=kind))
    enc_calls = _count_calls(model.net.encoder)
    x = torch.randn(3, 3, 64, 64)
    samples = list(model.mc_probs(x, 5, seeds=[1, 2, 3]))
    assert enc_calls[0] == 1
    assert len(samples) == 5 and samples[0].shape == (3, 4, 64, 64)
    assert torch.allclose(samples[0].sum(1), torch.ones(3, 64, 64), atol=1e-5)
    assert not torch.allclose(samples[0], samples[1])  # dropout varies between samples
    alone = list(model.mc_probs(x[1:2], 5, seeds=[2]))
    for t in range(5):
        assert torch.allclose(alone[t][0], samples[t][1], atol=1e-6)
    again = list(model.mc_probs(x, 5, seeds=[1, 2, 3]))
    assert all(torch.equal(a, b) for a, b in zip(samples, again, strict=True))


def test_modes_differ_only_where_dropout_is():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    last = build_model(small(dropout_p=0.0, mc_mode="last_layer"))
    full = build_model(small(dropout_p=0.0, mc_mode="full"))
    full.load_state_dict(last.state_dict())
    for module in full.modules():  # switch off the ASPP dropout too
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    last.eval()
    with torch.no_grad():
        reference = torch.softmax(last(x), 1)
    for model in (last, full):
        for probs in model.mc_probs(x, 3, seeds=[0, 1]):
            assert torch.allclose(probs, reference, atol=1e-5)


def test_full_mode_keeps_batchnorm_in_eval_and_samples_vary():
    torch.manual_seed(0)
    model = build_model(small(mc_mode="full"))
    bn_training = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda mod, *_: bn_training.append(mod.training))
    x = torch.randn(2, 3, 64, 64)
    samples = list(model.mc_probs(x, 3, seeds=[0, 1]))
    assert bn_training and not any(bn_training)
    assert not torch.allclose(samples[0], samples[1])
    assert samples[0].shape == (2, 4, 64, 64)


def test_channel_dropout_sample_is_the_head_with_those_feature_maps_dropped():
    torch.manual_seed(0)
    model = build_model(small(dropout_p=0.5, dropout_kind="channel")).eval()
    x = torch.randn(1, 3, 64, 64)
    samples = list(model.mc_probs(x, 2, seeds=[7]))
    g = torch.Generator().manual_seed(7)
    keep = torch.rand((2, 1, 256), generator=g) >= 0.5
    with torch.no_grad():
        feats = model.features(x)
        for t in range(2):
            dropped = feats * keep[t, 0].float().view(1, -1, 1, 1) * 2.0
            expected = torch.softmax(model.net.segmentation_head(dropped), 1)
            assert torch.allclose(samples[t], expected, atol=1e-5)
    assert isinstance(model.head_dropout, nn.Dropout2d)
