"""The baseline of every domain adaptation table: train on the labelled source alone.

    L = CE(C(G(x_s)), y_s)          (no transfer term: L_transfer = 0)

Everything else — backbone, strategy, steps, batches (source *and* target inputs go through the
network, so BatchNorm layers in training mode see both domains exactly as they do for the other
methods), optimizer, seeds — is identical, so the gap to `dann`/`mcc` is the transfer loss alone.
"""

from __future__ import annotations

import torch
from torch import nn


class SourceOnly(nn.Module):
    name = "source_only"

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()

    def forward(self, logits_s, feats_s, logits_t, feats_t, progress: float):
        return torch.zeros((), device=logits_s.device), {}
