"""Head surgery: a new output layer for the target classes on top of any Backbone."""

from __future__ import annotations

from torch import nn

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


def make_head(feature_dim: int, num_classes: int, hidden: int | None = None,
              dropout: float = 0.0, prototypes: bool = False) -> nn.Module:
    """A linear head, or a small MLP (Linear-GELU-Dropout-Linear) when `hidden` is given, or with
    `prototypes` the nearest-class-mean head on normalised features (`models.prototypes`)."""
    if num_classes < 2:
        raise ValueError(f"a classification head needs at least 2 classes, got {num_classes}")
    if prototypes:
        from .prototypes import PrototypeHead
        return PrototypeHead(feature_dim, num_classes)
    layers: list[nn.Module] = []
    if hidden:
        layers += [nn.Linear(feature_dim, hidden), nn.GELU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, num_classes))
        return nn.Sequential(*layers)
    if dropout:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
    return nn.Linear(feature_dim, num_classes)


def attach_head(backbone: Backbone, class_names: list[str] | int, *, hidden: int | None = None,
                dropout: float = 0.0, prototypes: bool = False) -> TransferModel:
    """Attach a freshly initialised head for the target classes to `backbone`.

    `class_names` is the list of target class names (or a class count, named "0".."K-1").
    """
    if isinstance(class_names, int):
        class_names = [str(i) for i in range(class_names)]
    head = make_head(backbone.feature_dim, len(class_names), hidden=hidden, dropout=dropout,
                     prototypes=prototypes)
    return TransferModel(backbone, head, class_names)
