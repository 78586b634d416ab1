"""The score registry: every acquisition score and what it needs, held as data.

One ``ScoreSpec`` per score feeds config validation (name, minimum MC samples), pool
scoring (the statistics to accumulate, whether a model pass is needed), the keyword
arguments the loop passes from the config (``options``) and the report's colours. Adding a
score is one ``register_score`` call; nothing else lists the scores.

Light on purpose (no torch import): the config and the report read it. Built-in functions
are named by import path and imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from balseg.errors import ConfigError

STATS = ("sum", "sumsq", "entropy", "votes")
"""What ``MCMoments`` can accumulate (see ``balseg.acquisition.moments``)."""


@dataclass(frozen=True)
class ScoreSpec:
    """One acquisition score.

    Args:
        name: the strategy name in configs (lower-case, digits, '_').
        function: ``fn(moments_or_probs, **options) -> scores [*S]`` (higher = more worth
            labeling), or ``"module:attr"`` naming it.
        stats: the ``MCMoments`` statistics it reads; empty = it needs no model pass (the
            scorer then hands it an empty accumulator and a seeded ``generator``).
        min_samples: the fewest MC samples it is defined for (2 for variance-based scores).
        options: config keys of ``acquisition`` passed to it as keyword arguments.
        colour: its colour in every plot (a matplotlib colour); None = a spare one.
        summary: one line for ``balseg --help`` and the docs.
    """

    name: str
    function: Callable[..., Any] | str
    stats: tuple[str, ...]
    min_samples: int = 1
    options: tuple[str, ...] = ()
    colour: str | None = None
    summary: str = ""
    _resolved: list[Callable[..., Any]] = field(default_factory=list, repr=False,
                                                compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.stats) - set(STATS)
        if unknown:
            raise ValueError(f"score {self.name!r}: unknown stats {sorted(unknown)}; "
                             f"valid: {STATS}")
        if self.min_samples < 1:
            raise ValueError(f"score {self.name!r}: min_samples must be >= 1")

    @property
    def needs_model(self) -> bool:
        return bool(self.stats)

    @property
    def fn(self) -> Callable[..., Any]:
        if not self._resolved:
            if callable(self.function):
                self._resolved.append(self.function)
            else:
                module, _, attr = self.function.partition(":")
                self._resolved.append(getattr(importlib.import_module(module), attr))
        return self._resolved[0]

    def kwargs(self, acquisition: Mapping[str, Any] | Any) -> dict[str, Any]:
        """The keyword arguments of this score from an ``acquisition`` config section."""
        get = acquisition.get if isinstance(acquisition, Mapping) else (
            lambda k, d=None: getattr(acquisition, k, d))
        return {k: get(k) for k in self.options if get(k) is not None}


_S = "balseg.acquisition.scores:"
_SCORES: dict[str, ScoreSpec] = {}


def register_score(spec: ScoreSpec, *, replace: bool = False) -> ScoreSpec:
    """Add a score (e.g. your own, from Python); a second one of the same name needs
    ``replace=True``."""
    if spec.name in _SCORES and not replace:
        raise ValueError(f"a score named {spec.name!r} is already registered")
    if spec.name == "supervised":
        raise ValueError("'supervised' is the name of the fully supervised reference")
    _SCORES[spec.name] = spec
    return spec


def unregister_score(name: str) -> None:
    _SCORES.pop(name, None)


for _spec in (
    ScoreSpec("balentacq", _S + "balentacq", ("sumsq",), 2, ("official_compat",), "tab:red",
              "Balanced Entropy acquisition, 1/BalEnt (Woo, ICLR 2023)"),
    ScoreSpec("balent", _S + "balent", ("sumsq",), 2, ("official_compat",), "tab:orange",
              "Balanced Entropy BalEnt = MJEnt / (H + ln 2)"),
    ScoreSpec("entropy", _S + "entropy", ("sum",), 1, (), "tab:blue",
              "predictive entropy of the mean"),
    ScoreSpec("bald", _S + "bald", ("sum", "entropy"), 2, (), "tab:green",
              "BALD mutual information"),
    ScoreSpec("margin", _S + "margin", ("sum",), 1, (), "tab:purple",
              "minus the gap between the two largest mean probabilities (PixelPick)"),
    ScoreSpec("least_confidence", _S + "least_confidence", ("sum",), 1, (), "tab:brown",
              "1 - the largest mean probability"),
    ScoreSpec("mean_std", _S + "mean_std", ("sumsq",), 2, (), "tab:olive",
              "mean over classes of the standard deviation over samples"),
    ScoreSpec("variation_ratio", _S + "variation_ratio", ("votes",), 1, (), "tab:cyan",
              "1 - share of samples voting for the modal class"),
    ScoreSpec("random", _S + "random", (), 1, (), "tab:gray",
              "uniform random scores: the random-sampling baseline"),
):
    register_score(_spec)
del _spec


def score_names() -> tuple[str, ...]:
    return tuple(_SCORES)


def get_spec(name: str) -> ScoreSpec:
    """The registered score ``name``; an unknown one is a ConfigError listing the valid ones."""
    try:
        return _SCORES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown acquisition score {name!r}; valid: "
                          f"{', '.join(_SCORES)}") from None


def colour_of(name: str) -> str | None:
    spec = _SCORES.get(name)
    if spec is not None:
        return spec.colour
    return "black" if name == "supervised" else None
