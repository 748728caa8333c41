"""Typed run configuration. YAML recipes and CLI flags both map onto `TrainConfig`.

Each field carries its own one-line help and its allowed values (`option(...)`); the CLI's help text and
`validate` are generated from that metadata, so the flags, the recipes and the notebook API cannot drift apart."""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .plain_yaml import AliasesRefused, read_plain_yaml

# the tasks besides classification (transferkit/dense registers a module for each)
DENSE_TASKS = ("segment", "detect", "anomaly")


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, low: float | None = None,
           high: float | None = None, open_low: bool = False, open_high: bool = False,
           none: str | None = None, syntax: str | None = None) -> Any:
    """A TrainConfig field with its help line and allowed values.

    `low`/`high` bound numbers (closed unless `open_*`), `choices` lists the accepted strings,
    `none` says what leaving it unset means, `syntax` names a parser that checks the string
    (`strategy`, `reg`, `backbone`)."""
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": choices, "low": low, "high": high, "open_low": open_low,
        "open_high": open_high, "none": none, "syntax": syntax})


@dataclass(frozen=True)
class TrainConfig:
    """Everything to rerun a run (RUN_DIR/config.yaml); frozen: later choices make a new one (replace)."""

    data: str = option("", "folder of class folders, image CSV (path,label), or text CSV/TSV/JSONL")
    task: str = option("auto", "what to learn: classify, segment (DATA/images + DATA/masks), anomaly (MVTec "
                       "layout: DATA/train/good), detect (COCO JSON, YOLO or Pascal VOC boxes); auto: from DATA's layout "
                       "(transferkit/dense)", choices=("auto", "classify", *DENSE_TASKS))
    decoder: str = option("fpn", "segment: the decoder on the backbone's feature pyramid",
                          choices=("fpn", "unet"))
    backbone: str = option("bundled:efficientnet_lite0", "source model id (see 'transferkit models'); "
                           "kind:NAME[@random], or auto[:SRC1,SRC2,...] to train the source whose "
                           "frozen features score best by cross-validated probe accuracy (auto alone: "
                           "the bundled sources of the data's modality)", syntax="backbone")
    backbone_budget: float | None = option(None, "with --backbone auto: minutes to spend scoring "
                                           "sources; the rest are not scored", low=0, open_low=True,
                                           none="no limit")
    out: str = option("", "run directory to write")
    strategy: str = option("auto", "what trains: auto (probe or LP-FT, chosen on held-out labels) | "
                           "linear_probe | multi_probe | partial:K | full | two_phase | stages:A-B | "
                           "lora:r=R[,alpha=A] | prototypes (nearest class mean) | contrastive[:pairs=N] (text)", syntax="strategy")
    shots: int | None = option(None, "keep N labelled training examples per class", low=1, none="all")
    epochs: int | None = option(None, "passes over the training split (steps wins if both are set)", low=1, none="from steps")
    steps: int | None = option(None, "optimisation steps in total", low=1,
                               none="15 epochs, within 30..600 steps; detect: 20 epochs, within 150..600")
    lr: float = option(1e-3, "head learning rate; the backbone gets lr x backbone_lr_mult", low=0,
                       open_low=True, high=10)
    backbone_lr_mult: float | None = option(None, "discriminative LR: backbone LR / head LR", low=0, high=10,
                                            none="1.0 for image classification above 20 labels per class, else 0.1")
    layer_decay: float | None = option(None, "layer-wise LR decay per stage from the top (e.g. 0.75)",
                                       low=0, open_low=True, high=1, none="off")
    optimizer: str = option("adamw", "optimizer (sgd: momentum 0.9, Nesterov)", choices=("adamw", "sgd"))
    weight_decay: float = option(0.01, "decoupled weight decay (AdamW) / L2 (SGD)", low=0, high=1)
    warmup: float = option(0.1, "share of steps with linear warm-up, then cosine decay", low=0, high=1,
                           open_high=True)
    batch_size: int = option(32, "inputs per training batch (detect: 8 unless given); evaluation, prediction "
                            "and feature extraction run batches of twice this", low=1, high=65536)
    grad_accum: int = option(1, "gradient accumulation: micro-batches per optimisation step", low=1,
                             high=4096)
    seed: int = option(0, "seed for splits, few-shot sampling, initialisation and batch order", low=0,
                       high=2**32 - 1)
    val: str | None = option(None, "labelled validation data", none="split from DATA")
    test: str | None = option(None, "labelled test data", none="split from DATA")
    val_fraction: float | None = option(None, "share of DATA held out for validation (without --val)", low=0,
                                        high=1, open_high=True,
                                        none="none at <= 20 labels per class (choices by cross-validation), else 0.2")
    test_fraction: float = option(0.2, "share of DATA held out for testing (without --test)", low=0,
                                  high=1, open_high=True)
    augment: bool = option(True, "training augmentation (images)")
    augment_policy: str = option("auto", "augmentation when the backbone trains: light (crop 0.6-1, flip, "
                                 "jitter), strong (crop 0.25-1, flip, TrivialAugment); auto: strong at "
                                 "<= 20 labels per class", choices=("auto", "light", "strong"))
    tta: bool = option(True, "test-time augmentation: average with the flipped image")
    tta_views: int | None = option(None, "with --tta, also average over this many lightly augmented "
                                   "copies of each image (infer/tta.py)", low=0, high=64,
                                   none="4 for images at <= 20 labels per class, else 0")
    image_size: int | None = option(None, "input size in pixels", low=16, high=4096,
                                    none="the backbone's own")
    in_chans: int | None = option(None, "input channels; other than 3 adapts the first conv "
                                  "(models/channels.py)", low=1, high=1024, none="from the data")
    chans_init: str = option("auto", "first-conv filters of the new channels (auto: sum for 1-2 "
                             "channels, rgb+mean for 4+)", choices=("auto", "sum", "rgb+mean", "rgb+zeros"))
    array_layout: str = option("auto", "channel axis of .npy/.tif inputs", choices=("auto", "hwc", "chw"))
    spectrogram: str | None = option(None, "log-mel of .wav / 1-D .npy signals, e.g. sr=16000,n_mels=64 "
                                     "(recorded in full)", none="sr=16000,n_fft=512,hop=128,n_mels=64")
    chan_mean: list[float] | None = option(None, "per-channel input mean (computed from the training "
                                           "data and recorded)", none="the source's, or from the data")
    chan_std: list[float] | None = option(None, "per-channel input standard deviation (as chan_mean)",
                                          none="the source's, or from the data")
    bn: str = option("auto", "BatchNorm policy (auto: eval at <= 100 training examples per class on "
                     "average, else frozen; frozen for a randomly initialised backbone)",
                     choices=("auto", "frozen", "adapt", "eval"))
    head_hidden: int | None = option(None, "hidden width of an MLP head", low=1, high=1_000_000,
                                     none="a linear head")
    head_dropout: float = option(0.0, "dropout before the head", low=0, high=1, open_high=True)
    feature_norm: str | None = option(None, "the linear head reads features rescaled to one length", choices=(
        "on", "off"), none="on for a probe or LP-FT of an image source at <= 20 labels per class, else off")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy", low=0, high=1,
                                    open_high=True)
    reg: str | None = option(None, "regularizer: l2sp:A[,B][,coupled|decoupled] | l2sp:auto | delta:A | "
                             "bss:E[,K], combined with +", none="none", syntax="reg")
    store_anchor: bool = option(False, "save the L2-SP anchor in the run (else re-derive and verify)")
    eval_every: int | None = option(None, "validate every N steps", low=1, none="once per epoch")
    patience: int | None = option(None, "early stop after N validations without improvement", low=1,
                                  none="off")
    metric: str = option("loss", "best checkpoint by validation loss (NLL), accuracy or macro-F1",
                         choices=("loss", "accuracy", "macro_f1"))
    precision: str = option("auto", "numeric precision (auto: bf16 on a GPU that has it, else fp32)",
                            choices=("auto", "fp32", "bf16", "fp16"))
    num_workers: int = option(0, "data loader worker processes", low=0, high=256)
    cache: bool = option(True, "read and write frozen features in the on-disk feature cache; --no-cache "
                         "computes them afresh and writes nothing there (TRANSFERKIT_NO_CACHE=1 also "
                         "turns it off)")
    cache_dir: str | None = option(None, "feature cache root", none="$TRANSFERKIT_CACHE, else "
                                   "~/.cache/transferkit")
    stage_cache: bool = option(True, "without augmentation, compute frozen stages (partial:K) once and "
                               "train on their stored outputs (engine/stage_cache.py)")
    text_col: str = option("text", "text column of a CSV/TSV/JSONL")
    label_col: str = option("label", "label column of a CSV/TSV/JSONL")
    max_length: int | None = option(None, "tokens per text", low=2, high=1_000_000,
                                    none="the tokenizer's")
    pooling: str | None = option(None, "text pooling", choices=("mean", "cls"),
                                 none="the model family's")
    arch: str | None = option(None, "timm architecture for file: weights without metadata",
                              none="from the file")
    class_text: str | None = option(None, "CSV/JSON class -> words: the class names through --bridge (or a "
                                    "clip: backbone) as a prior for the head", none="no prior")
    bridge: str | None = option(None, "bridge directory from 'transferkit bridge', for --class-text",
                                none="the backbone's own (clip:)")
    stop_after: int | None = option(None, "stop (as if interrupted) after N steps; resume later", low=1,
                                    none="off")
    overwrite: bool = option(False, "write into a non-empty --out: an earlier result there is replaced, "
                             "your files of the same names are kept as NAME.orig (nothing is deleted)")
    resume_inexact: bool = option(False, "with --resume: continue even without the optimizer state, or on "
                                  "data that changed since the start (logged and noted in run.json)")
    checkpoint_every: int | None = option(200, "rewrite last/ every N optimisation steps (or by time, "
                                          "whichever comes first)", low=1, none="by time only")
    checkpoint_seconds: float = option(60.0, "rewrite last/ at least every N seconds", low=0, open_low=True)
    strict_images: bool = option(False, "stop on an unreadable image (off: skip it and list it)")
    strict_shots: bool = option(False, "stop when a class has fewer than --shots images (off: warn)")
    allow_overlap: bool = option(False, "train even when --val/--test data is also in the training split (the "
                                 "same file or content): a warning instead of an error")
    cv_folds: int = option(5, "folds of the cross-validation that chooses at few labels (no validation split)",
                           low=2, high=100)
    probe_views: int | None = option(None, "augmented copies (crop, flip, colour) of each training image the head "
                                     "fitted on frozen features also learns from", low=0, high=64,
                                     none="8 at few labels, fewer as the training set grows; 0 without --augment")
    wise: float | None = option(None, "two_phase: WiSE-FT weight of the fine-tuned weights against the probe's "
                                "(1 = fine-tuned only, 0 = the probe)", low=0, high=1,
                                none="chosen on validation, else 0.5")

    unlabelled: str | None = option(None, "unlabelled target images (folder, loose or in class folders, labels "
                                    "ignored; or a CSV with a path column), or 'test': the test split's inputs "
                                    "(transductive). Used for AdaBN statistics and FixMatch pseudo-labels",
                                    none="none")
    unlabelled_weight: float = option(1.0, "FixMatch: weight (lambda) of the loss on confident pseudo-labels",
                                      low=0, high=100)
    unlabelled_ratio: int = option(1, "FixMatch: unlabelled images per labelled one in each step (mu)", low=1,
                                   high=64)
    unlabelled_threshold: float = option(0.95, "FixMatch: keep a pseudo-label when its probability is at "
                                         "least this (tau)", low=0, high=1)

    log_with: str | None = option(None, "experiment tracker, through Accelerate (tensorboard writes to "
                                  "RUN/logs)", choices=("tensorboard", "mlflow", "wandb"), none="none")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> TrainConfig:
        validate(self)
        return self


