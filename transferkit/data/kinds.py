"""The input kinds an image model reads, in one registry: a kind is one module that builds an
`InputKind` (data/pictures.py: image files; data/signals.py: .wav and 1-D .npy; data/arrays.py:
.npy/.tif arrays) and one line in KINDS below. Nothing else names a kind.

What depends on the kind asks its entry: which files it claims, how a file is checked and read into
an unnormalised [C, H, W] tensor, how many channels the data has, what a run's config settles for it
(engine/input_kind.py: channel statistics, spectrogram parameters, test-time flipping), how the
report pictures it and how an export describes its input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .kind import InputKind
from .splits import DataError, Example


def _kinds() -> dict[str, InputKind]:
    from .arrays import ARRAY
    from .pictures import PICTURE
    from .signals import SIGNAL
    # the order decides between kinds that share an extension (.npy: a 1-D one is a signal)
    return {k.name: k for k in (PICTURE, SIGNAL, ARRAY)}


KINDS: dict[str, InputKind] = _kinds()
INPUT_EXTS = frozenset().union(*(k.exts for k in KINDS.values()))


def kind_of(path: str | Path) -> InputKind:
    """The kind of the file at `path`: by its extension and, where kinds share one, by its content."""
    p = Path(path)
    suffix = p.suffix.lower()
    for kind in KINDS.values():
        if suffix in kind.exts and kind.claims(p):
            return kind
    raise DataError(f"{path}: unknown input type '{suffix}' (known: {', '.join(sorted(INPUT_EXTS))})")


def input_kind(path: str | Path) -> str:
    """"image", "array" or "signal" (the name of the file's kind)."""
    return kind_of(path).name


def check_input(path: str | Path) -> str | None:
    """Why `path` cannot be read, or None. Only headers are read (cheap on large folders)."""
    p = Path(path)
    if not p.is_file():
        return "file not found"
    try:
        kind = kind_of(p)
        return kind.check(p) if kind.check else None
    except (ValueError, OSError, EOFError) as e:
        return f"unreadable {p.suffix.lower()} ({type(e).__name__})"


def load_input(path: str, channels: int, layout: str = "auto", spectrogram: str | None = None) -> torch.Tensor:
    """The unnormalised [channels, H, W] tensor of one array, signal or image file. One-channel data
    fed to a model with more channels is repeated (the naive baseline); other mismatches are errors."""
    x = kind_of(path).read(path, channels, layout, spectrogram)
    if x.shape[0] == 1 and channels > 1:
        x = x.repeat(channels, 1, 1)
    if x.shape[0] != channels:
        raise DataError(f"{path}: {x.shape[0]} channels, but the model reads {channels}; train with "
                        f"--in-chans {x.shape[0]} or give inputs with {channels} channels")
    return x


def channel_stats(items: list[Example], channels: int, layout: str = "auto",
                  spectrogram: str | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation over every value of every item (float64 sums)."""
    n = 0
    s = np.zeros(channels)
    ss = np.zeros(channels)
    for ex in items:
        x = load_input(ex.x, channels, layout, spectrogram).double().reshape(channels, -1)
        n += x.shape[1]
        s += x.sum(1).numpy()
        ss += (x * x).sum(1).numpy()
    if not n:
        raise DataError("no training inputs to compute channel statistics from")
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean ** 2, 0.0))
    std = np.where(std < 1e-8, 1.0, std)  # a constant channel is centred, not blown up
    return [round(float(v), 8) for v in mean], [round(float(v), 8) for v in std]


def peek_kind(data: str) -> str:
    """The kind of the first input of DATA (a folder of class folders or a CSV with a path column),
    without reading the rest; "image" when there is none (the data reader gives its own error)."""
    p = Path(data)
    first = None
    if p.is_dir():
        for d in sorted(x for x in p.iterdir() if x.is_dir() and not x.name.startswith(".")):
            first = next((f for f in sorted(d.rglob("*")) if f.suffix.lower() in INPUT_EXTS), None)
            if first:
                break
    elif p.suffix.lower() == ".csv" and p.is_file():
        import csv
        with open(p, newline="", encoding="utf-8") as f:
            row = next(csv.DictReader(f), None) or {}
        first = Path(row["path"]) if row.get("path") else None
        first = first if first is None or first.is_absolute() else p.parent / first
    if first is None or first.suffix.lower() not in INPUT_EXTS:
        return "image"
    return input_kind(first) if first.exists() else "image"
