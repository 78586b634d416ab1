"""The loop takes its collaborators as objects; ``from_config`` builds the ones not given."""

import sqlite3

import numpy as np
import pytest
import torch

from balseg.acquisition import ScoreSpec, register_score, unregister_score
from balseg.config import parse_config
from balseg.labels import LabelStore
from balseg.loop import ActiveLearningLoop

from .conftest import tiny_config


def _queries(run_dir):
    with LabelStore(run_dir / "labels.sqlite") as store:
        return [(q.image_id, q.y, q.x, q.cycle, q.strategy, q.score) for q in store.queries()]


def test_custom_score_and_oracle_from_python(tmp_path):
    """A plain function of the MC moments as the score, an object answering from its own
    rule as the oracle: the loop uses both, and records the score's name."""
    answered = []

    class EveryPixelIsSky:
        def answer_all(self, store, queries, *, source):
            answered.extend(q.id for q in queries)
            store.add_answers([(q.id, 0) for q in queries], source=source, annotator="me")
            return len(queries)

    def top_class_doubt(moments):  # 1 - largest mean probability, by hand
        return 1.0 - moments.mean().amax(0)

    cfg = parse_config(tiny_config(tmp_path / "synth", **{"budget.cycles": 1}), source="t")
    loop = ActiveLearningLoop.from_config(cfg, tmp_path / "run", progress=False,
                                          score=top_class_doubt, oracle=EveryPixelIsSky())
    assert loop.run().status == "done"
    queries = _queries(loop.run_dir)
    assert {q[4] for q in queries if q[3] == 1} == {"top_class_doubt"}
    assert len(answered) == len(queries) == 8 * (4 + 3)
    with LabelStore(loop.run_dir / "labels.sqlite") as store:
        assert {a.label for a in store.answers()} == {0}
    # the picks are the highest scores among each image's candidates
    picked = [q for q in queries if q[3] == 1]
    assert all(s is not None and 0.0 <= s <= 1.0 for *_, s in picked)


def test_a_registered_toy_score_runs_end_to_end(tmp_path):
    calls = []

    def toy(moments, *, weight=1.0):
        calls.append(weight)
        return weight * moments.var().sum(0)

    spec = register_score(ScoreSpec("toy_variance", toy, ("sumsq",), min_samples=2,
                                    options=("power_beta",)))
    try:
        with pytest.raises(Exception, match="needs mc_samples >= 2"):
            parse_config(tiny_config(tmp_path / "s", **{"acquisition.strategy": "toy_variance",
                                                         "acquisition.mc_samples": 1}),
                         source="t")
        assert spec.kwargs({"power_beta": 2.0}) == {"power_beta": 2.0}
        spec_no_opt = register_score(ScoreSpec("toy_plain", lambda m: m.var().sum(0),
                                               ("sumsq",), min_samples=2))
        cfg = parse_config(tiny_config(tmp_path / "synth", **{
            "acquisition.strategy": "toy_plain", "budget.cycles": 1}), source="t")
        loop = ActiveLearningLoop.from_config(cfg, tmp_path / "run", progress=False)
        loop.run()
        assert {q[4] for q in _queries(loop.run_dir) if q[3] == 1} == {"toy_plain"}
        assert spec_no_opt.needs_model
    finally:
        unregister_score("toy_variance")
        unregister_score("toy_plain")
    with pytest.raises(Exception, match="unknown strategy 'toy_plain'"):
        parse_config(tiny_config(tmp_path / "s", **{"acquisition.strategy": "toy_plain"}),
                     source="t")


def test_disk_streaming_and_in_memory_pools_write_the_same_queries(tmp_path):
    """Issue 15: the streaming path (prepared split on disk, read per batch, selection per
    batch) and the whole-pool-in-memory path write identical label databases."""
    dbs = []
    for in_memory in (False, True):
        raw = tiny_config(tmp_path / "synth", **{
            "data.in_memory": in_memory, "budget.cycles": 2, "acquisition.selection": "pixelpick",
            "acquisition.score_batch_size": 3, "train.warm_start": True})
        loop = ActiveLearningLoop.from_config(parse_config(raw, source="t"),
                                              tmp_path / f"mem{in_memory}", progress=False)
        assert loop.pool.data.on_disk is (not in_memory)
        loop.run()
        con = sqlite3.connect(loop.run_dir / "labels.sqlite")
        dbs.append((con.execute("SELECT image_id, y, x, cycle, strategy, score FROM queries"
                                " ORDER BY id").fetchall(),
                    con.execute("SELECT query_id, label, source FROM answers ORDER BY id")
                    .fetchall(),
                    [r["miou"] for r in loop.read_metrics()]))
        con.close()
    assert dbs[0] == dbs[1]
    assert len(dbs[0][0]) == 8 * (4 + 2 * 3)


def test_the_selection_collaborator_is_called_per_image(tmp_path):
    seen = []

    def leftmost(scores, k, candidates, generator):
        seen.append(tuple(scores.shape))
        ys, xs = torch.nonzero(candidates, as_tuple=True)
        order = np.lexsort((ys.numpy(), xs.numpy()))[:k]
        return torch.stack([ys[order], xs[order]], 1)

    cfg = parse_config(tiny_config(tmp_path / "synth", **{"budget.cycles": 1}), source="t")
    loop = ActiveLearningLoop.from_config(cfg, tmp_path / "run", progress=False,
                                          selection=leftmost)
    loop.run()
    assert seen == [(48, 64)] * 8
    with LabelStore(loop.run_dir / "labels.sqlite") as store:
        assert max(q.x for q in store.queries(cycle=1)) <= 1


def test_first_strategy_ranks_the_first_acquisition_only(tmp_path):
    """balentacq+firstmargin: cycle 0's model ranks with margin (the same picks a margin run
    makes), later models with BalEntAcq; the grammar names the run back."""
    from balseg.strategy import run_label

    runs = {}
    for name, acq in (("hybrid", {"acquisition.first_strategy": "margin"}),
                      ("margin", {"acquisition.strategy": "margin"})):
        cfg = parse_config(tiny_config(tmp_path / "synth", **{
            **acq, "budget.cycles": 2, "acquisition.selection": "pixelpick"}), source="t")
        loop = ActiveLearningLoop.from_config(cfg, tmp_path / name, progress=False)
        loop.run()
        runs[name] = _queries(loop.run_dir)
    cycle = {name: [q for q in qs if q[3] == 1] for name, qs in runs.items()}
    assert cycle["hybrid"] == cycle["margin"]
    assert {q[4] for q in runs["hybrid"] if q[3] == 2} == {"balentacq"}
    assert run_label(cfg.model_dump() | {"acquisition": {
        "strategy": "balentacq", "selection": "pixelpick",
        "first_strategy": "margin"}}) == "balentacq+pixelpick+firstmargin"


@pytest.mark.parametrize("selection", ["classes", "contour"])
def test_pool_selections_run_in_the_loop(tmp_path, selection):
    cfg = parse_config(tiny_config(tmp_path / "synth", **{
        "budget.cycles": 1, "acquisition.selection": selection,
        "acquisition.top_fraction": 0.2}), source="t")
    loop = ActiveLearningLoop.from_config(cfg, tmp_path / "run", progress=False)
    assert loop.run().status == "done"
    picked = [q for q in _queries(loop.run_dir) if q[3] == 1]
    assert len(picked) == 8 * 3
    from balseg.strategy import run_label

    assert run_label(cfg.model_dump(mode="json")) == f"balentacq+{selection}20"
