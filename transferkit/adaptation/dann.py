"""DANN: domain-adversarial training (Ganin et al., "Domain-Adversarial Training of Neural Networks",
JMLR 17(59), 2016).

A domain discriminator D (an MLP on the pooled features f = G(x)) learns to tell source (d = 1) from
target (d = 0) inputs; the feature extractor G learns to fool it through the gradient reversal layer
R_lambda (see grl.py). With n_s source and n_t target items in a batch the domain loss is

    L_d = 1/2 * [ mean_{x in S} BCE(D(R(G(x))), 1) + mean_{x in T} BCE(D(R(G(x))), 0) ]

and the total loss is  L = CE(C(G(x_s)), y_s) + trade_off * L_d.  D descends L_d; G, through the
reversal, ascends lambda * L_d; lambda follows lambda_p = 2 / (1 + exp(-10 p)) - 1.
A perfect discriminator drives L_d to 0; indistinguishable domains hold it at ln 2 (~0.693).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .grl import dann_coefficient, reverse_gradient


class DomainDiscriminator(nn.Module):
    """features [B, D] -> one domain logit per item (source > 0 > target): Linear-ReLU x2, Linear."""

    def __init__(self, feature_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f).squeeze(-1)


def domain_loss(disc: nn.Module, f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, float]:
    """L_d above (no reversal here) and the discriminator's accuracy on the batch."""
    logit_s, logit_t = disc(f_s).float(), disc(f_t).float()
    loss = 0.5 * (F.binary_cross_entropy_with_logits(logit_s, torch.ones_like(logit_s))
                  + F.binary_cross_entropy_with_logits(logit_t, torch.zeros_like(logit_t)))
    with torch.no_grad():
        acc = torch.cat([(logit_s > 0).float(), (logit_t <= 0).float()]).mean().item()
    return loss, acc


class DANN(nn.Module):
    """The DANN transfer loss: `forward(...)` returns (trade_off-free L_d, info)."""

    name = "dann"

    def __init__(self, feature_dim: int, num_classes: int, *, hidden: int = 256, gamma: float = 10.0,
                 max_coeff: float = 1.0):
        super().__init__()
        self.discriminator = DomainDiscriminator(feature_dim, hidden)
        self.gamma, self.max_coeff = gamma, max_coeff

    def forward(self, logits_s, feats_s, logits_t, feats_t, progress: float):
        coeff = dann_coefficient(progress, self.gamma, self.max_coeff)
        loss, acc = domain_loss(self.discriminator, reverse_gradient(feats_s, coeff),
                                reverse_gradient(feats_t, coeff))
        return loss, {"domain_loss": loss.item(), "domain_accuracy": acc, "grl_coeff": coeff}
