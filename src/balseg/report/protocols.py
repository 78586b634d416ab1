"""Which runs share a curve: runs are pooled over seeds only when they ran the same protocol.

A run's *protocol* is everything in its config and ``dataset.json`` that changes what its
numbers mean, flattened to dotted keys: the dataset and its class list, ``data.*`` (pool
split, size, options...), the budget per image (``budget.initial_pixels_per_image``,
``budget.pixels_per_cycle``), ``model.*``, ``train.*``, the rest of ``acquisition.*`` and
``oracle.*``. What only names, places or speeds up a run is not part of it (``IGNORED``);
nor is the strategy (``acquisition.strategy/selection/top_fraction/official_compat``),
which is the curve's label. Keys missing from an older config snapshot take the current
defaults, so a key added later with its old behaviour as default splits nothing.

Runs with the same strategy but different protocols become separate curves, each label
followed by what tells it apart, e.g. ``balentacq [camvid]`` and ``balentacq [synthetic]``
or ``margin+pixelpick [dropout_kind=element]``. A supervised run does not use the budget,
acquisition or oracle keys and is grouped without them; its ``train.steps`` is
``train.supervised_steps`` where that is set.

Two looser matches connect curves of different protocols without pooling them:

- the supervised reference of a curve is a supervised curve on the same dataset, class
  list and ``data.*`` keys, one with the same ``model.*`` keys if there is one; of several,
  the best on that split (so that '% of supervised' never flatters);
- a curve whose protocol has no baseline run is paired with the baseline curve of the same
  dataset, class list, ``data.*`` and budget keys whose protocol differs in the fewest keys
  (a tie pairs nothing); the paired table says which keys differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from balseg.report.runs import RunResults
from balseg.strategy import CONFIG_KEYS as STRATEGY_KEYS

DATASET = "dataset"
CLASSES = "classes"
IGNORED = frozenset({
    "name", "seed", "device", "threads", "overlay_images",
    "data.dataset",  # the dataset's name is DATASET, from dataset.json where there is one
    "data.root", "data.cache_dir", "data.eval_splits", "data.class_names",
    "train.eval_batch_size", "train.supervised_steps",
    *STRATEGY_KEYS,  # what the curve's label already says
    "acquisition.score_batch_size", "data.in_memory",
    "budget.cycles",  # a longer run of the same protocol extends the same curve
})
# what a supervised run (one training on every pool pixel) does not use
SUPERVISED_IGNORED = ("acquisition.", "budget.", "oracle.", "train.warm_start",
                      "train.warm_steps")
BUDGET_KEYS = ("budget.initial_pixels_per_image", "budget.pixels_per_cycle")
_ABSENT = "<absent>"


@lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    from balseg.config import RunConfig

    return _flatten(RunConfig().model_dump(mode="json"))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _normal(value: Any) -> Any:
    """A hashable value in which 1 == 1.0 and a YAML list equals a tuple."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(_normal(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def protocol_of(run: RunResults) -> dict[str, Any]:
    """The run's protocol as dotted key -> normalised value (see the module docstring)."""
    flat = {**_defaults(), **_flatten(run.config)}
    if run.is_supervised and flat.get("train.supervised_steps"):
        flat["train.steps"] = flat["train.supervised_steps"]
    names = run.dataset.class_names
    out: dict[str, Any] = {
        DATASET: run.dataset.dataset or flat.get("data.dataset"),
        CLASSES: tuple(str(c) for c in names) if names else None,
    }
    for key, value in flat.items():
        if key in IGNORED or (run.is_supervised and key.startswith(SUPERVISED_IGNORED)):
            continue
        out[key] = _normal(value)
    return out


def _task(protocol: dict[str, Any]) -> tuple[Any, ...]:
    """Dataset, class list and data keys: what a supervised reference must share."""
    return tuple(sorted((k, v) for k, v in protocol.items()
                        if k in (DATASET, CLASSES) or k.startswith("data.")))


def _pairing(protocol: dict[str, Any]) -> tuple[Any, ...]:
    """The task and the budget per image: what makes seed s at cycle c comparable."""
    return (*_task(protocol), *((k, protocol.get(k)) for k in BUDGET_KEYS))


def _model(protocol: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, v) for k, v in protocol.items() if k.startswith("model.")))


