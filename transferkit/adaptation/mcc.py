"""MCC: Minimum Class Confusion (Jin, Wang, Long & Wang, "Minimum Class Confusion for Versatile
Domain Adaptation", ECCV 2020). No discriminator: the loss only reads the target logits.

For a target batch of B items and K classes, with temperature T (2.5 in the paper):

    Y_hat_ij = exp(z_ij / T) / sum_k exp(z_ik / T)                       temperature-scaled probabilities
    H_i      = - sum_j Y_hat_ij log Y_hat_ij                             entropy of item i
    W_ii     = B (1 + exp(-H_i)) / sum_i' (1 + exp(-H_i'))               certain items weigh more
    C        = Y_hat^T W Y_hat                                           K x K class correlation
    C~_jj'   = C_jj' / sum_j'' C_jj''                                    each row normalised
    L_MCC    = 1/K * sum_j sum_{j' != j} C~_jj'                          between-class confusion

and the total loss is  L = CE(source) + trade_off * L_MCC.
"""

from __future__ import annotations

import torch
from torch import nn


def mcc_loss(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """L_MCC of one batch of target logits [B, K]."""
    b, k = logits.shape
    probs = (logits.float() / temperature).softmax(dim=1)
    entropy = -(probs * torch.log(probs + 1e-5)).sum(dim=1)
    # the weights follow the paper: computed from the predictions but not trained through
    w = (1.0 + torch.exp(-entropy)).detach()
    w = b * w / w.sum()
    confusion = (probs * w.unsqueeze(1)).t() @ probs
    confusion = confusion / confusion.sum(dim=1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / k


class MCC(nn.Module):
    """The MCC transfer loss: `forward(...)` returns (L_MCC, info)."""

    name = "mcc"

    def __init__(self, feature_dim: int, num_classes: int, *, temperature: float = 2.5):
        super().__init__()
        self.temperature = temperature

    def forward(self, logits_s, feats_s, logits_t, feats_t, progress: float):
        loss = mcc_loss(logits_t, self.temperature)
        return loss, {"mcc_loss": loss.item()}
