"""Unlabelled pixels in training: pseudo-labels from the pool pass and consistency."""

import numpy as np
import pytest
import torch

from balseg.data.base import IGNORE_INDEX
from balseg.data.diskarray import DiskArray, NpyWriter
from balseg.train import TrainSettings, train_cycle
from balseg.train.labels import SparseLabels
from balseg.train.pseudo import LEVELS, PSEUDO_OFFSET, PseudoLabels, PseudoWriter, class_levels
from balseg.train.trainer import strong_view

from .test_trainer import TinyNet, _data


def _write(tmp_path, preds, confs, num_classes=3):
    n, h, w = preds.shape
    writer = PseudoWriter((tmp_path / "p.npy", tmp_path / "p.json"), n, (h + 2, w), num_classes)
    for i in range(n):
        writer.write(i, preds[i], confs[i])
    writer.commit()
    return tmp_path / "p.npy", tmp_path / "p.json"


def test_answers_and_queries_always_override_pseudo_labels(tmp_path):
    preds = torch.full((2, 4, 5), 2, dtype=torch.long)
    confs = torch.full((2, 4, 5), 0.99)
    confs[0, 3, 4] = 0.5  # not confident: no label
    paths = _write(tmp_path, preds, confs)
    answers = SparseLabels((6, 5), {0: (torch.tensor([[0, 0]]), torch.tensor([1]))})
    # (1, 1) of image 0 was asked and answered 'unknown': no label at all, never pseudo
    queried = {0: torch.tensor([[0, 0], [1, 1]])}
    labels = PseudoLabels.open(answers, paths, threshold=0.9, class_top=None, queried=queried)
    first = labels[0]
    assert first[0, 0] == 1  # the answer, not the pseudo-label 2
    assert first[1, 1] == IGNORE_INDEX
    assert first[3, 4] == IGNORE_INDEX  # below the threshold
    assert first[0, 1] == PSEUDO_OFFSET + 2
    assert (first[4:] == IGNORE_INDEX).all()  # padding rows of the working map
    assert (labels[1][:4] == PSEUDO_OFFSET + 2).all()
    assert list(labels.labeled_indices()) == [0, 1]
    # the answers themselves are untouched: pseudo-labels never become answers
    assert answers.num_labeled() == 1


def test_class_top_keeps_the_most_confident_share_of_every_class():
    hist = np.zeros((3, LEVELS), dtype=np.int64)
    hist[0, 255] = 90  # a frequent class, always sure
    hist[0, 100] = 10
    hist[1, np.arange(200, 250)] = 1  # a rare class, 50 pixels spread over levels
    levels = class_levels(hist, threshold=0.5, class_top=0.2)
    assert levels[0] == 255  # ties at the top are kept whole (90% here)
    assert levels[1] == 240  # exactly the 10 most confident of 50
    assert levels[2] == np.ceil(0.5 * 255)  # nothing predicted: the threshold
    plain = class_levels(hist, threshold=0.9, class_top=None)
    assert (plain == 230).all()


def test_accuracy_is_measured_against_the_masks(tmp_path):
    preds = torch.tensor([[[0, 0, 1, 1]]])
    paths = _write(tmp_path, preds, torch.ones(1, 1, 4))
    labels = PseudoLabels.open(SparseLabels((3, 4), {}), paths, threshold=0.9, class_top=None,
                               queried={})
    truth = torch.full((1, 3, 4), IGNORE_INDEX, dtype=torch.uint8)
    truth[0, 0] = torch.tensor([0, 1, 1, IGNORE_INDEX])
    acc = labels.accuracy(truth, 3)
    assert acc["pseudo_pixels_per_image"] == 4
    assert acc["pseudo_accuracy"] == pytest.approx(2 / 3)
    assert acc["pseudo_per_class_accuracy"] == [0.5, 1.0, None]
    assert acc["pseudo_per_class_pixels"] == [2, 2, 0]


def test_pseudo_labels_stay_on_disk(tmp_path):
    """Reading them holds one image at a time: Python's peak allocation does not grow with
    the number of images (docs/architecture.md, "Memory")."""
    import tracemalloc

    peaks = []
    for n in (8, 128):
        folder = tmp_path / str(n)
        folder.mkdir()
        preds = torch.zeros((n, 32, 32), dtype=torch.long)
        paths = _write(folder, preds, torch.ones(n, 32, 32))
        labels = PseudoLabels.open(SparseLabels((34, 32), {}), paths, threshold=0.9,
                                   class_top=None, queried={})
        with NpyWriter(folder / "truth.npy", (n, 34, 32), np.uint8):
            pass  # all class 0
        tracemalloc.start()
        for i in range(n):
            labels[i]
        assert labels.accuracy(DiskArray(folder / "truth.npy"), 3)["pseudo_accuracy"] == 1.0
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0] + 64 * 1024


def test_pseudo_labels_train_with_their_own_weight(tmp_path):
    images, labels = _data(n=4)
    preds = torch.randint(0, 3, (4, 16, 16), generator=torch.Generator().manual_seed(2))
    paths = _write(tmp_path, preds[:, :14], torch.ones(4, 14, 16))
    answers = SparseLabels((16, 16), {i: (torch.nonzero(labels[i] != IGNORE_INDEX),
                                          labels[i][labels[i] != IGNORE_INDEX])
                                      for i in range(4)})
    mixed = PseudoLabels.open(answers, paths, threshold=0.9, class_top=None, queried={})
    results = []
    for weight in (1.0, 0.5):
        net = TinyNet()
        train_cycle(net, images, mixed, TrainSettings(steps=3, batch_size=2,
                                                      unlabeled_weight=weight),
                    mean=(0.5,) * 3, std=(0.5,) * 3)
        results.append(net.cls.weight.detach().clone())
    plain = TinyNet()
    train_cycle(plain, images, answers, TrainSettings(steps=3, batch_size=2),
                mean=(0.5,) * 3, std=(0.5,) * 3)
    assert not torch.equal(results[0], results[1])  # the weight matters
    assert not torch.equal(results[0], plain.cls.weight)  # the pseudo-labels matter


def test_consistency_adds_a_strong_view_loss():
    images, labels = _data(n=4)
    weights = []
    for consistency in (False, True, True):
        net = TinyNet()
        train_cycle(net, images, labels, TrainSettings(steps=3, batch_size=2, seed=4,
                                                       consistency=consistency,
                                                       unlabeled_threshold=0.0),
                    mean=(0.5,) * 3, std=(0.5,) * 3)
        weights.append(net.cls.weight.detach().clone())
    assert not torch.equal(weights[0], weights[1])
    assert torch.equal(weights[1], weights[2])  # seeded: the same strong views again


def test_strong_view_keeps_geometry_and_is_seeded():
    x = torch.randn(2, 3, 20, 24)
    a, erased = strong_view(x, (0.5,) * 3, (0.5,) * 3, [1, 2])
    b, again = strong_view(x, (0.5,) * 3, (0.5,) * 3, [1, 2])
    assert a.shape == x.shape and torch.equal(a, b) and torch.equal(erased, again)
    assert erased.shape == (2, 20, 24)
    assert erased[0].sum() == (20 // 4) * (24 // 4)
    assert not torch.equal(a[0], x[0])
