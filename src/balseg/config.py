"""Run configuration: one YAML file, validated by pydantic before anything runs.

Unknown keys, wrong types and impossible values are refused with the key's dotted path,
so a typo in a config never silently falls back to a default.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from balseg.acquisition.registry import get_spec, score_names
from balseg.errors import ConfigError
from balseg.strategy import SUPERVISED


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    dataset: str = "synthetic"
    root: str | None = None
    pool_split: str = "train"
    eval_splits: list[str] = Field(default_factory=lambda: ["val"])
    options: dict[str, Any] = Field(default_factory=dict)
    size: tuple[int, int] | None = None
    resize: Literal["stretch", "fit"] = "stretch"
    pad_multiple: int = Field(16, ge=1)
    cache_dir: str | None = None
    in_memory: bool = False
    class_names: list[str] | None = None  # optional check against the dataset's classes

    @field_validator("size")
    @classmethod
    def _positive(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] <= 0 or v[1] <= 0):
            raise ValueError(f"size must be two positive integers (H, W), got {list(v)}")
        return v


class ModelConfig(_Strict):
    arch: str = "DeepLabV3Plus"
    encoder: str = "tu-tf_efficientnet_lite0"
    encoder_weights: str | None = "offline-lite0"
    dropout_p: float = Field(0.3, ge=0.0, lt=1.0)
    mc_mode: Literal["last_layer", "full"] = "last_layer"
    dropout_kind: Literal["channel", "element"] = "channel"


class AugmentConfig(_Strict):
    hflip: bool = True
    scale: tuple[float, float] | None = (0.75, 1.25)
    color_jitter: float = Field(0.2, ge=0.0, le=1.0)


class TrainConfig(_Strict):
    steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(2e-4, ge=0)
    poly_power: float = Field(0.9, ge=0)
    warm_start: bool = False
    warm_steps: int | None = Field(None, ge=1)  # steps of a warm-started cycle (None: steps)
    # the fully supervised reference sees every pixel and needs a longer schedule than one
    # active-learning cycle; None: steps
    supervised_steps: int | None = Field(None, ge=1)
    freeze_bn: bool = False  # BatchNorm on running stats: exact multi-process CPU training
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    eval_batch_size: int = Field(8, ge=1)


class AcquisitionConfig(_Strict):
    strategy: str = "balentacq"
    mc_samples: int = Field(20, ge=1)
    official_compat: bool = False
    selection: Literal["topk", "pixelpick", "classes"] = "topk"
    top_fraction: float = Field(0.05, gt=0.0, le=1.0)
    min_spacing: int = Field(0, ge=0)
    power: bool = False
    power_beta: float = Field(1.0, gt=0)
    score_batch_size: int = Field(8, ge=1)
    score_resolution: Literal["label", "classifier"] = "label"
    # the score of the first acquisitions (those made by the models of cycles
    # 0..first_cycles-1), when the head's variance cannot be trusted yet; None: strategy
    first_strategy: str | None = None
    first_cycles: int = Field(1, ge=1)

    @field_validator("strategy")
    @classmethod
    def _known(cls, v: str) -> str:
        valid = (*score_names(), SUPERVISED)
        if v not in valid:
            raise ValueError(f"unknown strategy {v!r}; one of {list(valid)}")
        return v

    @field_validator("first_strategy")
    @classmethod
    def _known_first(cls, v: str | None) -> str | None:
        if v is not None and v not in score_names():
            raise ValueError(f"unknown score {v!r}; one of {list(score_names())}")
        return v

    @model_validator(mode="after")
    def _enough_samples(self) -> AcquisitionConfig:
        if self.strategy == SUPERVISED:
            return self
        for name in filter(None, (self.strategy, self.first_strategy)):
            need = get_spec(name).min_samples
            if self.mc_samples < need:
                raise ValueError(f"strategy {name!r} needs mc_samples >= {need}")
        return self

    def score_at(self, cycle: int) -> str:
        """The score that the model of ``cycle`` ranks the pool with."""
        if self.first_strategy is not None and cycle < self.first_cycles:
            return self.first_strategy
        return self.strategy


class BudgetConfig(_Strict):
    initial_pixels_per_image: int = Field(10, ge=1)
    pixels_per_cycle: int = Field(10, ge=1)
    cycles: int = Field(4, ge=0)


class OracleConfig(_Strict):
    kind: Literal["simulated", "person"] = "simulated"
    error_rate: float = Field(0.0, ge=0.0, lt=1.0)


class RunConfig(_Strict):
    name: str = "run"
    seed: int = 0
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    overlay_images: int = Field(4, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    acquisition: AcquisitionConfig = Field(default_factory=AcquisitionConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    oracle: OracleConfig = Field(default_factory=OracleConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (value parsed as YAML) to a raw config mapping."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(value)
    return out


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the config section that ``loc`` (an error location) points into."""
    model: Any = RunConfig
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _error_line(e: dict[str, Any], overridden: set[str]) -> str:
    loc = tuple(e["loc"])
    key = ".".join(str(p) for p in loc) or "<root>"
    line = f"  {key}: {e['msg']}"
    if e["type"] != "missing" and "input" in e and e["type"] != "extra_forbidden":
        line += f" (got {e['input']!r})"
    if e["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1, cutoff=0.6)
        if close:
            line += f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?"
    if any(key == k or key.startswith(k + ".") for k in overridden):
        line += " (from --set)"
    return line


def parse_config(raw: Any, *, source: str, base_dir: Path | None = None,
                 overridden: set[str] | None = None) -> RunConfig:
    """Validate a raw mapping; relative data roots are resolved against ``base_dir``.

    ``overridden``: dotted keys that came from ``--set`` (errors name them as such).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a config must be a YAML mapping, got {type(raw).__name__}")
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        lines = [_error_line(e, overridden or set()) for e in err.errors()]
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(lines)) from None
    root = cfg.data.root
    if root is not None and base_dir is not None and not Path(root).expanduser().is_absolute():
        resolved = str((base_dir / root).resolve())
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": resolved})})
    return cfg


def diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    """Dotted keys whose values differ between two config dumps."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}


RUNTIME_KEYS = frozenset({"threads", "device"})
"""Keys that change how a run runs, not what it computes: a resumed run may change them."""
EXTENDABLE_KEYS = frozenset({"budget.cycles"})
"""Keys a finished (or running) run may increase: ``balseg run RUN_DIR --set budget.cycles=6``."""


def check_resumable(old: RunConfig, new: RunConfig, run_dir: Path) -> set[str]:
    """The keys in which ``new`` differs from a run's snapshot ``old``, when the run may
    continue with ``new`` (runtime keys, a larger budget); otherwise a ConfigError."""
    diff = diff_keys(old.model_dump(mode="json"), new.model_dump(mode="json"))
    bad = sorted(k for k in diff if k not in RUNTIME_KEYS | EXTENDABLE_KEYS)
    if bad:
        raise ConfigError(
            f"{run_dir} already holds a run with another config (differs in {', '.join(bad)});"
            f" resume it with `balseg run {run_dir}` (`--set budget.cycles=N` extends it) or"
            " choose a new run directory")
    if new.budget.cycles < old.budget.cycles:
        raise ConfigError(f"{run_dir}: budget.cycles can grow ({old.budget.cycles} so far),"
                          f" not shrink to {new.budget.cycles}")
    return diff


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a YAML config; data roots resolve relative to the CWD."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    raw = apply_overrides(raw or {}, overrides or [])
    keys = {item.partition("=")[0] for item in overrides or []}
    return parse_config(raw, source=str(path), base_dir=Path.cwd(), overridden=keys)
