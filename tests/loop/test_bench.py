from pathlib import Path

import pytest
import yaml

from balseg.config import ConfigError, load_config, parse_config
from balseg.experiments.bench import bench_configs
from balseg.strategy import DEFAULT_STRATEGIES, parse_strategy

REPO = Path(__file__).resolve().parents[2]


def test_strategy_specs():
    assert parse_strategy("margin+pixelpick").overrides() == {"strategy": "margin",
                                                      "selection": "pixelpick"}
    assert parse_strategy("balentacq+compat").overrides() == {"strategy": "balentacq",
                                                      "selection": "topk",
                                                      "official_compat": True}
    with pytest.raises(ConfigError, match="applies to balent"):
        parse_strategy("entropy+compat").overrides()
    with pytest.raises(ConfigError, match="unknown flag 'fast'"):
        parse_strategy("bald+fast").overrides()


def test_bench_runs_seed_by_seed_and_supervised_once():
    base = parse_config({"name": "b"}, source="t")
    runs = bench_configs(base, ["random", "balentacq+compat", "supervised"], [0, 1])
    assert [sub for sub, _ in runs] == ["random/seed0", "balentacq+compat/seed0",
                                        "supervised/seed0", "random/seed1",
                                        "balentacq+compat/seed1"]
    cfg = dict(runs)["balentacq+compat/seed1"]
    assert cfg.seed == 1 and cfg.acquisition.official_compat
    assert cfg.name == "b-balentacq+compat-s1"


def test_a_bare_strategy_name_means_topk_whatever_the_base_config_selects():
    base = parse_config({"name": "b", "acquisition": {"selection": "pixelpick"}}, source="t")
    runs = dict(bench_configs(base, ["entropy", "entropy+pixelpick"], [0]))
    assert runs["entropy/seed0"].acquisition.selection == "topk"
    assert runs["entropy+pixelpick/seed0"].acquisition.selection == "pixelpick"



def test_pixelpick_percent_sets_the_pool_of_that_strategy_only():
    base = parse_config({"name": "b", "acquisition": {"top_fraction": 0.05}}, source="t")
    runs = dict(bench_configs(base, ["margin+pixelpick", "balentacq+pixelpick10+compat"], [0]))
    assert runs["margin+pixelpick/seed0"].acquisition.top_fraction == 0.05
    bal = runs["balentacq+pixelpick10+compat/seed0"].acquisition
    assert (bal.selection, bal.top_fraction, bal.official_compat) == ("pixelpick", 0.1, True)
    assert parse_strategy("random+pixelpick100").overrides()["top_fraction"] == 1.0
    for bad in ("pixelpick0", "pixelpick101", "pixelpick2.5", "pixelpickx"):
        with pytest.raises(ConfigError, match=f"whole percent.*{bad.removeprefix('pixelpick')}"):
            parse_strategy(f"margin+{bad}").overrides()


def test_default_bench_is_the_issue_comparison_with_pixelpicks_own_pool_for_margin():
    base = parse_config({"name": "b"}, source="t")
    runs = dict(bench_configs(base, DEFAULT_STRATEGIES, [0, 1, 2]))
    acq = {sub.split("/")[0]: cfg.acquisition for sub, cfg in runs.items()}
    assert {a.strategy for a in acq.values()} >= {"random", "entropy", "margin", "bald",
                                                  "balentacq", "supervised"}
    assert (acq["margin+pixelpick"].selection, acq["margin+pixelpick"].top_fraction) == (
        "pixelpick", 0.05)
    assert acq["balentacq+pixelpick10"].top_fraction == 0.1
    assert acq["balentacq+pixelpick+compat"].official_compat
    assert sum(sub.startswith("balentacq+pixelpick+compat/") for sub in runs) == 1
    assert sum(sub.startswith("random/") for sub in runs) == 3


