"""The two domains of an `adapt` run: labelled source (train + a held-out source validation split),
unlabelled target, and optionally labelled target test data used only for reporting."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ..data import DataError, Example, detect_modality, read_items, stratified_split
from ..data.images import IMAGE_EXTS, check_image
from .config import AdaptConfig


@dataclass
class Domains:
    classes: list[str]
    source_train: list[Example]
    source_val: list[Example]
    target: list[Example]                      # labels blanked: never seen by the loop
    target_test: list[Example] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def split_record(self) -> list[dict]:
        parts = (("source_train", self.source_train), ("source_val", self.source_val),
                 ("target", self.target), ("target_test", self.target_test))
        return [{"split": name, "item": ex.ref or ex.x, "label": ex.label} for name, part in parts for ex in part]


def read_unlabelled_images(path: str | Path) -> tuple[list[Example], list[str]]:
    """Every image under a folder (class folders or not: labels are not read), or the `path` column
    of a CSV. Unreadable images are skipped and reported."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        items = [Example(str(f), "", str(f.relative_to(p))) for f in files]
    elif p.is_file() and p.suffix.lower() == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "path" not in (reader.fieldnames or []):
                raise DataError(f"{p}: no 'path' column; an unlabelled image CSV needs a header with 'path'")
            items = [Example(str(q if (q := Path(r["path"])).is_absolute() else p.parent / q), "", r["path"])
                     for r in reader if r.get("path")]
    else:
        raise DataError(f"target data not found: {p} (give a folder of images or a CSV with a 'path' column)")
    good, skipped = [], []
    for ex in items:
        reason = check_image(Path(ex.x))
        (skipped.append(f"{ex.x}: {reason}") if reason else good.append(ex))
    if not good:
        raise DataError(f"no readable images in {p}" + (f" ({len(skipped)} unreadable)" if skipped else ""))
    return good, skipped


def load_domains(cfg: AdaptConfig) -> Domains:
    for name, path in (("--source", cfg.source), ("--target", cfg.target)):
        if not path:
            raise DataError(f"adapt needs {name} DATA")
    if detect_modality(cfg.source) != "image":
        raise DataError(f"{cfg.source}: adapt works on images (a folder of class folders or a path,label CSV)")
    items, skipped = read_items(cfg.source, "image")
    classes = sorted({e.label for e in items})
    if len(classes) < 2:
        raise DataError(f"{cfg.source}: found {len(classes)} class; classification needs at least 2")
    train, val = stratified_split(items, cfg.val_fraction, cfg.seed) if cfg.val_fraction else (items, [])
    target, s = read_unlabelled_images(cfg.target)
    skipped += s
    test: list[Example] = []
    if cfg.target_test:
        test, s = read_items(cfg.target_test, "image")
        skipped += s
        unknown = sorted({e.label for e in test} - set(classes))
        if unknown:
            raise DataError(f"--target-test {cfg.target_test}: label(s) {', '.join(unknown[:5])} are not "
                            f"source classes ({', '.join(classes)}); the target must share the source's classes")
    return Domains(classes, train, val, target, test, skipped)
