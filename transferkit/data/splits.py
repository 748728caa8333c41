"""Stratified, seeded splits and few-shot sampling over (item, label) lists."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from ..errors import DataError


def shown(path) -> str:
    """A path (or name) as text that can always be printed and written to JSON: bytes of a name that
    is not UTF-8 (kept by os.fsdecode as lone surrogates) are shown escaped, e.g. caf\\xe9.png."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def check_utf8_path(path) -> None:
    """A DATA/--val/--test path whose name is not UTF-8 cannot be written into the run's files (JSON,
    YAML): an error that names it, before anything is read."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{shown(path)}: the path is not valid UTF-8; rename it (e.g. convmv -f latin1 "
                        "-t utf-8)") from None


@dataclass
class Example:
    x: str          # image path or text
    label: str
    ref: str = ""   # where it came from (path or file:line), for the split record


def by_class(items: list[Example]) -> dict[str, list[Example]]:
    groups: dict[str, list[Example]] = defaultdict(list)
    for it in items:
        groups[it.label].append(it)
    return dict(sorted(groups.items()))


def stratified_split(items: list[Example], fraction: float, seed: int,
                     min_per_class: int = 1) -> tuple[list[Example], list[Example]]:
    """Split off `fraction` of every class (at least `min_per_class`, leaving one for training);
    a fraction of 0 splits off nothing."""
    if fraction <= 0:
        return list(items), []
    rng = random.Random(seed)
    keep, held = [], []
    for label, group in by_class(items).items():
        group = list(group)
        rng.shuffle(group)
        n = max(min_per_class, round(len(group) * fraction)) if len(group) > 1 else 0
        n = min(n, len(group) - 1)
        held += group[:n]
        keep += group[n:]
    return keep, held


def sample_shots(items: list[Example], shots: int, seed: int) -> list[Example]:
    """Keep `shots` examples per class (all of a class that has fewer), seeded."""
    if shots < 1:
        raise DataError(f"--shots must be at least 1, got {shots}")
    rng = random.Random(seed)
    out = []
    for label, group in by_class(items).items():
        group = sorted(group, key=lambda e: e.ref or e.x)
        rng.shuffle(group)
        out += group[:shots]
    return out


def class_counts(items: list[Example]) -> dict[str, int]:
    return {k: len(v) for k, v in by_class(items).items()}


def cv_folds(labels, k: int = 5, seed: int = 0) -> list[tuple["np.ndarray", "np.ndarray"]]:
    """Stratified k-fold cross-validation over item labels: (train indices, held-out indices) per fold.

    Every item is held out in exactly one fold. `k` shrinks to the smallest class count (a class with
    3 labels can be spread over at most 3 folds); with a class of a single label no fold can test
    it, so there is no cross-validation at all: `[]`. Seeded, so every strategy compared on a task
    sees the same folds.
    """
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(labels)
    _, counts = np.unique(y, return_counts=True)
    k = min(int(k), int(counts.min())) if len(counts) else 0
    if k < 2:
        return []
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in skf.split(np.zeros(len(y)), y)]
