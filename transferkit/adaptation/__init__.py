"""Transductive transfer: unsupervised domain adaptation from labelled source to unlabelled target data
(`train --unlabelled`, unlabelled images next to a few labels, is part of a training run:
engine/unlabelled.py with engine/adabn.py and engine/fixmatch.py).

One module per method, each a `nn.Module` whose `forward(logits_s, feats_s, logits_t, feats_t,
progress)` returns (transfer loss, info): `dann` (Ganin et al., JMLR 2016), `mcc` (Jin et al., ECCV
2020) and `source_only` (the baseline). `loop.adapt` trains a TransferModel with any of them.
"""

from __future__ import annotations

import importlib

from .config import METHODS, AdaptConfig, make_adapt_config

# the methods import PyTorch: loaded on first use, so `transferkit adapt --help` (which reads
# AdaptConfig) answers at once
_LAZY = {"DANN": ".dann", "DomainDiscriminator": ".dann", "domain_loss": ".dann", "dann_coefficient": ".grl",
         "reverse_gradient": ".grl", "MCC": ".mcc", "mcc_loss": ".mcc", "build_method": ".methods",
         "SourceOnly": ".source_only"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["METHODS", "AdaptConfig", "make_adapt_config", "build_method", "DANN", "MCC", "SourceOnly",
           "DomainDiscriminator", "domain_loss", "dann_coefficient",
           "reverse_gradient", "mcc_loss", "adapt"]


def adapt(cfg: AdaptConfig, **kwargs):
    """Train according to `cfg` (see `loop.adapt`)."""
    from .loop import adapt as _adapt
    return _adapt(cfg, **kwargs)
