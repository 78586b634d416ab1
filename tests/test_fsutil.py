import pytest

from balseg.fsutil import atomic_open, atomic_write_bytes


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]  # no temp file left


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_files_get_the_normal_file_mode(tmp_path):
    import stat

    from balseg import fsutil
    from balseg.fsutil import atomic_write_bytes

    atomic_write_bytes(tmp_path / "a.json", b"{}")
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == 0o666 & ~fsutil._UMASK  # 0o644 under the usual umask, not 0o600
