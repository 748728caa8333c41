"""`AdaptConfig`: everything an `adapt` run needs, written to RUN_DIR/adapt.yaml.

RUN_DIR/config.yaml holds the matching `TrainConfig` (backbone, head, image size, ...), so that
`transferkit predict` and `transferkit evaluate` load an adapted model exactly like a trained one.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, TrainConfig

METHODS = ("source_only", "dann", "mcc")


@dataclass
class AdaptConfig:
    """Unsupervised domain adaptation: labelled source, unlabelled target, one transfer loss."""

    source: str = ""                    # labelled source images (folder of class folders or path,label CSV)
    target: str = ""                    # unlabelled target images (any folder of images, or a CSV with 'path')
    backbone: str = "bundled:efficientnet_lite0"  # source model id (see `transferkit models`)
    method: str = "dann"                # source_only | dann | mcc
    out: str = ""                       # run directory
    target_test: str | None = None      # labelled target images, used only to report metrics
    strategy: str = "full"              # full | partial:K | stages:A-B (one trainable phase)
    steps: int = 300                    # optimisation steps (one source + one target batch each)
    batch_size: int = 32                # items per domain per step
    lr: float = 1e-3                    # head (and discriminator) learning rate
    backbone_lr_mult: float = 0.1       # backbone LR / head LR
    weight_decay: float = 0.01
    optimizer: str = "adamw"            # adamw | sgd (momentum 0.9)
    warmup: float = 0.1                 # share of steps with linear warm-up, then cosine decay
    trade_off: float = 1.0              # weight of the transfer loss next to the source cross-entropy
    mcc_temperature: float = 2.5        # MCC's temperature T
    disc_hidden: int = 256              # DANN discriminator width
    val_fraction: float = 0.1           # share of the source held out to monitor source accuracy
    eval_every: int | None = None       # monitor every N steps (default: 10 times per run)
    seed: int = 0
    image_size: int | None = None       # default: the backbone's own input size
    augment: bool = True                # light training augmentation on both domains
    tta: bool = True                    # test-time flip averaging for the final target metrics
    bn: str = "auto"                    # BatchNorm policy (see `transferkit train --help`)
    head_hidden: int | None = None      # MLP head hidden width (default: a linear head)
    precision: str = "auto"             # auto | fp32 | bf16 | fp16
    stop_after: int | None = None       # stop (as if interrupted) after N steps; --resume later

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def train_config(self) -> TrainConfig:
        """The `TrainConfig` that rebuilds this run's model (what `load_run` reads)."""
        return TrainConfig(data=self.source, backbone=self.backbone, out=self.out, strategy=self.strategy,
                           steps=self.steps, lr=self.lr, backbone_lr_mult=self.backbone_lr_mult,
                           optimizer=self.optimizer, weight_decay=self.weight_decay, warmup=self.warmup,
                           batch_size=self.batch_size, seed=self.seed, test=self.target_test,
                           val_fraction=self.val_fraction, augment=self.augment, tta=self.tta,
                           image_size=self.image_size, bn=self.bn, head_hidden=self.head_hidden,
                           precision=self.precision)


ADAPT_FIELDS = [f.name for f in fields(AdaptConfig)]


def _field_type(name: str):
    default = AdaptConfig.__dataclass_fields__[name].default
    if name in ("eval_every", "image_size", "head_hidden", "stop_after"):
        return int
    if name == "target_test":
        return str
    return type(default)


def make_adapt_config(**values: Any) -> AdaptConfig:
    """Build from CLI/YAML values (None = not given); unknown keys and bad values are errors."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if k not in ADAPT_FIELDS:
            near = difflib.get_close_matches(k, ADAPT_FIELDS, n=1)
            raise ConfigError(f"adapt: unknown option '{k}'" + (f"; did you mean '{near[0]}'?" if near else ""))
        if v is None:
            continue
        t = _field_type(k)
        try:
            if t is bool:
                v = v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes", "on")
            else:
                v = t(v)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"adapt: '{k}' must be a {t.__name__}, got {v!r}") from e
        out[k] = v
    cfg = AdaptConfig(**out)
    _check(cfg)
    return cfg


def _check(cfg: AdaptConfig) -> None:
    if cfg.method not in METHODS:
        near = difflib.get_close_matches(cfg.method, METHODS, n=1)
        raise ConfigError(f"adapt: unknown --method '{cfg.method}'"
                          + (f"; did you mean '{near[0]}'?" if near else "") + f" (use {' | '.join(METHODS)})")
    for name in ("steps", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"adapt: --{name.replace('_', '-')} must be at least 1")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ConfigError("adapt: --val-fraction must be in [0, 1)")
    if cfg.trade_off < 0:
        raise ConfigError("adapt: --trade-off must be >= 0")


def save_adapt_config(cfg: AdaptConfig, path: Path) -> None:
    from ..store.checkpoint import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_adapt_config(path: Path) -> AdaptConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {path.parent} is not a `transferkit adapt` run")
    from ..config import ConfigError
    from ..plain_yaml import AliasesRefused, read_plain_yaml
    try:
        data = read_plain_yaml(path) or {}
    except AliasesRefused as e:
        raise ConfigError(f"{path} {e}") from None
    return make_adapt_config(**data)
