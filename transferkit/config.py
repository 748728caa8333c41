"""Typed run configuration. YAML recipes and CLI flags both map onto `TrainConfig`."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class TrainConfig:
    """Everything needed to rerun a training run (written to RUN_DIR/config.yaml)."""

    data: str = ""                      # folder of class folders, CSV/TSV/JSONL
    backbone: str = "bundled:efficientnet_lite0"  # source model id (see `transferkit models`)
    out: str = ""                       # run directory
    strategy: str = "two_phase"         # linear_probe | partial:K | full | two_phase | stages:A-B | lora:r=R
    shots: int | None = None            # keep N labelled training examples per class
    epochs: int | None = None           # passes over the training split (or use steps)
    steps: int | None = None            # optimisation steps in total (wins over epochs)
    lr: float = 1e-3                    # head learning rate; backbone gets lr * backbone_lr_mult
    backbone_lr_mult: float = 0.1       # discriminative LR: backbone LR / head LR
    layer_decay: float | None = None    # layer-wise LR decay per stage from the top (e.g. 0.75)
    optimizer: str = "adamw"            # adamw | sgd (momentum 0.9)
    weight_decay: float = 0.01
    warmup: float = 0.1                 # share of steps with linear warm-up, then cosine decay
    batch_size: int = 32
    grad_accum: int = 1                 # gradient accumulation steps
    seed: int = 0
    val: str | None = None              # labelled validation data (else split from DATA)
    test: str | None = None             # labelled test data (else split from DATA)
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    augment: bool = True                # light training augmentation (images)
    tta: bool = True                    # test-time augmentation: average with the flipped image
    image_size: int | None = None       # default: the backbone's own input size
    bn: str = "auto"                    # BatchNorm policy: auto | frozen | adapt | eval (see resolve_bn)
    head_hidden: int | None = None      # MLP head hidden width (default: a linear head)
    head_dropout: float = 0.0
    label_smoothing: float = 0.0
    reg: str | None = None              # regularizer: l2sp:A[,B] | l2sp:auto | delta:A | bss:E[,K]
    store_anchor: bool = False          # save the L2-SP anchor in the run (else re-derive + verify)
    eval_every: int | None = None       # validate every N steps (default: once per epoch)
    patience: int | None = None         # early stopping after N validations without improvement
    metric: str = "loss"                # best checkpoint by validation: loss (NLL) | accuracy | macro_f1
    precision: str = "auto"             # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    num_workers: int = 0
    text_col: str = "text"
    label_col: str = "label"
    max_length: int | None = None       # tokens; default from the tokenizer
    pooling: str | None = None          # text pooling: mean | cls (default from the model family)
    arch: str | None = None             # architecture for file: weights without metadata
    stop_after: int | None = None       # stop (as if interrupted) after N steps; resume later

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_NAMES = [f.name for f in fields(TrainConfig)]


def _coerce(name: str, value: Any) -> Any:
    default = TrainConfig.__dataclass_fields__[name].default
    if value is None:
        return None
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int) or name in ("shots", "epochs", "steps", "image_size", "head_hidden",
                                                "eval_every", "patience", "max_length", "stop_after"):
            return int(value)
        if isinstance(default, float) or name == "layer_decay":
            return float(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"'{name}' must be a number, got {value!r}") from e
    return str(value) if not isinstance(value, str) else value


def check_keys(keys, origin: str) -> None:
    for k in keys:
        if k not in FIELD_NAMES:
            near = difflib.get_close_matches(k, FIELD_NAMES, n=1)
            raise ConfigError(f"{origin}: unknown key '{k}'" + (f"; did you mean '{near[0]}'?" if near else ""))


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe; unknown keys are errors that name the nearest valid key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a recipe is a mapping of option: value")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    check_keys(data, str(p))
    return data


def make_config(recipe: dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < recipe < explicit overrides (None means "not given")."""
    values: dict[str, Any] = {}
    for src in (recipe or {}, {k: v for k, v in overrides.items() if v is not None}):
        check_keys(src, "config")
        for k, v in src.items():
            values[k] = _coerce(k, v)
    return TrainConfig(**values)


def save_config(cfg: TrainConfig, path: Path) -> None:
    from .engine.checkpoint import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_config(path: Path) -> TrainConfig:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    check_keys(data, str(path))
    return TrainConfig(**data)
