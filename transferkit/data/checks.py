"""What the data reading found, said before training: skipped items, missing labels, short classes.

Skipped items (unreadable images, missing labels, files outside the class folders) are logged with a
count and listed in metrics.json (`skipped`); `--strict-images` makes an unreadable image fatal. A
class with fewer training items than `--shots` is named in a warning (metrics.json `warnings`);
`--strict-shots` makes it fatal.

What the data itself says is a warning (log and metrics.json `warnings`): one content (file bytes or
text) under two labels, labels that are one number written two ways ('1', '1.0'). `--val`/`--test`
data that is also in the training split (the same file or content) is an error in `train` unless
`--allow-overlap`; `evaluate RUN DATA` warns about items of the run's training split.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter, defaultdict

from ..store.checkpoint import data_file_digest
from .splits import DataError, shown


def _unreadable(skipped: list[str]) -> list[str]:
    return [s for s in skipped if "unreadable image" in s or "too many pixels" in s
            or "file not found" in s or "broken symbolic link" in s]


def short_classes(task, shots: int | None) -> dict[str, int]:
    if not shots:
        return {}
    counts = Counter(e.label for e in task.train)
    return {c: counts.get(c, 0) for c in task.classes if counts.get(c, 0) < shots}


def report_data_issues(task, cfg, log) -> None:
    """Log what was skipped and what reading found (`task.warnings`), warn about short classes (into
    `task.warnings`); raise under the strict flags, and on --val/--test data that is also in the
    training split unless --allow-overlap."""
    for flag, msg in task.overlap.items():
        if not getattr(cfg, "allow_overlap", False):
            raise DataError(f"{msg}; give {flag} data that is not in DATA, or pass --allow-overlap to score it anyway")
        if msg not in task.warnings:
            task.warnings.append(msg)
    for w in task.warnings:
        log(f"warning: {w}")
    bad = _unreadable(task.skipped)
    if bad and cfg.strict_images:
        raise DataError(f"{len(bad)} unreadable image(s) (--strict-images): " + "; ".join(bad[:5])
                        + ("; ..." if len(bad) > 5 else "") + ". Remove or replace them, or drop --strict-images "
                        "to skip them")
    missing = [s for s in task.skipped if "missing label" in s]
    if task.skipped:
        log(f"skipped {len(task.skipped)} item(s): {len(bad)} unreadable image(s), {len(missing)} missing "
            f"label(s) (empty, NaN, None, N/A, null), {len(task.skipped) - len(bad) - len(missing)} other "
            "(listed in metrics.json 'skipped')")
        for s in task.skipped[:20]:
            log(f"  skipped: {s}")
        if len(task.skipped) > 20:
            log(f"  ... and {len(task.skipped) - 20} more")
    short = short_classes(task, cfg.shots)
    if short:
        names = ", ".join(f"'{c}' ({n})" for c, n in short.items())
        msg = f"fewer training items than --shots {cfg.shots} in class(es) {names}"
        if cfg.strict_shots:
            raise DataError(f"{msg} (--strict-shots); add items to those classes or lower --shots")
        task.warnings.append(msg)
        log(f"warning: {msg}; they train on what they have")


# ------------------------------------------------------------------ what the data itself says

def content_key(ex, modality: str) -> str | None:
    """What an item holds, as a hash: the file's bytes (images, arrays, signals) or the text. Two
    items with one key are one item, whatever their names. None: the file cannot be read."""
    if modality != "image":
        return "text:" + hashlib.sha1(ex.x.strip().encode("utf-8", "surrogatepass")).hexdigest()
    try:
        return data_file_digest(ex.x)
    except OSError:
        return None


def _name(ex) -> str:
    return shown(ex.ref or ex.x)


def same_content_in_two_classes(items, modality: str) -> list[str]:
    """Warnings: one content (the same file bytes, or the same text) under two or more labels."""
    labels: dict[str, dict[str, object]] = defaultdict(dict)
    for ex in items:
        k = content_key(ex, modality)
        if k is not None:
            labels[k].setdefault(ex.label, ex)
    clashes = [by for by in labels.values() if len(by) > 1]
    if not clashes:
        return []
    shown_ = "; ".join(" = ".join(f"{_name(ex)} ('{c}')" for c, ex in sorted(by.items())) for by in clashes[:3])
    return [f"{len(clashes)} item(s) with the same content in two or more classes: {shown_}"
            + ("; ..." if len(clashes) > 3 else "") + " (the same file or text labelled differently)"]


def _number(label: str) -> float | None:
    try:
        v = float(label)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def numeric_twins(labels) -> list[str]:
    """Warnings: labels that are different text but the same number ('1', '1.0', '01'): labels are
    compared as written, so they are separate classes."""
    groups: dict[float, set[str]] = defaultdict(set)
    for label in set(labels):
        v = _number(label)
        if v is not None:
            groups[v].add(label)
    twins = [sorted(g) for g in groups.values() if len(g) > 1]
    return [f"labels {' and '.join(repr(t) for t in g)} are the same number written differently; labels are "
            "compared as written, so they are separate classes (write them one way if they are one class)"
            for g in sorted(twins)]


def overlap(train, other, modality: str) -> list:
    """The items of `other` that are also in `train`: the same file (path) or the same content."""
    paths = {os.path.realpath(ex.x) for ex in train} if modality == "image" else set()
    keys = {content_key(ex, modality) for ex in train} - {None}
    return [ex for ex in other
            if (modality == "image" and os.path.realpath(ex.x) in paths) or content_key(ex, modality) in keys]


def overlap_message(flag: str, where, shared: list, total: int) -> str:
    return (f"{flag} {shown(where)}: {len(shared)} of {total} item(s) are also in the training split (the same "
            f"file or the same content), e.g. {', '.join(_name(ex) for ex in shared[:3])}; scores on them "
            "measure memory, not generalisation")


def training_overlap(run_dir, cfg, items, modality: str, data) -> list[str]:
    """For `evaluate RUN DATA`: a warning when items of DATA are in the run's training split, found
    from RUN/splits.csv and the training data it names (when that is still where it was)."""
    import csv
    from pathlib import Path

    from .splits import Example
    record = Path(run_dir) / "splits.csv"
    source = Path(cfg.data) if cfg.data else None
    if not record.is_file() or source is None or not source.exists():
        return []
    with open(record, newline="", encoding="utf-8") as f:
        refs = [r["item"] for r in csv.DictReader(f) if r.get("split") == "train"]
    if modality == "image":
        base = source if source.is_dir() else source.parent
        train = [Example(str(p if (p := Path(r)).is_absolute() else base / p), "", r) for r in refs]
    else:
        from .text import read_text_items
        try:
            rows = read_text_items(source, text_col=cfg.text_col, label_col=cfg.label_col)[0]
        except DataError:
            return []
        wanted = set(refs)
        train = [ex for ex in rows if ex.ref in wanted]
    shared = overlap(train, items, modality)
    if not shared:
        return []
    return [overlap_message("DATA", data, shared, len(items)).replace("the training split", "the run's training split")]
