"""`data.regions`: one click labels a superpixel (SLIC), end to end on tiny data."""

from collections import Counter

import numpy as np
import pytest
import torch

from balseg.data import to_work_coords
from balseg.data.base import IGNORE_INDEX
from balseg.data.diskarray import DiskArray
from balseg.data.regions import best_pixel, dominant_class, region_scores, slic_regions
from balseg.errors import ConfigError
from balseg.labels import LabelStore
from balseg.loop import ActiveLearningLoop, parse_config
from balseg.loop.parts import region_answers
from balseg.train.labels import RegionLabels, SparseLabels

from .conftest import tiny_config
from .test_run import labels_of

REGIONS = {"data.regions": "slic", "data.region_size": 60,
           "acquisition.selection": "pixelpick", "acquisition.top_fraction": 0.3}


def _loop(tmp_path, name, **overrides):
    cfg = parse_config(tiny_config(tmp_path / "synth", **{**REGIONS, **overrides}),
                       source="test")
    return ActiveLearningLoop.from_config(cfg, tmp_path / name, progress=False)


def _run(tmp_path, name, **overrides):
    loop = _loop(tmp_path, name, **overrides)
    assert loop.run().status == "done"
    loop.close()
    return loop


def test_one_query_per_region_and_the_budget_counts_clicks(tmp_path):
    loop = _run(tmp_path, "run")
    data, regions = loop.pool.data, loop.pool.regions
    assert isinstance(regions, DiskArray)  # in the prepared-data cache, read per image
    assert regions.path.parent == data.cache_path
    with LabelStore(loop.run_dir / "labels.sqlite") as store:
        queries = store.queries()
    seen = Counter()
    for q in queries:
        i = data.index_of(q.image_id)
        y, x = to_work_coords(torch.tensor([[q.y, q.x]]), data.valid_size(i),
                              data.orig_sizes[i])[0].tolist()
        seen[(i, int(regions[i][y, x]))] += 1
    assert max(seen.values()) == 1  # never two clicks in one region, over all cycles
    rows = loop.read_metrics()
    assert [r["pixels_per_image"] for r in rows] == [4, 7, 10]  # clicks, not pixels
    for r in rows:  # each click labelled a region: many more training pixels than clicks
        assert r["region_pixels_per_image"] > 5 * r["pixels_per_image"]
        assert 0.0 <= r["region_accuracy"] <= 1.0
        assert len(r["region_per_class_accuracy"]) == 6


def test_answers_fill_exactly_their_region():
    regions = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 1], [3, 3, 2, -1]]], dtype=torch.int32)
    answers = SparseLabels((3, 4), {0: (torch.tensor([[0, 0], [1, 2], [2, 1], [2, 0]]),
                                        torch.tensor([4, 1, 2, 5]))})
    labels = RegionLabels(answers, regions)[0]
    assert labels.tolist() == [[4, 4, 255, 255], [4, 1, 1, 255], [5, 2, 1, 255]]
    # region 3's two answers disagree (2 and 5): only the answered points keep a class
    assert RegionLabels(SparseLabels((3, 4), {}), regions)[0].eq(IGNORE_INDEX).all()


def test_unknown_labels_nothing(tmp_path):
    """A region whose dominant class holds less than oracle.region_purity is answered
    'unknown', and an unknown answer labels no pixel of it."""
    assert dominant_class(np.array([1, 1, 2, 255]), np.ones(4, bool), 3, 0.5) == 1
    assert dominant_class(np.array([1, 1, 2, 255]), np.ones(4, bool), 3, 0.6) is None
    assert dominant_class(np.array([255, 255]), np.ones(2, bool), 3, 0.0) is None
    loop = _loop(tmp_path, "pure", **{"oracle.region_purity": 1.0, "budget.cycles": 0})
    assert loop.run().status == "done"
    pool, store = loop.pool, loop.store
    answers = {a.query_id: a.label for a in store.answers()}
    queries = {q.id: q for q in store.queries()}
    unknown = [queries[k] for k, v in answers.items() if v is None]
    assert unknown, "some synthetic regions straddle two classes"
    labels = loop.sparse_labels(0)
    loop.close()
    for q in unknown:
        i = pool.data.index_of(q.image_id)
        answer_map = region_answers(pool, i, 1.0)
        assert answer_map[q.y, q.x] == IGNORE_INDEX
        y, x = to_work_coords(torch.tensor([[q.y, q.x]]), pool.data.valid_size(i),
                              pool.data.orig_sizes[i])[0].tolist()
        region = pool.regions[i].long() == int(pool.regions[i][y, x])
        assert (labels[i][region] == IGNORE_INDEX).all()


def test_a_killed_region_run_resumes_to_the_same_labels(tmp_path, monkeypatch):
    whole = _run(tmp_path, "whole")
    real = LabelStore.add_queries
    fired = []

    def killed(self, rows, *, cycle, strategy):
        if cycle == 2 and not fired:
            fired.append(1)
            raise KeyboardInterrupt
        return real(self, rows, cycle=cycle, strategy=strategy)

    monkeypatch.setattr(LabelStore, "add_queries", killed)
    loop = _loop(tmp_path, "killed")
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    loop.close()
    resumed = _run(tmp_path, "killed")
    assert labels_of(resumed.run_dir) == labels_of(whole.run_dir)
    assert [r["miou"] for r in resumed.read_metrics()] == [
        r["miou"] for r in whole.read_metrics()]


def test_region_labels_read_one_image_at_a_time(tmp_path):
    import tracemalloc

    from balseg.data.diskarray import NpyWriter

    peaks = []
    for n in (8, 128):
        with NpyWriter(tmp_path / f"r{n}.npy", (n, 32, 32), np.int32) as w:
            for i in range(n):
                w.write(i, np.arange(32 * 32, dtype=np.int32).reshape(32, 32) // 64)
        regions = DiskArray(tmp_path / f"r{n}.npy")
        points = {i: (torch.tensor([[0, 0]]), torch.tensor([1])) for i in range(n)}
        labels = RegionLabels(SparseLabels((32, 32), points), regions)
        tracemalloc.start()
        for i in range(n):
            assert int((labels[i] == 1).sum()) == 64
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0] + 64 * 1024


def test_region_scores_and_their_pixel():
    regions = torch.tensor([[0, 0, 1], [2, 1, 1]])
    scores = torch.tensor([[1.0, 3.0, 0.5], [7.0, 2.0, 0.0]])
    assert region_scores(regions, scores).tolist() == pytest.approx([2.0, 2.5 / 3, 7.0])
    assert region_scores(regions, scores, "max").tolist() == [3.0, 2.0, 7.0]
    assert best_pixel(regions, scores, 1) == (1, 1)
    image = np.zeros((30, 40, 3), np.uint8)
    image[:, 20:] = 255
    maps = slic_regions(image, 100, 10.0)
    assert maps.shape == (30, 40) and maps.min() == 0
    assert len(np.unique(maps)) == maps.max() + 1  # consecutive ids
    assert set(np.unique(maps[:, :20])).isdisjoint(np.unique(maps[:, 20:]))  # follows edges


def test_regions_need_a_region_selection():
    with pytest.raises(ConfigError, match=r"data\.regions selects whole regions"):
        parse_config(tiny_config("x", **{"data.regions": "slic",
                                         "acquisition.selection": "contour"}), source="t")
    with pytest.raises(ConfigError, match=r"data\.regions"):
        parse_config(tiny_config("x", **{"data.regions": "felzenszwalb"}), source="t")
