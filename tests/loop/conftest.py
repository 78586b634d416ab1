import pytest
from typer.testing import CliRunner


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Prepared-split caches go to a per-session temp folder, never to ~/.cache."""
    monkeypatch.setenv("BALSEG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny_config(root, **overrides):
    """A run that finishes in seconds: 8 images of 32x48, a tiny training budget."""
    cfg = {
        "name": "tiny",
        "seed": 3,
        "threads": 1,
        "overlay_images": 2,
        "data": {"dataset": "synthetic", "root": str(root),
                 "options": {"num_train": 8, "num_val": 4, "size": [48, 64]}},
        "model": {"encoder_weights": None, "dropout_p": 0.3},
        "train": {"steps": 3, "batch_size": 4, "eval_batch_size": 4},
        "acquisition": {"strategy": "balentacq", "mc_samples": 3, "score_batch_size": 4},
        "budget": {"initial_pixels_per_image": 4, "pixels_per_cycle": 3, "cycles": 2},
    }
    for key, value in overrides.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


@pytest.fixture(autouse=True)
def _restore_threads():
    """The loop applies the config's thread count process-wide; undo it after each test."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cli():
    """The `balseg` command line with every command group registered."""
    from balseg.cli import _register_all

    _register_all()
    return CliRunner()


def invoke(cli, *args):
    """`balseg ARGS...` in-process; arguments may be paths or numbers."""
    from balseg.cli import app

    return cli.invoke(app, [str(a) for a in args])
