"""What an input kind is: the entry a kind's module builds for the registry (data/kinds.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch


def _claims_all(path: Path) -> bool:
    return True


def _no_settling(spectrogram: str | None) -> dict:
    return {}


@dataclass(frozen=True)
class InputKind:
    name: str
    exts: frozenset[str]
    # (path, channels, array layout, spectrogram) -> the unnormalised [C, H, W] float tensor
    read: Callable[[str, int, str, str | None], torch.Tensor]
    # (first training item, --in-chans or None, array layout) -> the data's channel count
    data_channels: Callable[[str, int | None, str], int]
    # (first training item) -> what the data is, in a message ("arrays, x.npy")
    words: Callable[[str], str]
    # among the kinds that list a file's extension, whether this one takes the file (.npy: by its shape)
    claims: Callable[[Path], bool] = _claims_all
    # why a file cannot be read (headers only), or None
    check: Callable[[Path], str | None] | None = None
    # further config values the kind settles, from the given --spectrogram (signals: the full string, no TTA)
    settle: Callable[[str | None], dict] = _no_settling
    # a picture file (Pillow; cropped and augmented like a photo) rather than values resized whole
    picture: bool = False
    # how the report shows one input: (path, the model's preprocessing) -> [C, H, W] values, and a colour map
    preview: Callable | None = field(default=None, compare=False)
    colormap: str | None = None
    # how an export feeds the model (ship/timm_format.py), formatted with the preprocessing record
    feed: str = ""
