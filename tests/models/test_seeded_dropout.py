import pytest
import torch
from torch import nn

from balseg.models.seeded_dropout import per_sample_dropout


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.Dropout2d(0.4), nn.Conv2d(8, 8, 1),
                         nn.Dropout(0.3), nn.Conv2d(8, 2, 1)).train()


def test_a_sample_gets_the_same_masks_whatever_the_batch_split():
    net, x = _net(), torch.randn(6, 3, 5, 7)
    seeds = [11, 12, 13, 14, 15, 16]
    with per_sample_dropout(net, seeds):
        whole = net(x)
    with per_sample_dropout(net, seeds[0::2]):
        even = net(x[0::2])
    with per_sample_dropout(net, seeds[1::2]):
        odd = net(x[1::2])
    assert torch.allclose(whole[0::2], even, atol=1e-6)
    assert torch.allclose(whole[1::2], odd, atol=1e-6)
    # and the masks do drop: other seeds, other outputs; eval mode: no dropout at all
    with per_sample_dropout(net, [s + 100 for s in seeds]):
        assert not torch.allclose(net(x), whole)
    net.eval()
    with per_sample_dropout(net, seeds):
        assert torch.equal(net(x), net.eval()(x))


def test_channel_masks_drop_whole_channels_at_the_right_rate():
    drop = nn.Dropout2d(0.25).train()
    x = torch.ones(400, 16, 3, 3)
    with per_sample_dropout(drop, list(range(400))):
        y = drop(x)
    per_channel = y.flatten(2)
    assert torch.all((per_channel == 0).all(2) | (per_channel == 1 / 0.75).all(2))
    assert (per_channel[:, :, 0] == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)


def test_forward_is_restored_and_wrong_seed_count_is_an_error():
    net, x = _net(), torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="3 seeds for a batch of 2"), \
            per_sample_dropout(net, [1, 2, 3]):
        net(x)
    assert "forward" not in vars(net[1])