FIELD_NAMES = [f.name for f in fields(TrainConfig)]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def describe_allowed(f: dataclasses.Field) -> str:
    """The allowed values of a field in words: `adamw, sgd` or `0 < x <= 10`."""
    md = f.metadata
    if md.get("choices"):
        return ", ".join(md["choices"])
    low, high = md.get("low"), md.get("high")
    if low is None and high is None:
        return ""
    kind = "integer" if is_int_field(f) else "number"
    lo = f"{'<' if md.get('open_low') else '<='}"
    hi = f"{'<' if md.get('open_high') else '<='}"
    word = f", or {none_word(f)}" if none_word(f) else ""  # --shots all
    if high is None:
        return f"{kind} {lo.replace('<', '>')} {_num(low)}{word}"
    if low is None:
        return f"{kind} {hi} {_num(high)}{word}"
    return f"{_num(low)} {lo} {kind} {hi} {_num(high)}{word}"


def none_word(f: dataclasses.Field) -> str | None:
    """The one word that sets a numeric field to unset (`--shots all`, `--patience off`)."""
    text = f.metadata.get("none")
    return text if text and text.isalpha() and (is_int_field(f) or is_float_field(f)) else None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def is_int_field(f: dataclasses.Field) -> bool:
    return "int" in str(f.type) and "bool" not in str(f.type)


