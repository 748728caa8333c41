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

from ..config import ConfigError, TrainConfig, option

METHODS = ("source_only", "dann", "mcc")


@dataclass
class AdaptConfig:
    """Unsupervised domain adaptation: labelled source, unlabelled target, one transfer loss.

    A field with `option(...)` metadata is adapt's own; a plain field is the TrainConfig field of the
    same name and default, and `transferkit adapt --help` shows train's help for it (one meaning per
    flag: tests/test_cli_interface.py)."""

    source: str = option("", "labelled source images (folder of class folders or path,label CSV)",
                         none="required, except with --resume")
    target: str = option("", "unlabelled target images (any folder of images, or a CSV with 'path')",
                         none="required, except with --resume")
    backbone: str = "bundled:efficientnet_lite0"
    method: str = option("dann", "transfer loss: dann (domain-adversarial), mcc (minimum class confusion), "
                         "source_only (no target loss: the baseline)", choices=METHODS)
    out: str = option("", "run directory to write (predict and evaluate read it like a train run)",
                      none="required, except with --resume")
    target_test: str | None = option(None, "labelled target images, used only to report metrics",
                                     none="no target metrics")
    strategy: str = option("full", "what trains, in one phase: full | partial:K | stages:A-B")
    steps: int = option(300, "optimisation steps (one source and one target batch each)", low=1)
    batch_size: int = option(32, "inputs per batch from each domain (a step reads one of each)", low=1)
    lr: float = 1e-3
    backbone_lr_mult: float = option(0.1, "discriminative LR: backbone LR / head LR", low=0, high=10)
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    warmup: float = 0.1
    trade_off: float = option(1.0, "weight of the transfer loss next to the source cross-entropy", low=0)
    mcc_temperature: float = option(2.5, "MCC's temperature T", low=0, open_low=True)
    disc_hidden: int = option(256, "DANN discriminator width", low=1)
    val_fraction: float = option(0.1, "share of the source held out to monitor source accuracy", low=0,
                                 high=1, open_high=True)
    eval_every: int | None = option(None, "monitor every N steps", low=1, none="10 times per run")
    seed: int = 0
    image_size: int | None = None
    augment: bool = True
    tta: bool = True
    bn: str = "auto"
    head_hidden: int | None = None
    precision: str = "auto"
    stop_after: int | None = None

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