def _stored_runs_equal_bench(folder: Path, base) -> set[str]:
    """Each stored snapshot under ``folder`` equals the bench's config for its strategy and
    seed (the data root aside: it names where the data lay); returns the stored runs."""
    stored_runs = set()
    for snap in sorted(folder.glob("*/seed*/config.yaml")):
        spec, seed = snap.parent.parent.name, int(snap.parent.name.removeprefix("seed"))
        stored = parse_config(yaml.safe_load(snap.read_text()), source=str(snap))
        [(sub, cfg)] = bench_configs(base, [spec], [seed])
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(
            update={"root": stored.data.root})})
        assert cfg == stored, snap
        stored_runs.add(sub)
    return stored_runs


def test_stored_headline_runs_are_the_runs_the_documented_bench_command_makes():
    """docs/benchmarks.md promises that `balseg bench configs/camvid.yaml` (strategies and
    seeds from its `bench` section) finds every run of the headline table stored and
    finished: the stored runs are exactly the bench's, with the bench's configs."""
    base = load_config(REPO / "configs" / "camvid.yaml")
    folder = REPO / "benchmarks/results/camvid-cpu-element-v2"
    wanted = {sub for sub, _ in bench_configs(base, base.bench.strategies, base.bench.seeds)}
    assert _stored_runs_equal_bench(folder, base) == wanted
    for sub in wanted:
        assert (folder / sub / "metrics.csv").is_file(), sub


def test_stored_channel_dropout_runs_are_what_the_documented_command_makes():
    """docs/benchmarks.md's channel-dropout headline is
    `balseg bench configs/camvid.yaml --set model.dropout_kind=channel --strategy ...`
    (the default strategies)."""
    base = load_config(REPO / "configs" / "camvid.yaml", ["model.dropout_kind=channel"])
    folder = REPO / "benchmarks/results/camvid-cpu-dropout0.1"
    stored = _stored_runs_equal_bench(folder, base)
    assert {sub.split("/")[0] for sub in stored} >= {
        spec.partition("@")[0] for spec in DEFAULT_STRATEGIES}


def test_bench_section_of_a_config_is_what_bench_runs_and_not_part_of_a_run(tmp_path, cli):
    from .conftest import invoke, tiny_config

    raw = tiny_config(tmp_path / "data", **{"budget.cycles": 1})
    raw["bench"] = {"strategies": ["random", "entropy@1"], "seeds": [3, 4]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    result = invoke(cli, "bench", tmp_path / "c.yaml", "--out", tmp_path / "b", "--quiet",
                    "--no-report")
    assert result.exit_code == 0, result.output
    runs = sorted(str(p.parent.relative_to(tmp_path / "b"))
                  for p in (tmp_path / "b").glob("*/seed*/config.yaml"))
    assert runs == ["entropy/seed3", "random/seed3", "random/seed4"]
    snap = yaml.safe_load((tmp_path / "b" / "random" / "seed4" / "config.yaml").read_text())
    assert "bench" not in snap and snap["seed"] == 4
    # the command line wins over the section
    result = invoke(cli, "bench", tmp_path / "c.yaml", "--out", tmp_path / "b2", "--quiet",
                    "--no-report", "--strategy", "random", "--seed", "7")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "b2" / "random").iterdir()] == ["seed7"]
    assert not (tmp_path / "b2" / "entropy").exists()


@pytest.mark.parametrize(("section", "message"), [
    ({"strategies": ["balentacq+foo"]}, "bench.strategies.*unknown flag 'foo'"),
    ({"strategies": ["balentaq+pixelpick"]}, "unknown score 'balentaq'.*did you mean"),
    ({"strategies": ["margin+firstmragin"]}, "unknown score 'mragin'"),
    ({"strategies": ["margin", "margin@3"]}, "'margin' and 'margin@3' are the same runs"),
    ({"strategies": []}, "bench.strategies"),
    ({"seeds": [1, 2, 1]}, "bench.seeds.*seed 1 is listed twice"),
    ({"seed": [1]}, "bench.seed: unknown key; did you mean bench.seeds"),
])
def test_a_bad_bench_section_is_refused_naming_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"bench": section}, source="c.yaml")