def differing_keys(protocols: Sequence[dict[str, Any]]) -> list[str]:
    """Keys whose value is not the same in every protocol, in first-seen order."""
    keys = list(dict.fromkeys(k for p in protocols for k in p))
    return [k for k in keys if len({repr(p.get(k, _ABSENT)) for p in protocols}) > 1]


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """``model.dropout_kind`` -> ``dropout_kind`` where the last part is unambiguous."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: s if last.count(s) == 1 else k for k, s in zip(keys, last, strict=True)}


def _fmt_value(key: str, value: Any) -> str:
    if value == _ABSENT:
        return "unset"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        sep = "x" if key == "data.size" else ","
        return sep.join(_fmt_value(key, v) for v in value)
    return str(value)


def describe(protocol: dict[str, Any], keys: Sequence[str],
             class_counts_differ: bool) -> str:
    """What tells this protocol apart: ``camvid, dropout_kind=element``."""
    shorts = _short_names([k for k in keys if k not in (DATASET, CLASSES)])
    parts = []
    for key in keys:
        value = protocol.get(key, _ABSENT)
        if key == DATASET:
            parts.append(_fmt_value(key, value))
        elif key == CLASSES:
            if value is None or value == _ABSENT:
                parts.append("classes unknown")
            elif class_counts_differ:
                parts.append(f"{len(value)} classes")
            else:
                names = "/".join(value)
                parts.append("classes " + (names if len(names) <= 40 else names[:39] + "…"))
        else:
            parts.append(f"{shorts[key]}={_fmt_value(key, value)}")
    return ", ".join(parts)


@dataclass
class Cohort:
    """Runs of one protocol; supervised runs form cohorts of their own."""

    protocol: dict[str, Any]
    supervised: bool
    runs: list[RunResults] = field(default_factory=list)
    suffix: str = ""  # what sets it apart from the others of its kind; "" for the main one

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(r.label for r in self.runs))

    @property
    def class_names(self) -> list[str]:
        return next((r.class_names for r in self.runs if r.class_names), [])


@dataclass
class Grouping:
    """The report's curves: cohorts of runs, and which curve belongs to which cohort."""

    cohorts: list[Cohort]
    differing: list[str]  # keys that mark the active-learning curves apart

    def cohort_of(self, label: str) -> Cohort:
        return next(c for c in self.cohorts if label in c.labels)

    def class_names(self, label: str) -> list[str]:
        return self.cohort_of(label).class_names

    @property
    def learning(self) -> list[Cohort]:
        return [c for c in self.cohorts if not c.supervised]

    @property
    def supervised(self) -> list[Cohort]:
        return [c for c in self.cohorts if c.supervised]

    def reference_candidates(self, label: str) -> list[Cohort]:
        """Supervised cohorts that may be the reference of this curve (may be empty)."""
        own = self.cohort_of(label)
        same_task = [c for c in self.supervised if _task(c.protocol) == _task(own.protocol)]
        same_model = [c for c in same_task if _model(c.protocol) == _model(own.protocol)]
        return same_model or same_task

    def baseline_for(self, label: str, baselines: Sequence[str]) -> tuple[str | None, str]:
        """The baseline curve ``label`` is paired with, and what differs between their
        protocols ('' within one cohort) or, when there is none, why."""
        own = self.cohort_of(label)
        if not baselines:
            return None, "no baseline runs"
        mine = [b for b in baselines if b in own.labels]
        if mine:
            return mine[0], ""
        candidates = [
            (b, differing_keys([own.protocol, self.cohort_of(b).protocol])) for b in baselines
            if _pairing(self.cohort_of(b).protocol) == _pairing(own.protocol)
        ]
        if not candidates:
            return None, ("no baseline run with the same dataset, classes, data and budget"
                          " settings")
        fewest = min(len(keys) for _, keys in candidates)
        best = [(b, keys) for b, keys in candidates if len(keys) == fewest]
        if len(best) > 1:
            return None, ("several baseline curves are equally close ("
                          + ", ".join(b for b, _ in best) + "); name one with --baseline")
        baseline, keys = best[0]
        base_protocol = self.cohort_of(baseline).protocol
        shorts = _short_names(keys)
        diff = ", ".join(
            f"{shorts[k]} {_fmt_value(k, own.protocol.get(k, _ABSENT))}"
            f" vs {_fmt_value(k, base_protocol.get(k, _ABSENT))}" for k in keys)
        return baseline, diff


