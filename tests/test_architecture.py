"""Contracts that several modules share have one home each (issue 14), checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balseg import rundir
from balseg.errors import ConfigError
from balseg.seeding import Stream, TrainStream, rng_for, seed_for
from balseg.strategy import SELECTIONS, Strategy, parse_strategy

SRC = Path(__file__).resolve().parents[1] / "src" / "balseg"


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """balseg modules ``name`` imports anywhere (module level, functions, TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[: len(up) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):
                found.add(t)
    return found


def test_no_import_circle_in_balseg():
    mods = _modules()
    graph = {n: _imports(n, p, set(mods)) for n, p in mods.items()}
    cycles = []

    def visit(node, stack, seen):
        for nxt in sorted(graph[node]):
            if nxt in stack:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, [*stack, nxt], seen)

    for start in sorted(graph):
        visit(start, [start], {start})
    # a package's __init__ re-exporting its own submodules is not a circle between rooms
    real = [c for c in cycles if not all(m.startswith(c[0].split(".")[0] + ".")
                                         and len({x.rsplit(".", 1)[0] for x in c}) == 1
                                         for m in c)]
    assert not real, "import circles: " + "; ".join(" -> ".join(c) for c in real[:5])


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef,
                                    ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr)
                  and isinstance(n.body[0].value, ast.Constant)}
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docstrings}


def test_run_directory_names_are_spelled_in_rundir_only():
    names = {rundir.CONFIG, rundir.DATASET, rundir.LABELS, rundir.METRICS, rundir.METRICS_CSV,
             rundir.PROGRESS, rundir.CONTINUE_LOG, rundir.CHECKPOINTS, rundir.OVERLAYS,
             rundir.BACKUPS}
    offenders = {}
    for name, path in _modules().items():
        if name == "balseg.rundir":
            continue
        hits = names & _string_constants(path)
        if hits:
            offenders[name] = sorted(hits)
    assert not offenders, f"run-directory names outside balseg.rundir: {offenders}"


def test_architecture_doc_shows_the_run_directory_table_of_rundir():
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    assert rundir.layout_markdown() in doc, "regenerate it: python -m balseg.rundir"


@st.composite
def strategies(draw):
    score = draw(st.sampled_from(["balentacq", "balent", "entropy", "margin", "bald",
                                  "my_score2"]))
    selection = draw(st.sampled_from(SELECTIONS))
    pool = draw(st.one_of(st.none(), st.integers(1, 100))) if selection != "topk" else None
    compat = draw(st.booleans()) if score.startswith("balent") else False
    seeds = draw(st.one_of(st.none(), st.integers(1, 20)))
    first = draw(st.one_of(st.none(), st.sampled_from(["margin", "entropy", "random"])))
    return Strategy(score, selection, pool, compat, seeds, None if first == score else first)


@settings(suppress_health_check=[HealthCheck.too_slow])  # a busy machine is not a failure
@given(strategies())
def test_strategy_grammar_round_trips(s: Strategy):
    text = str(s)
    back = parse_strategy(text)
    canonical = s if s.pool_percent != 5 else Strategy(s.score, s.selection, None, s.compat,
                                                       s.seeds, s.first)
    assert back == canonical and str(back) == text
    # the bench's overrides name the run back to the same label in the report
    assert Strategy.from_acquisition(back.overrides()).label == back.label


@pytest.mark.parametrize("bad", ["", "+pixelpick", "margin+pixelpick0", "margin+fast",
                                 "entropy+compat", "margin@0", "margin@x",
                                 "margin+pixelpick+pixelpick", "supervised+pixelpick"])
def test_bad_strategy_specs_are_config_errors(bad):
    with pytest.raises(ConfigError, match=r"strateg|score name"):
        parse_strategy(bad)


def test_seed_streams_are_distinct_and_checked():
    seed = 7
    draws = {seed_for(seed, Stream.TRAIN, c) for c in range(50)}
    draws |= {seed_for(seed, Stream.MC_DROPOUT, c, i) for c in range(5) for i in range(50)}
    draws |= {seed_for(seed, Stream.INITIAL_PIXELS, i) for i in range(50)}
    draws |= {seed_for(seed, Stream.SELECT, c, i) for c in range(5) for i in range(50)}
    assert len(draws) == 50 + 250 + 50 + 250  # no two streams share a number
    assert seed_for(seed, TrainStream.AUGMENT, 3, 1) == seed_for(seed, TrainStream.AUGMENT, 3, 1)
    with pytest.raises(TypeError, match="takes 2 key part"):
        seed_for(seed, Stream.MC_DROPOUT, 1)
    assert rng_for(1, Stream.INITIAL_PIXELS, 0).random() == rng_for(
        1, Stream.INITIAL_PIXELS, 0).random()


def test_light_modules_do_not_import_torch():
    code = ("import sys, balseg.rundir, balseg.strategy, balseg.config, balseg.errors,"
            " balseg.seeding, balseg.acquisition, balseg.cli; balseg.cli._register_all();"
            " print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False", out.stderr
