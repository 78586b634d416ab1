"""One device resolver: config validation, `auto`, devices this machine lacks; every command
resolves through it (evaluate and predict default to the run's device)."""

import pytest
import torch

from balseg.config import parse_config
from balseg.devices import resolve_device
from balseg.errors import ConfigError


def gpus(n):
    return lambda: n


def test_auto_takes_a_gpu_when_there_is_one():
    assert resolve_device("auto", cuda_count=gpus(0)) == torch.device("cpu")
    assert resolve_device("auto", cuda_count=gpus(2)) == torch.device("cuda")
    assert resolve_device("cuda:1", cuda_count=gpus(2)) == torch.device("cuda", 1)
    assert resolve_device("cpu", cuda_count=gpus(2)) == torch.device("cpu")


def test_a_device_this_machine_lacks_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match="device 'cuda': this machine has no CUDA device"):
        resolve_device("cuda", cuda_count=gpus(0))
    with pytest.raises(ConfigError, match=r"--device 'cuda:2': this machine has 2 CUDA"
                                          r" device\(s\) \(cuda:0, cuda:1\)"):
        resolve_device("cuda:2", what="--device", cuda_count=gpus(2))
    with pytest.raises(ConfigError, match="'mps': Apple's GPU is not available"):
        resolve_device("mps", cuda_count=gpus(0), mps_available=lambda: False)
    with pytest.raises(ConfigError, match="'gpu' is not a device"):
        resolve_device("gpu")


def test_the_config_refuses_a_device_name_before_anything_runs():
    with pytest.raises(ConfigError, match=r"device: Value error, 'cuda1' is not a device"):
        parse_config({"device": "cuda1"}, source="c.yaml")
    assert parse_config({"device": "cuda:0"}, source="c.yaml").device == "cuda:0"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_cuda_run_on_a_cpu_machine_is_refused_in_one_line(tmp_path):
    from balseg.loop import ActiveLearningLoop
    from tests.loop.conftest import tiny_config

    cfg = parse_config(tiny_config(tmp_path / "synth", device="cuda"), source="t")
    with pytest.raises(ConfigError, match="device 'cuda': this machine has no CUDA device"):
        ActiveLearningLoop.from_config(cfg, tmp_path / "run", progress=False)


def test_evaluate_and_predict_use_the_runs_device(monkeypatch, tmp_path):
    """They resolve the run's `device` unless told otherwise (evaluate ran on the CPU
    whatever the run said)."""
    import balseg.devices as devices
    from balseg.loop.evaluate import evaluate_checkpoint
    from balseg.predict.job import load_predictor, open_run_info
    from tests.loop.conftest import tiny_config

    asked = []
    real = devices.resolve_device

    def spy(name, **kw):
        asked.append((name, kw.get("what", "device")))
        return real("cpu")

    monkeypatch.setattr(devices, "resolve_device", spy)
    from balseg.loop import ActiveLearningLoop

    cfg = parse_config(tiny_config(tmp_path / "synth", **{"budget.cycles": 0}), source="t")
    cfg = cfg.model_copy(update={"device": "cpu"})
    loop = ActiveLearningLoop.from_config(cfg, tmp_path / "run", progress=False)
    loop.run()
    loop.close()
    raw = (tmp_path / "run" / "config.yaml").read_text().replace("device: cpu",
                                                                   "device: cuda:3")
    (tmp_path / "run" / "config.yaml").write_text(raw)
    asked.clear()
    evaluate_checkpoint(tmp_path / "run", "val")
    load_predictor(open_run_info(tmp_path / "run"))
    evaluate_checkpoint(tmp_path / "run", "val", device="cpu")
    assert asked == [("cuda:3", "device"), ("cuda:3", "--device"), ("cpu", "--device")]
