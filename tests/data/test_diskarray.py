"""DiskArray / NpyWriter: standard .npy files written item by item and read per item."""

import pickle

import numpy as np
import pytest
import torch

from balseg.data.diskarray import DiskArray, NpyWriter, RaggedArray, npy_nbytes


def test_written_file_is_a_standard_npy_and_reads_back_like_a_tensor(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (5, 3, 4, 6), dtype=np.uint8)
    path = tmp_path / "a.npy"
    with NpyWriter(path, data.shape, np.uint8) as w:
        for i in (4, 0, 2, 1, 3):  # any order, as worker threads finish
            w.write(i, data[i])
    assert path.stat().st_size == npy_nbytes(data.shape, np.uint8)
    assert np.array_equal(np.load(path), data)  # numpy reads it
    assert np.array_equal(np.load(path, mmap_mode="r")[2], data[2])
    a = DiskArray(path)
    t = torch.from_numpy(data)
    assert a.shape == t.shape and a.dtype == torch.uint8 and len(a) == 5
    assert torch.equal(a[3], t[3]) and torch.equal(a[-1], t[-1])
    assert torch.equal(a[1:4], t[1:4]) and torch.equal(a[[4, 0]], t[[4, 0]])
    assert torch.equal(a[2, :, 1:3], t[2, :, 1:3]) and torch.equal(a[[1, 2], 0], t[[1, 2], 0])
    assert torch.equal(a[torch.tensor([0, 3])], t[[0, 3]])
    assert np.array_equal(a.numpy(), data) and torch.equal(a.to_tensor(), t)
    with pytest.raises(IndexError, match="out of range"):
        a[5]
    b = pickle.loads(pickle.dumps(a))  # travels to other processes as its path
    assert torch.equal(b[2], t[2])


def test_truncated_file_and_wrong_item_shape_are_refused(tmp_path):
    path = tmp_path / "a.npy"
    with NpyWriter(path, (3, 4), np.uint8) as w, pytest.raises(ValueError,
                                                               match=r"item shape \(5,\)"):
        w.write(0, np.zeros(5, np.uint8))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 1)
    with pytest.raises(ValueError, match="its header says"):
        DiskArray(path)


def test_ragged_items_of_different_shapes(tmp_path):
    items = [np.full((2, 3), 1, np.uint8), np.arange(20, dtype=np.uint8).reshape(4, 5)]
    path = tmp_path / "r.npy"
    with NpyWriter(path, (26,), np.uint8) as w:
        w.write_flat(0, items[0].ravel())
        w.write_flat(6, items[1].ravel())
    r = RaggedArray(path, [(2, 3), (4, 5)])
    assert len(r) == 2
    assert all(np.array_equal(r[i].numpy(), items[i]) for i in range(2))
    with pytest.raises(ValueError, match="the shapes need 30"):
        RaggedArray(path, [(2, 3), (4, 6)])