def is_float_field(f: dataclasses.Field) -> bool:
    return "float" in str(f.type)


def _named(name: str) -> str:
    return f"'{name}' ({flag(name)})"


def _check_field(f: dataclasses.Field, value: Any) -> None:
    md = f.metadata
    if value is None:
        if md.get("none") is None and f.default is not None:
            raise ConfigError(f"{_named(f.name)} needs a value")
        return
    if md.get("choices") and value not in md["choices"]:
        near = difflib.get_close_matches(str(value), md["choices"], n=1)
        raise ConfigError(f"{_named(f.name)} must be one of {', '.join(md['choices'])}; got {value!r}"
                          + (f" (did you mean '{near[0]}'?)" if near else ""))
    low, high = md.get("low"), md.get("high")
    if low is None and high is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{_named(f.name)} must be a finite number, got {value}")
    too_low = low is not None and (value <= low if md.get("open_low") else value < low)
    too_high = high is not None and (value >= high if md.get("open_high") else value > high)
    if too_low or too_high:
        raise ConfigError(f"{_named(f.name)} must be {describe_allowed(f)}, got {value}")


def validate(cfg: TrainConfig) -> None:
    """Every check that needs no data and no model: ranges, choices and the syntax of the
    strategy, regularizer and source strings. Raises ConfigError naming the field and the fix.
    `make_config` and `transferkit.train` call it, so a bad value stops a run before it writes."""
    for f in fields(TrainConfig):
        _check_field(f, getattr(cfg, f.name))
    if cfg.val is None and cfg.test is None and (cfg.val_fraction or 0.2) + cfg.test_fraction >= 1:
        raise ConfigError(f"val_fraction + test_fraction must be < 1 (nothing left to train on), got "
                          f"{cfg.val_fraction} + {cfg.test_fraction}")
    _check_channel_stats(cfg.chan_mean, cfg.chan_std, cfg.in_chans)
    _check_syntax(cfg)


