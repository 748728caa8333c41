"""The adaptation method a config names, built for a backbone's feature size and the classes."""

from __future__ import annotations

from torch import nn

from .config import METHODS, AdaptConfig
from .dann import DANN
from .mcc import MCC
from .source_only import SourceOnly


def build_method(cfg: AdaptConfig, feature_dim: int, num_classes: int) -> nn.Module:
    if cfg.method == "dann":
        return DANN(feature_dim, num_classes, hidden=cfg.disc_hidden)
    if cfg.method == "mcc":
        return MCC(feature_dim, num_classes, temperature=cfg.mcc_temperature)
    if cfg.method == "source_only":
        return SourceOnly(feature_dim, num_classes)
    raise ValueError(f"unknown adaptation method '{cfg.method}' (use {' | '.join(METHODS)})")
