from pathlib import Path

import pytest
import yaml

from balseg.config import ConfigError, apply_overrides, load_config, parse_config


def write(tmp_path, raw):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, {"name": "x", "train": {"steps": 5}})
    cfg = load_config(path, ["train.steps=7", "acquisition.strategy=margin",
                             "data.size=[32, 48]"])
    assert cfg.train.steps == 7
    assert cfg.acquisition.strategy == "margin"
    assert cfg.data.size == (32, 48)


@pytest.mark.parametrize(("raw", "message"), [
    ({"trian": {"steps": 3}}, "trian: Extra inputs are not permitted"),
    ({"train": {"steps": "many"}}, "train.steps"),
    ({"train": {"steps": 0}}, "train.steps"),
    ({"acquisition": {"strategy": "magic"}}, "unknown strategy 'magic'"),
    ({"acquisition": {"strategy": "bald", "mc_samples": 1}}, "needs mc_samples >= 2"),
    ({"data": {"size": [0, 10]}}, "data.size"),
    ({"model": {"mc_mode": "half"}}, "model.mc_mode"),
])
def test_invalid_configs_name_the_key(tmp_path, raw, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, raw))
    assert message in str(err.value)
    assert str(tmp_path / "c.yaml") in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        parse_config([1, 2], source="x")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.steps"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_relative_root_resolves_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write(tmp_path, {"data": {"dataset": "camvid", "root": "data/camvid"}}))
    assert cfg.data.root == str(tmp_path / "data" / "camvid")


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.name and cfg.budget.cycles >= 1


def test_camvid_config_is_the_headline_protocol():
    """docs/benchmarks.md's headline table: BalEntAcq + PixelPick selection, dropout 0.1."""
    cfg = load_config(Path(__file__).parents[2] / "configs" / "camvid.yaml")
    assert (cfg.acquisition.strategy, cfg.acquisition.selection) == ("balentacq", "pixelpick")
    assert cfg.model.dropout_p == 0.1 and cfg.acquisition.mc_samples == 10
    budget = cfg.budget
    assert budget.initial_pixels_per_image + budget.cycles * budget.pixels_per_cycle == 50