def auto_backbone_sources(backbone: str | None) -> list[str] | None:
    """The sources that `--backbone auto:SRC1,SRC2,...` lists ([] for plain `auto`: the bundled
    ones of the data's modality); None when the backbone is not `auto`."""
    if backbone == "auto":
        return []
    if backbone and backbone.startswith("auto:"):
        return [s.strip() for s in backbone[len("auto:"):].split(",") if s.strip()]
    return None


def _check_channel_stats(mean: list[float] | None, std: list[float] | None, in_chans: int | None) -> None:
    """Finite means, finite positive deviations, given together with one value per channel (their
    count against the data's channels is checked with the data: engine/input_kind.py)."""
    for name, values in (("chan_mean", mean), ("chan_std", std)):
        for v in values or []:
            if not math.isfinite(v) or (name == "chan_std" and v <= 0):
                kind = "finite numbers" if name == "chan_mean" else "finite numbers above 0 (inputs are divided by them)"
                raise ConfigError(f"{_named(name)} must be {kind}, got {v}")
    if (mean is None) != (std is None):
        given, missing = ("chan_mean", "chan_std") if std is None else ("chan_std", "chan_mean")
        raise ConfigError(f"{_named(given)} is given without {_named(missing)}: give both, one value per input channel")
    if mean is not None and len(mean) != len(std):
        raise ConfigError(f"{_named('chan_mean')} has {len(mean)} values and {_named('chan_std')} {len(std)}: "
                          "give one value per input channel in each")
    if mean is not None and in_chans is not None and len(mean) != in_chans:
        raise ConfigError(f"{_named('chan_mean')} has {len(mean)} value(s) for {in_chans} input channels "
                          f"({_named('in_chans')}): give {in_chans}, one per channel")


