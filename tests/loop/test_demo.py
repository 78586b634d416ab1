"""`balseg demo` ends with what it showed (issue 29): a line comparing the two strategies at
the last budget, the report path, the time taken; its report pairs BalEntAcq with random."""

import json
import re

from balseg.experiments import demo

from .conftest import invoke, tiny_config


def test_demo_prints_its_conclusion_and_its_report_pairs_the_strategies(cli, tmp_path,
                                                                        monkeypatch):
    tiny = tiny_config(tmp_path / "synth", **{"budget.cycles": 1})
    tiny.pop("name")
    monkeypatch.setattr(demo, "DEMO_CONFIG", tiny)  # the real one takes two minutes
    result = invoke(cli, "demo", "--run-root", tmp_path / "demo", "--quiet")
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    report = tmp_path / "demo" / "report" / "index.html"
    m = re.fullmatch(r"BalEntAcq (\d+\.\d) vs random (\d+\.\d) mIoU \(val\) at 7 px/img on the"
                     r" built-in synthetic data \(1 cycle, seed 3\); report: (.+) \(took \d+ s\)",
                     last)
    assert m, last
    assert m[3] == str(report)
    for strategy, shown in (("balentacq", m[1]), ("random", m[2])):
        lines = (tmp_path / "demo" / strategy / "metrics.jsonl").read_text().splitlines()
        last_row = json.loads(lines[-1])
        assert last_row["cycle"] == 1 and f"{100 * last_row['miou']:.1f}" == shown
    html = report.read_text()
    assert 'id="paired"' in html and "against random, split: val" in html
    assert "No paired table" not in html