def _identity(protocol: dict[str, Any]) -> str:
    return repr((protocol.get(DATASET), protocol.get(CLASSES)))


def _kind_suffixes(cohorts: Sequence[Cohort], identity: Sequence[str],
                   class_counts_differ: bool) -> list[str]:
    """Suffix every cohort of one kind (learning or supervised) by its dataset and class
    list where those differ, and by the keys in which it deviates from the main protocol
    of its dataset (the one with the most runs, which carries no further mark)."""
    by_identity: dict[str, list[Cohort]] = {}
    for cohort in cohorts:
        by_identity.setdefault(_identity(cohort.protocol), []).append(cohort)
    differing: list[str] = []
    for members in by_identity.values():
        main = max(members, key=lambda c: len(c.runs))  # the first of equals
        for cohort in members:
            keys = [k for k in differing_keys([main.protocol, cohort.protocol])
                    if k not in (DATASET, CLASSES)]
            differing += keys
            cohort.suffix = describe(cohort.protocol, [*identity, *keys], class_counts_differ)
    # a shortened description (a long class list) could name two protocols alike
    seen: dict[str, int] = {}
    for cohort in cohorts:
        seen[cohort.suffix] = seen.get(cohort.suffix, 0) + 1
        if seen[cohort.suffix] > 1:
            cohort.suffix += f" #{seen[cohort.suffix]}"
    return list(dict.fromkeys(differing))


def group_runs(runs: Iterable[RunResults]) -> Grouping:
    """Put runs into cohorts and give every run its curve label (``run.label``)."""
    cohorts: dict[tuple[bool, str], Cohort] = {}
    for run in runs:
        protocol = protocol_of(run)
        key = (run.is_supervised, repr(sorted(protocol.items(), key=lambda kv: kv[0])))
        cohorts.setdefault(key, Cohort(protocol, run.is_supervised)).runs.append(run)
    all_cohorts = list(cohorts.values())
    identity = [k for k in (DATASET, CLASSES)
                if len({repr(c.protocol.get(k)) for c in all_cohorts}) > 1]
    class_counts_differ = len({len(c.protocol.get(CLASSES) or ()) for c in all_cohorts}) > 1
    differing: list[str] = []
    for supervised in (False, True):
        kind = [c for c in all_cohorts if c.supervised == supervised]
        found = _kind_suffixes(kind, identity, class_counts_differ)
        differing = differing if supervised else found
    for cohort in all_cohorts:
        for run in cohort.runs:
            run.label = run.strategy_label + (f" [{cohort.suffix}]" if cohort.suffix else "")
    return Grouping(all_cohorts, identity + differing)


def protocol_lines(grouping: Grouping) -> list[str]:
    """One line per protocol when the runs hold several (else none): its mark, its settings
    of every key in which the protocols differ, its curves and how many runs."""
    lines = []
    for kind in (grouping.learning, grouping.supervised):
        if len(kind) < 2 and not any(c.suffix for c in kind):
            continue
        keys = [k for k in differing_keys([c.protocol for c in kind])
                if k not in (DATASET, CLASSES)]
        identity = [k for k in (DATASET, CLASSES) if k in grouping.differing]
        counts = len({len(c.protocol.get(CLASSES) or ()) for c in grouping.cohorts}) > 1
        for cohort in kind:
            mark = f"[{cohort.suffix}]" if cohort.suffix else "unmarked"
            settings = describe(cohort.protocol, [*identity, *keys], counts)
            strategies = ", ".join(dict.fromkeys(r.strategy_label for r in cohort.runs))
            n = len(cohort.runs)
            lines.append(f"{mark}: {settings}; {strategies} ({n} run{'s' if n != 1 else ''})")
    return lines


def strategy_of(label: str) -> str:
    """The strategy spec of a curve label: ``balentacq+pixelpick [camvid]`` -> the spec."""
    return label.split(" [", 1)[0]


def score_of(label: str) -> str:
    """The score name of a curve label (for its colour)."""
    return strategy_of(label).split("+", 1)[0]

