"""The gradient reversal layer (Ganin & Lempitsky, ICML 2015; Ganin et al., JMLR 2016, section 5).

    forward:   R_lambda(x) = x
    backward:  dR_lambda/dx = -lambda * I

Placed between the feature extractor and a domain discriminator, it lets one backward pass train the
discriminator to *minimise* the domain loss while the features below it are pushed to *maximise* it
(the saddle point of DANN). The coefficient grows during training with the schedule of the paper:

    lambda_p = 2 / (1 + exp(-gamma * p)) - 1,    p = training progress in [0, 1], gamma = 10

so that the noisy discriminator of the first steps barely moves the features.
"""

from __future__ import annotations

import math

import torch


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.neg() * ctx.coeff, None


def reverse_gradient(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward; the gradient flowing back through it is multiplied by `-coeff`."""
    return _ReverseGrad.apply(x, coeff)


def dann_coefficient(progress: float, gamma: float = 10.0, max_coeff: float = 1.0) -> float:
    """lambda_p = max_coeff * (2 / (1 + exp(-gamma p)) - 1): 0 at p = 0, ~max_coeff from p ~ 0.5."""
    p = min(1.0, max(0.0, progress))
    return max_coeff * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)
