"""Data: labelled images and texts, splits, few-shot sampling and transforms.

`load_task` turns the user's DATA (+ optional --val/--test) into train/val/test splits of one
modality, with every choice (seed, fractions, shots) recorded so a run can be reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .images import ImageDataset, build_transforms, open_rgb, read_image_items
from .splits import DataError, Example, class_counts, shown, cv_folds, sample_shots, stratified_split
from .text import TextCollator, TextDataset, is_text_file, read_text_items

__all__ = ["DataError", "Example", "Task", "load_task", "read_items", "ImageDataset", "TextDataset",
           "TextCollator", "build_transforms", "open_rgb", "class_counts", "sample_shots",
           "stratified_split", "detect_modality", "cv_folds", "FEW_LABELS_PER_CLASS"]

# At or below this many labelled training examples per class (on average), no labels are spent on a
# validation carve-out by default: choices are made by cross-validation over the training labels and
# the final model learns from all of them (see load_task, and transferkit/choose/cv.py).
FEW_LABELS_PER_CLASS = 20


@dataclass
class Task:
    modality: str
    classes: list[str]
    train: list[Example]
    val: list[Example]
    test: list[Example]
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # --val/--test data that is also in the training split: flag -> one-line description
    # (an error in `train` unless --allow-overlap, data/checks.py)
    overlap: dict[str, str] = field(default_factory=dict)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def split_record(self) -> list[dict]:
        return [{"split": name, "item": ex.ref or ex.x, "label": ex.label}
                for name, part in (("train", self.train), ("val", self.val), ("test", self.test))
                for ex in part]


def detect_modality(path: str | Path) -> str:
    """A folder is images; a .tsv/.jsonl is text; a .csv is images if it has a `path` column."""
    p = Path(path)
    if p.is_dir():
        return "image"
    if is_text_file(p):
        return "text"
    if p.suffix.lower() == ".csv" and p.is_file():
        with open(p, encoding="utf-8", errors="replace") as f:
            header = f.readline().strip().lower().split(",")
        return "image" if "path" in [h.strip().strip('"') for h in header] else "text"
    if not p.exists():
        raise DataError(f"data not found: {p}")
    raise DataError(f"cannot tell what {p} holds: give a folder of class folders, a CSV with "
                    "'path,label' (images) or 'text,label' columns, a .tsv or a .jsonl")


def read_items(path: str | Path, modality: str, *, text_col: str = "text", label_col: str = "label",
               warnings_out: list[str] | None = None) -> tuple[list[Example], list[str]]:
    """(examples, skipped); what is worth a warning is added to `warnings_out` (see `data_warnings`)."""
    if modality == "image":
        items, skipped = read_image_items(path, warnings_out)
    else:
        items, skipped = read_text_items(path, text_col=text_col, label_col=label_col)
    if warnings_out is not None:
        warnings_out += data_warnings(items, modality)
    return items, skipped


def data_warnings(items: list[Example], modality: str) -> list[str]:
    """Labels that are one number written two ways; one content under two labels."""
    from .checks import numeric_twins, same_content_in_two_classes
    return numeric_twins(e.label for e in items) + same_content_in_two_classes(items, modality)


def load_task(data: str | Path, *, val: str | None = None, test: str | None = None,
              shots: int | None = None, seed: int = 0, val_fraction: float | None = 0.2,
              test_fraction: float = 0.2, modality: str | None = None, text_col: str = "text",
              label_col: str = "label") -> Task:
    """Read DATA and make the splits.

    Without --test, a stratified `test_fraction` of DATA is held out first; without --val, a
    stratified `val_fraction` of the rest. `shots` then keeps N training examples per class; the
    held-out splits are made before sampling shots, so they do not depend on N.

    `val_fraction=None` means: no validation carve-out when the training set has few labels
    (at most FEW_LABELS_PER_CLASS per class on average, counting what `shots` keeps), else 0.2.
    With few labels a carve-out would take one label in five from training and still be too small
    to choose by; choices are then made by cross-validation over the training labels instead.
    """
    modality = modality or detect_modality(data)
    warnings: list[str] = []
    items, skipped = read_items(data, modality, text_col=text_col, label_col=label_col, warnings_out=warnings)
    classes = sorted({e.label for e in items})
    if len(classes) < 2:
        raise DataError(f"{data}: found {len(classes)} class ({', '.join(classes)}); "
                        "classification needs at least 2")
    if test:
        test_items, s = read_items(test, modality, text_col=text_col, label_col=label_col, warnings_out=warnings)
        skipped += s
    else:
        items, test_items = stratified_split(items, test_fraction, seed)
        if not test_items and test_fraction > 0:
            raise DataError(f"{data}: too few items to hold out a test split: every class has a single item, "
                            "which it needs for training (at least 2 per class); add items, or give --test")
    if val:
        val_items, s = read_items(val, modality, text_col=text_col, label_col=label_col, warnings_out=warnings)
        skipped += s
    else:
        if val_fraction is None:
            val_fraction = 0.0 if few_labels(items, shots) else 0.2
        items, val_items = stratified_split(items, val_fraction, seed + 1)
    for name, part in (("--val", val_items), ("--test", test_items)):
        unknown = sorted({e.label for e in part} - set(classes))
        if unknown:
            raise DataError(f"{name} data has labels not in the training data: {', '.join(unknown[:5])}")
    train = sample_shots(items, shots, seed) if shots else items
    from .checks import numeric_twins, overlap, overlap_message
    labels = {e.label for part in (items, val_items, test_items) for e in part}
    warnings += [w for w in numeric_twins(labels) if w not in warnings]
    found = {}
    for flag, where, part in (("--val", val, val_items), ("--test", test, test_items)):
        shared = overlap(items, part, modality)
        if shared and where:
            found[flag] = overlap_message(flag, where, shared, len(part))
        elif shared:  # DATA holds one content twice, and the split put one copy on each side
            warnings.append(f"{len(shared)} {flag[2:]} item(s) have the same content as a training item (repeated "
                            f"in {shown(data)}), e.g. {shown(shared[0].ref or shared[0].x)}")
    return Task(modality, classes, train, val_items, test_items, skipped, list(dict.fromkeys(warnings)), found)


def few_labels(items: list[Example], shots: int | None = None) -> bool:
    """Whether a labelled pool (after keeping `shots` per class) has few labels per class."""
    counts = class_counts(items)
    kept = sum(min(c, shots) if shots else c for c in counts.values())
    return kept <= FEW_LABELS_PER_CLASS * max(1, len(counts))
