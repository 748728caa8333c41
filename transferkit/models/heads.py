"""Head surgery: a new output layer for the target classes on top of any Backbone."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .backbone import Backbone


class TransferModel(nn.Module):
    """`backbone` (batch -> pooled features) followed by a new `head` (features -> logits).

    Parameter names are therefore `backbone.*` and `head.*` for every architecture, which is what
    freezing, parameter groups, L2-SP and checkpoints rely on.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, class_names: list[str]):
        super().__init__()
        self.backbone = backbone.module
        self.head = head
        self.class_names = list(class_names)
        self.spec = backbone  # the contract: stages, preprocess, source (not a submodule)

    def forward_features(self, x):
        return self.backbone(x)

    def forward(self, x, return_features: bool = False):
        feats = self.backbone(x)
        logits = self.head(feats)
        return (logits, feats) if return_features else logits

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class NormLinear(nn.Linear):
    """A linear layer on features rescaled to one length: `x / ||x|| * radius`, then `W x + b`.

    A pooled feature vector's length says how strongly an image excites the backbone as a whole,
    which is mostly not what tells the target classes apart; a head fitted on a few labels per class
    spends its weights on it. Scaled to a common length, the probe sees directions only (the
    feature normalisation of few-shot linear evaluation, e.g. Tian et al., ECCV 2020). `radius` is a
    buffer, set by the head phase to the mean length of the training features, so that C means
    about what it means on the raw features; before that it is sqrt(in_features) (unit RMS per
    dimension), a scale a freshly initialised layer learns from. The rescaling is idempotent:
    features already rescaled pass through unchanged, so a probe may be fitted on rescaled views.
    Weights keep the names `weight` and `bias` (checkpoints, WiSE-FT, the fitting fast path)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("radius", torch.tensor(float(in_features) ** 0.5))

    def rescale(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.radius.to(x.dtype) / x.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.rescale(x), self.weight, self.bias)


def make_head(feature_dim: int, num_classes: int, hidden: int | None = None,
              dropout: float = 0.0, prototypes: bool = False, feature_norm: bool = False) -> nn.Module:
    """A linear head, or a small MLP (Linear-GELU-Dropout-Linear) when `hidden` is given, or with
    `prototypes` the nearest-class-mean head on normalised features (`models.prototypes`).
    `feature_norm`: the linear head reads features rescaled to one length (`NormLinear`)."""
    if num_classes < 2:
        raise ValueError(f"a classification head needs at least 2 classes, got {num_classes}")
    if prototypes:
        from .prototypes import PrototypeHead
        return PrototypeHead(feature_dim, num_classes)
    if feature_norm and hidden:
        raise ValueError("feature_norm applies to a linear head; an MLP head (hidden) has its own scale")
    layers: list[nn.Module] = []
    if hidden:
        layers += [nn.Linear(feature_dim, hidden), nn.GELU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, num_classes))
        return nn.Sequential(*layers)
    linear = NormLinear if feature_norm else nn.Linear
    if dropout:
        return nn.Sequential(nn.Dropout(dropout), linear(feature_dim, num_classes))
    return linear(feature_dim, num_classes)


def attach_head(backbone: Backbone, class_names: list[str] | int, *, hidden: int | None = None,
                dropout: float = 0.0, prototypes: bool = False, feature_norm: bool = False) -> TransferModel:
    """Attach a freshly initialised head for the target classes to `backbone`.

    `class_names` is the list of target class names (or a class count, named "0".."K-1").
    """
    if isinstance(class_names, int):
        class_names = [str(i) for i in range(class_names)]
    head = make_head(backbone.feature_dim, len(class_names), hidden=hidden, dropout=dropout,
                     prototypes=prototypes, feature_norm=feature_norm)
    return TransferModel(backbone, head, class_names)
