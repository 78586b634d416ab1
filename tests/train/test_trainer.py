import pytest
import torch
from torch import nn

from balseg.data.base import IGNORE_INDEX
from balseg.train import TrainSettings, train_cycle


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Dropout2d(0.3))
        self.cls = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.cls(self.body(x))


def _data(n=6, h=16, w=16):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)
    labels = torch.full((n, h, w), IGNORE_INDEX, dtype=torch.uint8)
    labels[:, ::4, ::4] = torch.randint(0, 3, labels[:, ::4, ::4].shape, generator=g).to(
        torch.uint8)
    return images, labels


def _train(freeze_bn, seed=0):
    net = TinyNet()
    images, labels = _data()
    stats = train_cycle(net, images, labels,
                        TrainSettings(steps=5, batch_size=4, seed=seed, freeze_bn=freeze_bn),
                        mean=(0.5,) * 3, std=(0.5,) * 3)
    return net, stats


def test_training_is_seeded_and_learns():
    a, stats = _train(False)
    b, _ = _train(False)
    c, _ = _train(False, seed=1)
    assert stats.steps == 5 and stats.images_seen == 20
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed: the same model
    assert not torch.equal(sa["cls.weight"], sc["cls.weight"])  # dropout/order follow seed
    assert not torch.equal(sa["cls.weight"], TinyNet().cls.weight)  # and it trained
    assert not a.training  # handed back in eval mode


def test_freeze_bn_keeps_running_statistics_but_trains_the_affine_parameters():
    fresh = TinyNet().body[1]
    frozen, _ = _train(True)
    bn = frozen.body[1]
    assert torch.equal(bn.running_mean, fresh.running_mean)
    assert torch.equal(bn.running_var, fresh.running_var)
    assert int(bn.num_batches_tracked) == 0
    assert not torch.equal(bn.weight, fresh.weight)
    moving, _ = _train(False)
    assert not torch.equal(moving.body[1].running_mean, fresh.running_mean)


def test_no_labeled_pixel_is_a_clear_error():
    images, labels = _data()
    labels.fill_(IGNORE_INDEX)
    with pytest.raises(ValueError, match="no labeled pixel"):
        train_cycle(TinyNet(), images, labels, TrainSettings(steps=1),
                    mean=(0.5,) * 3, std=(0.5,) * 3)
