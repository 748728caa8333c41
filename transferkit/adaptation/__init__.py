"""Transductive transfer: unsupervised domain adaptation from labelled source to unlabelled target data
(`train --unlabelled`, unlabelled images next to a few labels, is part of a training run:
engine/unlabelled.py with engine/adabn.py and engine/fixmatch.py).

One module per method, each a `nn.Module` whose `forward(logits_s, feats_s, logits_t, feats_t,
progress)` returns (transfer loss, info): `dann` (Ganin et al., JMLR 2016), `mcc` (Jin et al., ECCV
2020) and `source_only` (the baseline). `loop.adapt` trains a TransferModel with any of them.
"""

from __future__ import annotations

from .config import METHODS, AdaptConfig, make_adapt_config
from .dann import DANN, DomainDiscriminator, domain_loss
from .grl import dann_coefficient, reverse_gradient
from .mcc import MCC, mcc_loss
from .methods import build_method
from .source_only import SourceOnly

__all__ = ["METHODS", "AdaptConfig", "make_adapt_config", "build_method", "DANN", "MCC", "SourceOnly",
           "DomainDiscriminator", "domain_loss", "dann_coefficient",
           "reverse_gradient", "mcc_loss", "adapt"]


def adapt(cfg: AdaptConfig, **kwargs):
    """Train according to `cfg` (see `loop.adapt`)."""
    from .loop import adapt as _adapt
    return _adapt(cfg, **kwargs)
