"""SegAugment: joint geometry, sparse labels kept sparse, reproducible with a seed."""

from __future__ import annotations

import pytest
import torch

from balseg.data import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, SegAugment, normalize

B, H, W, C = 4, 40, 56, 5


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, dense labels, sparse labels: 3% of the dense ones, the rest ignore)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (B, 3, H, W), dtype=torch.uint8, generator=g)
    dense = torch.randint(0, C, (B, H, W), dtype=torch.uint8, generator=g)
    keep = torch.rand((B, H, W), generator=g) < 0.03
    sparse = torch.where(keep, dense, torch.full_like(dense, IGNORE_INDEX))
    return images, dense, sparse


def test_shapes_dtypes_and_value_set() -> None:
    images, _, sparse = batch()
    x, y = SegAugment(scale=(0.5, 1.5))(images, sparse.long(), seed=3)
    assert x.shape == (B, 3, H, W) and x.dtype == torch.float32
    assert y.shape == (B, H, W) and y.dtype == torch.int64
    values = set(torch.unique(y).tolist())
    assert values <= set(range(C)) | {IGNORE_INDEX}
    assert IGNORE_INDEX in values and len(values) > 1


def test_sparse_labels_stay_sparse_and_are_never_invented() -> None:
    """Augmenting sparse labels == masking the augmented dense labels with the augmented
    'is labeled' map: nearest resampling only copies labels, and pads/crops with ignore."""
    images, dense, sparse = batch(1)
    is_labeled = torch.where(sparse != IGNORE_INDEX, 0, IGNORE_INDEX).to(torch.uint8)
    aug = SegAugment(hflip=0.5, scale=(0.6, 1.6), color_jitter=0.3)
    for seed in range(6):
        _, y_sparse = aug(images, sparse, seed=seed)
        _, y_dense = aug(images, dense, seed=seed)
        _, y_mask = aug(images, is_labeled, seed=seed)
        expected = torch.where(y_mask == 0, y_dense, IGNORE_INDEX)
        assert torch.equal(y_sparse, expected)
        # No more labeled pixels than the largest scale can replicate.
        assert (y_sparse != IGNORE_INDEX).sum() <= (sparse != IGNORE_INDEX).sum() * 1.6**2 + 50


def test_without_random_steps_it_only_normalises() -> None:
    images, _, sparse = batch(2)
    aug = SegAugment(hflip=0.0, scale=None, color_jitter=0.0, mean=(0.5,) * 3, std=(0.25,) * 3)
    x, y = aug(images, sparse)
    assert torch.allclose(x, (images.float() / 255 - 0.5) / 0.25)
    assert torch.equal(y, sparse.long())


def test_flip_moves_image_and_labels_together() -> None:
    images, dense, _ = batch(3)
    aug = SegAugment(hflip=1.0, scale=None, color_jitter=0.0)
    x, y = aug(images, dense)
    assert torch.allclose(x, normalize(images.flip(-1)))
    assert torch.equal(y, dense.flip(-1).long())


def test_pixels_padded_in_by_downscaling_are_ignore() -> None:
    images, dense, _ = batch(4)
    _, y = SegAugment(hflip=0.0, scale=(0.5, 0.5), color_jitter=0.0)(images, dense, seed=0)
    assert ((y == IGNORE_INDEX).float().mean(dim=(1, 2)) > 0.5).all()


def test_reproducible_with_seed_or_generator_and_leaves_global_rng_alone() -> None:
    images, _, sparse = batch(5)
    aug = SegAugment()
    a = aug(images, sparse, seed=11)
    state = torch.random.get_rng_state()
    b = aug(images, sparse, seed=11)
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = aug(images, sparse, seed=12)
    assert not torch.equal(a[0], c[0])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    d, e = aug(images, sparse, generator=g1), aug(images, sparse, generator=g2)
    assert torch.equal(d[0], e[0]) and torch.equal(d[1], e[1])
    # Without seed it draws from the global RNG, so a caller's manual_seed reproduces it.
    torch.manual_seed(7)
    f = aug(images, sparse)
    torch.manual_seed(7)
    g = aug(images, sparse)
    assert torch.equal(f[0], g[0]) and torch.equal(f[1], g[1])


def test_normalize_defaults_to_imagenet() -> None:
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    x = normalize(images)
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x[0, :, 0, 0], expected)
    assert normalize(images[0]).shape == (3, 4, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_stay_on_device_and_match_cpu_labels() -> None:
    images, _, sparse = batch(6)
    aug = SegAugment()
    x_cpu, y_cpu = aug(images, sparse, seed=9)
    x, y = aug(images.cuda(), sparse.cuda(), seed=9)
    assert x.is_cuda and y.is_cuda
    # Same random draws; kernels may round differently at a few pixels.
    assert (y.cpu() == y_cpu).float().mean() > 0.99
    assert (x.cpu() - x_cpu).abs().mean() < 0.05
