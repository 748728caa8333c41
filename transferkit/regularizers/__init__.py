"""Regularizers: extra loss terms added to the task loss during fine-tuning.

Each one is a small callable (one module per method, the paper and equation in its docstring)::

    term = reg(model, features, feature_maps=None, inputs=None)   # scalar tensor
    names = reg.no_weight_decay(model)   # parameters whose optimizer weight decay must be 0
    reg.before_step(model, optimizer)    # optional: called right before optimizer.step()

``features`` is the pooled feature batch ``[B, D]`` the model produced for this step's ``inputs``,
``feature_maps`` the ``{layer: tensor}`` captured during that forward (see ``capture_feature_maps``;
:func:`feature_map_layers` says which layers the regularizers need). ``before_step`` is how a
decoupled regularizer (L2-SP with AdamW) applies its pull beside the optimizer's update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .bss import BSS
from .delta import DELTA, capture_feature_maps, channel_axis
from .delta_weights import delta_channel_weights
from .l2sp import L2SP, anchor_from
from .spec import FORMS, KINDS, L2SP_AUTO_GRID, RegularizerSpec, kind_module, parse_regularizer

__all__ = [
    "BSS",
    "DELTA",
    "FORMS",
    "KINDS",
    "L2SP",
    "L2SP_AUTO_GRID",
    "Regularizer",
    "RegularizerSpec",
    "anchor_from",
    "BuildContext",
    "build_regularizers",
    "capture_feature_maps",
    "channel_axis",
    "delta_channel_weights",
    "feature_map_layers",
    "needs_source_model",
    "parse_regularizer",
]


@runtime_checkable
class Regularizer(Protocol):
    def __call__(
        self,
        model: nn.Module,
        features: torch.Tensor,
        feature_maps: dict[str, torch.Tensor] | None = None,
        inputs=None,
    ) -> torch.Tensor: ...

    def no_weight_decay(self, model: nn.Module) -> set[str]: ...


def feature_map_layers(regs) -> list[str]:
    """Backbone layers whose outputs the regularizers read (capture them during the forward)."""
    names: list[str] = []
    for r in regs:
        if getattr(r, "needs_feature_maps", False):
            names += [n for n in r.layer_names if n not in names]
    return names


@dataclass
class BuildContext:
    """What a regularizer may need to be built (each kind's `build` reads the fields it uses)."""

    model: nn.Module
    anchor: dict[str, torch.Tensor] | None
    source_model: nn.Module | None
    layer_names: list[str] | None
    channel_weights: dict[str, torch.Tensor] | None
    optimizer: str
    source_bn: str


def needs_source_model(specs) -> bool:
    """True when a regularizer compares with the source model's features (DELTA)."""
    return any(getattr(kind_module(s.kind), "NEEDS_SOURCE_MODEL", False) for s in specs)


def build_regularizers(
    specs,
    model: nn.Module,
    anchor: dict[str, torch.Tensor] | None,
    source_model: nn.Module | None = None,
    layer_names: list[str] | None = None,
    channel_weights: dict[str, torch.Tensor] | None = None,
    *,
    optimizer: str = "adamw",
    source_bn: str = "running",
) -> list:
    """Instances for parsed specs (a list of :class:`RegularizerSpec`, one spec, or a spec string).

    ``anchor`` (see :func:`anchor_from`) is needed by ``l2sp``; ``source_model`` (a frozen copy of
    the source backbone) and ``layer_names`` by ``delta`` (``channel_weights`` and ``source_bn`` as
    in :class:`DELTA`). ``l2sp:auto`` must be resolved first (``spec.with_alpha(a)`` for each ``a``
    in ``L2SP_AUTO_GRID``). ``model`` is used to check that the anchor fits it. L2-SP without an
    explicit form is ``decoupled`` when ``optimizer`` is ``"adamw"`` and ``coupled`` otherwise.
    """
    if isinstance(specs, str):
        specs = parse_regularizer(specs)
    elif isinstance(specs, RegularizerSpec):
        specs = [specs]
    elif not isinstance(specs, Sequence):
        raise TypeError(f"specs must be a spec string or RegularizerSpec(s), got {type(specs).__name__}")
    ctx = BuildContext(model, anchor, source_model, layer_names, channel_weights, optimizer, source_bn)
    built = []
    for spec in specs:
        if spec.kind not in KINDS:
            raise ValueError(f"unknown regularizer kind '{spec.kind}'; known: {tuple(KINDS)}")
        built.append(kind_module(spec.kind).build(spec.params, ctx))
    return built
