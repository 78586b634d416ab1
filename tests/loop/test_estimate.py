"""The time estimate printed before training, and the cycles counted as the config counts
them (issue 29: 75 minutes for a first model without a word, and "0/5 cycles" for
`cycles: 4`)."""

import json
import re

import pytest
import torch

from balseg.loop import ActiveLearningLoop, parse_config
from balseg.train import estimate as est
from balseg.train.estimate import TrainEstimate

from .conftest import tiny_config


def test_the_estimate_is_printed_before_training_and_within_a_factor_of_two(tmp_path,
                                                                            capsys):
    raw = tiny_config(tmp_path / "synth", **{"budget.cycles": 2, "train.steps": 24,
                                              "train.warm_start": True, "train.warm_steps": 16,
                                              "threads": 1})
    loop = ActiveLearningLoop.from_config(parse_config(raw, source="t"), tmp_path / "run",
                                          progress=True)
    try:
        assert loop.run().status == "done"
    finally:
        loop.close()
    err = capsys.readouterr().err
    found = re.findall(r"cycle (\d): (\d+) steps, about (\d+(?:\.\d)?) (s|min|h) on this"
                       r" machine \(cpu, 1 thread\)", err)
    assert [(c, n) for c, n, _, _ in found] == [("0", "24"), ("1", "16"), ("2", "16")], err
    rows = [json.loads(x)
            for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for (cycle, _, value, unit), row in zip(found, rows, strict=True):
        said = float(value) * {"s": 1, "min": 60, "h": 3600}[unit]
        took = row["train_time_s"]
        assert int(cycle) == row["cycle"]
        # within a factor of 2 of the training's own time, give or take the rounding of
        # "about N s" (whole seconds, at least 1) and "about N min"
        slack = 0.5 if unit == "s" else 30
        assert took / 2 - slack <= said <= max(2 * took, took + 1) + slack, (said, took)
    # the cycles bar counts budget.cycles: "cycle 2 of 2" and "2/2", never "/3"
    assert "tiny: cycle 2 of 2" in err and "2/2" in err and "/3 " not in err


@pytest.fixture
def clock(monkeypatch):
    """perf_counter as the test sets it."""
    now = [0.0]
    monkeypatch.setattr(est.time, "perf_counter", lambda: now[0])
    return now


def drive(estimate: TrainEstimate, clock: list[float], seconds_per_step: float) -> None:
    for step in range(1, 2 + est.MEASURED):
        clock[0] += seconds_per_step
        estimate(step, torch.nn.Identity())


def test_a_long_cpu_estimate_says_which_set_makes_it_shorter(clock):
    lines: list[str] = []
    first = TrainEstimate(0, 300, "cpu", run_dir="runs/my-images", write=lines.append)
    drive(first, clock, 15.0)  # the newcomer's 15 s per step
    assert first.seconds == pytest.approx(300 * 15.0)
    threads = torch.get_num_threads()
    busy = ("; if other programs keep this machine's cores busy, --set threads=1 can be"
            f" several times faster than {threads}") if threads > 1 else ""
    assert lines == [
        f"cycle 0: 300 steps, about 75 min on this machine (cpu, {threads} thread"
        f"{'s' if threads != 1 else ''}); to make it about 8 min: Ctrl-C, then balseg run"
        f" runs/my-images --set train.steps=30 (fewer steps, a less trained model){busy}"]
    later = TrainEstimate(2, 80, "cpu", run_dir="runs/my-images", key="train.warm_steps",
                          write=lines.append)
    drive(later, clock, 15.0)
    assert lines[-1].endswith("; this run's training is fixed since its first cycle: a new"
                              " run with --set train.warm_steps=30 takes about 8 min here"
                              + busy)
    short = TrainEstimate(0, 300, "cpu", run_dir="r", write=lines.append)
    drive(short, clock, 1.0)  # 5 minutes: no hint
    assert lines[-1].endswith("steps, about 5 min on this machine (cpu,"
                              f" {threads} thread{'s' if threads != 1 else ''})")


def test_a_short_training_says_nothing_and_calls_the_next_callback(clock):
    lines, seen = [], []
    tiny = TrainEstimate(0, 4, "cpu", run_dir="r", write=lines.append,
                         then=lambda step, m: seen.append(step))
    drive(tiny, clock, 1.0)
    assert lines == [] and seen == [1, 2, 3, 4]