def test_seed_limit_runs_a_strategy_with_the_first_seeds_only():
    base = parse_config({"name": "b"}, source="t")
    runs = bench_configs(base, ["random", "balentacq+pixelpick+compat@1", "bald@2"], [4, 5, 6])
    assert [sub for sub, _ in runs] == [
        "random/seed4", "balentacq+pixelpick+compat/seed4", "bald/seed4",
        "random/seed5", "bald/seed5", "random/seed6"]
    cfg = dict(runs)["balentacq+pixelpick+compat/seed4"]
    assert cfg.acquisition.selection == "pixelpick" and cfg.acquisition.official_compat
    for bad in ("bald@0", "bald@x", "bald@"):
        with pytest.raises(ConfigError, match="number of seeds"):
            bench_configs(base, [bad], [0])


def _labels(run_dir):
    from balseg.labels import LabelStore

    with LabelStore(run_dir / "labels.sqlite", readonly=True) as db:
        return sorted((q.cycle, q.image_id, q.y, q.x) for q in db.queries())


def test_shared_cycle0_gives_the_runs_an_unshared_bench_gives(tmp_path):
    """Starting each strategy from the seed's shared cycle 0 changes nothing but the cost."""
    import json

    from balseg.experiments.bench import run_bench

    from .conftest import tiny_config

    base = parse_config(tiny_config(tmp_path / "data", **{"budget.cycles": 1}), source="t")
    shared = run_bench(base, tmp_path / "shared", ["random", "entropy"], [0], progress=False)
    alone = run_bench(base, tmp_path / "alone", ["random", "entropy"], [0], progress=False,
                      share_cycle0=False)
    assert len(list((tmp_path / "shared" / "_cycle0").glob("*/seed0"))) == 1
    assert not (tmp_path / "alone" / "_cycle0").exists()
    for a, b in zip(shared, alone, strict=True):
        assert _labels(a) == _labels(b)
        assert {c for c, *_ in _labels(a)} == {0, 1}
        rows_a = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
        rows_b = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
        assert [r["strategy"] for r in rows_a] == [r["strategy"] for r in rows_b]
        assert [r["miou"] for r in rows_a] == pytest.approx([r["miou"] for r in rows_b])
    # a second call finds every run finished and does no work
    again = run_bench(base, tmp_path / "shared", ["random", "entropy"], [0], progress=False)
    assert again == shared


def test_supervised_steps_reach_the_reference_only(tmp_path):
    """One bench command trains the reference longer; its snapshot records what it ran,
    and the active-learning runs (and their shared cycle 0 key) do not depend on it."""
    from balseg.experiments.bench import _cycle0_dir
    from balseg.loop.runner import ActiveLearningLoop

    from .conftest import tiny_config

    raw = tiny_config(tmp_path / "data", **{"train.supervised_steps": 5})
    runs = dict(bench_configs(parse_config(raw, source="t"), ["random", "supervised"], [0]))
    assert runs["supervised/seed0"].train.steps == 5
    assert runs["random/seed0"].train.steps == 3
    assert runs["random/seed0"].train.supervised_steps is None
    plain = dict(bench_configs(parse_config(tiny_config(tmp_path / "data"), source="t"),
                               ["random"], [0]))
    assert _cycle0_dir(tmp_path, runs["random/seed0"]) == _cycle0_dir(tmp_path,
                                                                     plain["random/seed0"])
    # `balseg run` of a supervised config honours supervised_steps too
    cfg = parse_config({**raw, "acquisition": {"strategy": "supervised"}}, source="t")
    loop = ActiveLearningLoop.from_config(cfg, tmp_path / "sup", progress=False)
    loop.run()
    assert [r["train_steps"] for r in loop.read_metrics()] == [5]
    # finished: a second call neither retrains (even with the checkpoint gone) nor rewrites
    (tmp_path / "sup" / "checkpoints" / "cycle_000.pt").unlink()
    metrics = tmp_path / "sup" / "metrics.jsonl"
    stamp = metrics.stat().st_mtime_ns
    again = ActiveLearningLoop.from_config(cfg, tmp_path / "sup", progress=False).run()
    assert again.status == "done" and metrics.stat().st_mtime_ns == stamp
    assert not (tmp_path / "sup" / "checkpoints" / "cycle_000.pt").exists()
