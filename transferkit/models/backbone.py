"""The Backbone contract: what every model source returns (see shared/ARCHITECTURE.md).

Nothing downstream of `load_backbone` branches on architecture: heads, freezing, layer-wise learning
rates and L2-SP are written against these fields only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..store.safety import tensors_hash


@dataclass
class Stage:
    """One freezable unit of a backbone, from input to output order.

    `params` are parameter names relative to `Backbone.module`; `modules` are the names of the
    submodules the stage consists of (used to hook feature maps and to find its BatchNorm layers).
    """

    name: str
    params: list[str]
    modules: list[str] = field(default_factory=list)


@dataclass
class ImagePreprocess:
    mean: tuple[float, ...]  # one value per input channel (3 for RGB)
    std: tuple[float, ...]
    size: int
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    # arrays and signals (see transferkit/data/arrays.py): channel axis of .npy/.tif, log-mel params
    array_layout: str = "auto"
    spectrogram: str | None = None

    @property
    def channels(self) -> int:
        return len(self.mean)

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": "image", "mean": list(self.mean), "std": list(self.std), "size": self.size,
             "interpolation": self.interpolation, "crop_pct": self.crop_pct}
        if self.channels != 3 or self.spectrogram:
            d.update(channels=self.channels, array_layout=self.array_layout, spectrogram=self.spectrogram)
        return d


@dataclass
class TextPreprocess:
    tokenizer: Any
    max_length: int
    pooling: str = "mean"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "text", "max_length": self.max_length, "pooling": self.pooling,
                "tokenizer": type(self.tokenizer).__name__}


@dataclass
class SourceInfo:
    """Where the weights came from: the id the user typed, the resolved architecture and a hash."""

    id: str
    arch: str
    weights_hash: str
    pretrained: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "arch": self.arch, "weights_hash": self.weights_hash,
                "pretrained": self.pretrained}


@dataclass
class Backbone:
    """A pretrained source model with its output layer removed.

    `module(batch)` returns pooled features `[B, feature_dim]`. `source_head` keeps the removed
    output layer (e.g. the ImageNet classifier) with `source_classes`, so the source model can still
    be used as it is (`transferkit predict --model`) and scored with LEEP.
    """

    module: nn.Module
    feature_dim: int
    stages: list[Stage]
    preprocess: ImagePreprocess | TextPreprocess
    source: SourceInfo
    modality: str
    source_head: nn.Module | None = None
    source_classes: list[str] | None = None
    joint: Any = None  # a joint image-text model's text side (clip:), see transferkit/models/clip.py
    input_adaptation: dict | None = None  # the first conv adapted to N channels (models/channels.py)

    @property
    def num_stages(self) -> int:
        return len(self.stages)


def weights_hash(module: nn.Module) -> str:
    """A content hash of a module's state dict (names, shapes, dtypes and bytes), order-independent.

    Stored in every run (source.json) so that an anchor re-derived from the source id can be verified.
    """
    return tensors_hash(module.state_dict())


def stages_from_param_groups(module: nn.Module, groups: list[tuple[str, list[str]]]) -> list[Stage]:
    """Build stages from (name, param names) groups, attaching the submodules that own the params."""
    owner: dict[str, str] = {}
    for mod_name, mod in module.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owner[f"{mod_name}.{p_name}" if mod_name else p_name] = mod_name
    stages = []
    for name, params in groups:
        mods: list[str] = []
        for p in params:
            m = owner.get(p, "")
            if m not in mods:
                mods.append(m)
        stages.append(Stage(name=name, params=list(params), modules=mods))
    return stages


def check_stages_cover(module: nn.Module, stages: list[Stage]) -> None:
    """Every trainable parameter belongs to exactly one stage; a gap would silently never freeze."""
    names = [n for n, _ in module.named_parameters()]
    seen: dict[str, str] = {}
    for s in stages:
        for p in s.params:
            if p in seen:
                raise AssertionError(f"parameter {p} is in stages {seen[p]} and {s.name}")
            seen[p] = s.name
    missing = [n for n in names if n not in seen]
    if missing:
        raise AssertionError(f"parameters in no stage: {missing[:5]}{'...' if len(missing) > 5 else ''}")


def stage_output(module: nn.Module, stage: Stage) -> str:
    """The name of the submodule whose output is `stage`'s output (a block or stage, not a layer
    inside it): of the outermost submodules holding only this stage's parameters, the last one in
    the stage's order (`stage1` of a ResNet -> `layer1`; the last stage of an EfficientNet, made of
    `blocks.6`, `conv_head` and `bn2` -> `bn2`). Used to hook feature maps (DELTA)."""
    own = set(stage.params)
    mods = dict(module.named_modules())
    outer: list[str] = []
    for name in stage.modules:
        if not name:  # parameters of the root module itself (e.g. a ViT's position embedding)
            continue
        best, parts = name, name.split(".")
        for i in range(len(parts) - 1, 0, -1):
            ancestor = ".".join(parts[:i])
            held = {f"{ancestor}.{n}" for n, _ in mods[ancestor].named_parameters()}
            if not held <= own:
                break
            best = ancestor
        if best not in outer:
            outer.append(best)
    if not outer:
        raise ValueError(f"stage '{stage.name}' has no submodule whose output could be hooked")
    return outer[-1]
