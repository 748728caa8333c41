"""BSS: shrink the smallest singular values of the batch feature matrix.

Chen, Wang, Fu, Long & Wang, "Catastrophic Forgetting Meets Negative Transfer: Batch Spectral
Shrinkage for Safe Transfer Learning", NeurIPS 2019:

    Omega(F) = eta * sum_{i=1..k} sigma_{-i}^2

``F`` is this step's pooled feature matrix ``[B, D]`` (not centred), ``sigma_1 >= ... >= sigma_r``
its singular values (``r = min(B, D)``) and ``sigma_{-i}`` the ``i``-th smallest. The small-spectrum
directions are where source knowledge that does not transfer lingers; penalising them suppresses
negative transfer.
"""

from __future__ import annotations

import torch
from torch import nn

from .parsing import BadPart, count, number


class BSS:
    """``eta * (sum of the k smallest squared singular values of features [B, D])`` (Chen et al., 2019).

    ``k`` cannot exceed ``min(B, D)``: a batch with fewer than ``k`` samples raises ``ValueError``
    (drop the last incomplete batch, or keep ``k`` below the smallest batch size).
    """

    def __init__(self, eta: float, k: int = 1):
        if eta < 0:
            raise ValueError(f"BSS needs eta >= 0, got {eta}")
        if int(k) != k or k < 1:
            raise ValueError(f"BSS needs an integer k >= 1, got {k}")
        self.eta = float(eta)
        self.k = int(k)

    def __call__(self, model, features, feature_maps=None, inputs=None) -> torch.Tensor:
        if features is None or features.ndim != 2:
            shape = None if features is None else tuple(features.shape)
            raise ValueError(f"BSS needs the pooled feature batch [B, D], got {shape}")
        rank_bound = min(features.shape)
        if self.k > rank_bound:
            raise ValueError(
                f"BSS k={self.k} exceeds min(B, D)={rank_bound} for features of shape "
                f"{tuple(features.shape)}; use a larger batch, drop_last, or a smaller k"
            )
        # svdvals is not implemented for half precision, and fp32 keeps the small values meaningful.
        sigma = torch.linalg.svdvals(features.float())  # descending
        return self.eta * sigma[-self.k :].pow(2).sum()

    def no_weight_decay(self, model: nn.Module) -> set[str]:
        return set()

    def __repr__(self) -> str:
        return f"BSS(eta={self.eta}, k={self.k})"


# --reg bss:... (regularizers/spec.py)
SPEC_FORMS = ("bss:ETA[,K]",)


def parse(args: list[str]) -> dict:
    if len(args) > 2:
        raise BadPart("bss takes ETA[,K]")
    k = count("K", args[1]) if len(args) == 2 else 1
    return {"eta": number("ETA", args[0]), "k": k}


def spell(p: dict) -> str:
    return f"bss:{p['eta']},{p['k']}"


def build(p: dict, ctx) -> BSS:
    return BSS(p["eta"], p.get("k", 1))