def _check_syntax(cfg: TrainConfig) -> None:
    if cfg.log_with:
        import importlib.util
        if importlib.util.find_spec(cfg.log_with) is None:
            raise ConfigError(f"{_named('log_with')}: {cfg.log_with} is not installed; "
                              f"pip install {cfg.log_with}")
    if cfg.backbone:
        from .models.sources import SourceError, parse_source
        listed = auto_backbone_sources(cfg.backbone)
        sources = [cfg.backbone] if listed is None else listed
        if cfg.backbone.startswith("auto:") and not listed:
            raise ConfigError(f"{_named('backbone')}: auto: lists no source (auto:SRC1,SRC2,...)")
        try:
            for source in sources:
                parse_source(source)
        except SourceError as e:
            raise ConfigError(f"{_named('backbone')}: {e}") from None
    if cfg.strategy != "auto":  # `auto` is resolved from the data (transferkit.choose)
        from .strategies.plan import plan_strategy
        try:
            plan_strategy(cfg.strategy, num_stages=1_000_000)  # the stage range is checked with the model
        except ValueError as e:
            raise ConfigError(f"{_named('strategy')}: {e}") from None
    if cfg.unlabelled:
        from .data.pool import check_pool_path
        check_pool_path(cfg.unlabelled)
    if cfg.reg:
        from .regularizers.spec import parse_regularizer
        try:
            parse_regularizer(cfg.reg)
        except ValueError as e:
            raise ConfigError(f"{_named('reg')}: {e}") from None


def _coerce(name: str, value: Any) -> Any:
    f = TrainConfig.__dataclass_fields__[name]
    if value is None:
        return None
    if isinstance(value, str) and none_word(f) and value.strip().lower() == none_word(f):
        return None  # `--shots all`: as if unset, and it overrides a recipe's value
    if name in ("chan_mean", "chan_std"):
        return _floats(name, value)
    if isinstance(f.default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{_named(name)} must be true or false, got {value!r}")
    try:
        if is_int_field(f):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if is_float_field(f):
            return float(value)
    except (TypeError, ValueError) as e:
        kind = "an integer" if is_int_field(f) else "a number"
        raise ConfigError(f"{_named(name)} must be {kind}, got {value!r}") from e
    return str(value) if not isinstance(value, str) else value


def _floats(name: str, value: Any) -> list[float]:
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        return [float(v) for v in parts]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{_named(name)} must be numbers, one per channel (e.g. 0.5,0.2), got {value!r}") from e


def check_keys(keys, origin: str) -> None:
    for k in keys:
        if k not in FIELD_NAMES:
            near = difflib.get_close_matches(k, FIELD_NAMES, n=1)
            raise ConfigError(f"{origin}: unknown key '{k}'" + (f"; did you mean '{near[0]}'?" if near else ""))


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe (a path, or the name of a shipped recipe such as `two_phase`); unknown keys
    are errors that name the nearest valid key."""
    p = Path(path)
    if not p.is_file():
        p = _shipped_recipe(str(path))
    try:
        data = read_plain_yaml(p) or {}
    except AliasesRefused as e:
        raise ConfigError(f"{p} {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a recipe is a mapping of option: value")
    odd = [k for k in data if not isinstance(k, str)]
    if odd:
        raise ConfigError(f"{p}: option names must be words, got {odd[0]!r}; a recipe is a mapping of option: value")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    check_keys(data, str(p))
    return data


RECIPES_DIR = Path(__file__).parent / "recipes"


def shipped_recipes() -> list[str]:
    """Names of the recipes that ship inside the package (usable as `--config NAME`)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _shipped_recipe(name: str) -> Path:
    stem = name[:-5] if name.endswith(".yaml") else name
    if "/" not in name and (RECIPES_DIR / f"{stem}.yaml").is_file():
        return RECIPES_DIR / f"{stem}.yaml"
    names = shipped_recipes()
    near = difflib.get_close_matches(stem, names, n=1)
    raise ConfigError(f"recipe not found: {name} (not a file, nor a shipped recipe"
                      + (f"; did you mean '{near[0]}'?" if near else "")
                      + f"; shipped: {', '.join(names)})")


def make_config(recipe: dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < recipe < explicit overrides (None means "not given")."""
    values: dict[str, Any] = {}
    for src in (recipe or {}, {k: v for k, v in overrides.items() if v is not None}):
        check_keys(src, "config")
        for k, v in src.items():
            values[k] = _coerce(k, v)
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def save_config(cfg: TrainConfig, path: Path) -> None:
    from .store.checkpoint import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_config(path: Path) -> TrainConfig:
    """A run's config.yaml; an edit that broke it (invalid YAML, a tag, a wrong type) is a ConfigError."""
    try:
        data = read_plain_yaml(path)
    except AliasesRefused as e:
        raise ConfigError(f"{path} {e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); it was edited or damaged: "
                          "restore it (the run's values are also in its report.html)") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a mapping of option: value; restore the run's config.yaml")
    check_keys(data, str(path))
    return make_config(data)
