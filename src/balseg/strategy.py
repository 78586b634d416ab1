"""The strategy grammar, parsed and written here only:
``score[+pixelpick[N]|+classes[N]|+contour[N]][+compat][+first<score>][@n]``.

- ``score``: a registered acquisition score (``balseg.acquisition.registry``) or
  ``supervised`` (train once on every pool pixel: the reference);
- ``+pixelpick``: PixelPick's selection (top ``acquisition.top_fraction`` of the scores,
  5% by default, then uniformly at random); ``+pixelpickN``: from the top N% instead;
  ``+classes`` / ``+classesN``: the same pool, spread over the predicted classes;
  ``+contour`` / ``+contourN``: the same pool, drawn from its edge first (the contour of
  each high-score region); none of these: the k highest scores (top-k);
- ``+compat``: BalEnt/BalEntAcq with the reference code's log-Beta floor;
- ``+first<score>``: ``<score>`` ranks the first acquisition (made by cycle 0's model, whose
  head was trained on the random initial pixels only), ``score`` every later one;
- ``@n`` (bench only): run it with the first n seeds.

The bench turns a spec into config overrides (``Strategy.overrides``); the report names a
run from its config (``Strategy.from_acquisition(...).label``). Both go through this one
class, so a curve's name is always the spec that reproduces it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from balseg.errors import ConfigError

SUPERVISED = "supervised"
SELECTIONS = ("topk", "pixelpick", "classes", "contour")
"""Selection rules (``balseg.acquisition.selection``); the config and the grammar use these."""
DEFAULT_POOL_PERCENT = 5
DEFAULT_STRATEGIES = ("random", "entropy", "margin+pixelpick", "bald", "balentacq",
                      "balentacq+pixelpick", "balentacq+pixelpick10",
                      "balentacq+pixelpick+compat@1", "supervised")
"""What ``balseg bench`` compares when neither ``--strategy`` nor the config's
``bench.strategies`` says: every baseline and the BalEntAcq forms of the seed paper."""
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Strategy:
    score: str
    selection: str = "topk"  # one of SELECTIONS
    # None: the config's top_fraction (5% by default); a config may hold a fraction such as
    # 7.5, which a spec cannot (specs take whole percents)
    pool_percent: float | None = None
    compat: bool = False
    seeds: int | None = None  # @n: the first n seeds only
    first: str | None = None  # +first<score>: the score of the first acquisition

    def __post_init__(self) -> None:
        if not _NAME.match(self.score):
            raise ConfigError(f"{self.score!r}: a score name is lower-case letters, digits"
                              " and '_'")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"selection {self.selection!r}: one of {', '.join(SELECTIONS)}")
        if self.pool_percent is not None:
            if self.selection == "topk":
                raise ConfigError("a pool percentage needs +pixelpick or +classes")
            if isinstance(self.pool_percent, bool) or not 0 < self.pool_percent <= 100:
                raise ConfigError(f"+{self.selection}N takes a whole percent of pixels from 1"
                                  f" to 100, not {self.pool_percent!r}")
        if self.compat and not self.score.startswith("balent"):
            raise ConfigError("+compat applies to balent/balentacq only")
        if self.seeds is not None and self.seeds < 1:
            raise ConfigError("'@' takes a number of seeds >= 1")

    @property
    def is_supervised(self) -> bool:
        return self.score == SUPERVISED

    @property
    def label(self) -> str:
        """The spec without ``@n``: how reports and plots name the curve."""
        out = self.score
        if self.selection != "topk":
            out += f"+{self.selection}"
            if self.pool_percent is not None and self.pool_percent != DEFAULT_POOL_PERCENT:
                out += f"{self.pool_percent:g}"
        if self.compat:
            out += "+compat"
        if self.first is not None:
            out += f"+first{self.first}"
        return out

    def __str__(self) -> str:
        return self.label + (f"@{self.seeds}" if self.seeds is not None else "")

    def without_seed_limit(self) -> Strategy:
        return replace(self, seeds=None)

    def overrides(self) -> dict[str, Any]:
        """The ``acquisition`` keys this spec sets (a bare name means top-k, whatever the
        base config selects, so that a name means the same in every bench)."""
        acq: dict[str, Any] = {"strategy": self.score,
                               "selection": self.selection}
        if self.pool_percent is not None:
            acq["top_fraction"] = self.pool_percent / 100
        if self.compat:
            acq["official_compat"] = True
        if self.first is not None:
            acq["first_strategy"] = self.first
        return acq

    @classmethod
    def from_acquisition(cls, acq: dict[str, Any]) -> Strategy:
        """The strategy a run's ``acquisition`` config section describes.

        ``official_compat`` only changes balent/balentacq; with another score the config
        accepts it but it does nothing, so it is not part of the name."""
        selection = str(acq.get("selection") or "topk")
        pool = None
        if selection != "topk":
            percent = 100 * float(acq.get("top_fraction", DEFAULT_POOL_PERCENT / 100))
            if abs(percent - DEFAULT_POOL_PERCENT) > 1e-9:
                pool = round(percent) if abs(percent - round(percent)) < 1e-9 else percent
        score = str(acq.get("strategy") or "unknown")
        first = acq.get("first_strategy") or None
        return cls(score, selection, pool,
                   bool(acq.get("official_compat")) and score.startswith("balent"),
                   first=first if first != score else None)


def parse_strategy(text: str) -> Strategy:
    """``"balentacq+pixelpick10+compat@1"`` -> ``Strategy``; a bad spec is a ConfigError
    naming it. The score name is checked against the registry by the config, not here."""
    if not isinstance(text, str) or not text:
        raise ConfigError(f"strategy spec must be a non-empty string, got {text!r}")
    body, at, limit = text.partition("@")
    seeds = None
    if at:
        if not limit.isdigit() or int(limit) < 1:
            raise ConfigError(f"strategy {text!r}: '@' takes a number of seeds >= 1, "
                              f"not {limit!r}")
        seeds = int(limit)
    name, *flags = body.split("+")
    selection, pool, compat, first = "topk", None, False, None
    for flag in flags:
        base = next((m for m in SELECTIONS[1:] if flag.startswith(m)), None)
        if base is not None and selection == "topk":
            selection = base
            percent = flag.removeprefix(base)
            if percent:
                if not percent.isdigit() or not 1 <= int(percent) <= 100 or percent[0] == "0":
                    raise ConfigError(f"strategy {text!r}: +{base}N takes a whole percent "
                                      f"of pixels from 1 to 100, not {percent!r}")
                pool = int(percent)
        elif flag == "compat" and not compat:
            compat = True
        elif flag.startswith("first") and first is None and _NAME.match(flag[5:]):
            first = flag[5:]
        else:
            raise ConfigError(f"strategy {text!r}: unknown flag {flag!r} (or repeated; flags:"
                              " pixelpick[N], classes[N] or contour[N], compat, first<score>)")
    if name == SUPERVISED and (flags or seeds is not None):
        raise ConfigError(f"strategy {text!r}: supervised takes no flags")
    try:
        return Strategy(name, selection, pool, compat, seeds, first)
    except ConfigError as err:
        raise ConfigError(f"strategy {text!r}: {err}") from None


CONFIG_KEYS = ("acquisition.strategy", "acquisition.selection", "acquisition.top_fraction",
               "acquisition.official_compat", "acquisition.first_strategy")
"""The config keys a strategy label encodes (the report groups runs by the rest)."""


def run_label(config: dict[str, Any]) -> str:
    """Curve label of a run from its (raw) config."""
    return Strategy.from_acquisition(config.get("acquisition") or {}).label
