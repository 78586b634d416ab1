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
    ({"trian": {"steps": 3}}, "trian: unknown key; did you mean train?"),
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
    """docs/benchmarks.md's headline table: BalEntAcq + PixelPick selection, element-wise
    dropout 0.1."""
    cfg = load_config(Path(__file__).parents[2] / "configs" / "camvid.yaml")
    assert (cfg.acquisition.strategy, cfg.acquisition.selection) == ("balentacq", "pixelpick")
    assert (cfg.model.dropout_p, cfg.model.dropout_kind) == (0.1, "element")
    assert cfg.acquisition.mc_samples == 10
    budget = cfg.budget
    assert budget.initial_pixels_per_image + budget.cycles * budget.pixels_per_cycle == 50


def test_config_reference_is_generated_from_the_models():
    """docs/config.md is `python -m balseg.config`'s output, and every key has a meaning."""
    from pydantic import BaseModel

    from balseg.config import RunConfig, reference_markdown

    doc = Path(__file__).parents[2] / "docs" / "config.md"
    assert doc.read_text() == reference_markdown(), (
        "regenerate it: python -m balseg.config > docs/config.md")

    def keys(model, prefix=""):
        for name, field in model.model_fields.items():
            assert field.description, f"{prefix}{name} has no description"
            yield f"{prefix}{name}"
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                yield from keys(field.annotation, f"{prefix}{name}.")

    every = list(keys(RunConfig))
    assert len(every) > 40
    for key in every:
        assert f"| `{key}` |" in doc.read_text(), key


def test_unknown_keys_get_a_did_you_mean_and_set_takes_the_blame(tmp_path):
    path = write(tmp_path, {"train": {"stpes": 3}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: invalid config: train.stpes: unknown key; did you mean" \
                             " train.steps?"
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"train": {"steps": 3}}))
    with pytest.raises(ConfigError) as err:  # the file is fine: --set is to blame
        load_config(good, ["budget.cyclez=3"])
    assert str(err.value) == (f"invalid --set (applied to {good}): budget.cyclez: unknown key;"
                              " did you mean budget.cycles? (from --set)")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["train.lr=fast"])
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path} and --set: invalid config"
    assert "  train.stpes: unknown key; did you mean train.steps?" in lines
    assert any(line.startswith("  train.lr: ") and line.endswith("(from --set)")
               for line in lines)
    with pytest.raises(ConfigError, match=r"zzz: unknown key \(valid: name, seed, device"):
        load_config(write(tmp_path, {"zzz": 1}))


@pytest.mark.parametrize(("raw", "message"), [
    ({"data": {"dataset": "foldr"}}, "unknown dataset 'foldr' (one of camvid, cityscapes,"
                                     " voc2012, ade20k, folder, synthetic); did you mean"
                                     " 'folder'?"),
    ({"acquisition": {"strategy": "balentaq"}}, "did you mean 'balentacq'?"),
    ({"train": {"augment": {"scale": [0, 2]}}}, "0 < low <= high"),
])
def test_misspelt_names_and_bad_ranges_are_config_errors(tmp_path, raw, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, raw))
    assert message in str(err.value)
