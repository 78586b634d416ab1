import pytest

from balseg.loop.bench import bench_configs, strategy_overrides
from balseg.loop.config import ConfigError, parse_config


def test_strategy_specs():
    assert strategy_overrides("margin+pixelpick") == {"strategy": "margin",
                                                      "selection": "pixelpick"}
    assert strategy_overrides("balentacq+compat") == {"strategy": "balentacq",
                                                      "official_compat": True}
    with pytest.raises(ConfigError, match="applies to balent"):
        strategy_overrides("entropy+compat")
    with pytest.raises(ConfigError, match="unknown flag 'fast'"):
        strategy_overrides("bald+fast")


def test_bench_runs_seed_by_seed_and_supervised_once():
    base = parse_config({"name": "b"}, source="t")
    runs = bench_configs(base, ["random", "balentacq+compat", "supervised"], [0, 1])
    assert [sub for sub, _ in runs] == ["random/seed0", "balentacq+compat/seed0",
                                        "supervised/seed0", "random/seed1",
                                        "balentacq+compat/seed1"]
    cfg = dict(runs)["balentacq+compat/seed1"]
    assert cfg.seed == 1 and cfg.acquisition.official_compat
    assert cfg.name == "b-balentacq+compat-s1"
