"""Inputs with or without labels, for the label-free commands (`embed`, `cluster`).

Labelled data reads as everywhere else (class folders, `path,label` CSV, text with a label column).
Unlabelled data is also accepted: a folder of images with no class folders, an image CSV with only a
`path` column, text without a label column, or a `.txt` file with one text per line. Unlabelled
items get the label "".
"""

from __future__ import annotations

import csv
from pathlib import Path

from .images import IMAGE_EXTS, check_image, read_image_items
from .splits import DataError, Example
from .text import decode_lines, is_text_file, read_text_items


def input_modality(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise DataError(f"data not found: {p}")
    if p.is_dir():
        return "image"
    if is_text_file(p) or p.suffix.lower() == ".txt":
        return "text"
    if p.suffix.lower() == ".csv":
        with open(p, encoding="utf-8", errors="replace") as f:
            header = [h.strip().strip('"').lower() for h in f.readline().strip().split(",")]
        return "image" if "path" in header else "text"
    raise DataError(f"cannot tell what {p} holds: give a folder of images (class folders optional), "
                    "a CSV with a 'path' column (images) or a 'text' column, a .tsv, .jsonl or .txt")


def _unlabelled_images(root: Path) -> list[Example]:
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(root).parts))
    return [Example(str(f), "", str(f.relative_to(root))) for f in files]


def _image_csv(path: Path) -> list[Example]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise DataError(f"{path}: no 'path' column; an image CSV needs a header 'path[,label]'")
        rows = list(reader)
    out = []
    for row in rows:
        p = Path(row["path"])
        out.append(Example(str(p if p.is_absolute() else path.parent / p), (row.get("label") or "").strip(),
                           row["path"]))
    return out


def read_inputs(path: str | Path, *, text_col: str = "text", label_col: str = "label"
                ) -> tuple[str, list[Example], list[str]]:
    """(modality, items, skipped): labelled where the data carries labels, else labels ""."""
    p = Path(path)
    modality = input_modality(p)
    if modality == "image":
        has_classes = p.is_dir() and any(d.is_dir() and not d.name.startswith(".") for d in p.iterdir())
        loose = p.is_dir() and any(f.is_file() and f.suffix.lower() in IMAGE_EXTS for f in p.iterdir())
        if has_classes and not loose:
            items, skipped = read_image_items(p)
            return modality, items, skipped
        items = _unlabelled_images(p) if p.is_dir() else _image_csv(p)
        good, skipped = [], []
        for ex in items:
            reason = check_image(Path(ex.x))
            (skipped.append(f"{ex.x}: {reason}") if reason else good.append(ex))
        if not good:
            raise DataError(f"no readable images in {p}" + (f" ({len(skipped)} unreadable)" if skipped else ""))
        return modality, good, skipped
    if p.suffix.lower() == ".txt":
        items = [Example(line.strip(), "", f"{p.name}:{n}") for n, line in enumerate(decode_lines(p), 1)
                 if line.strip()]
        if not items:
            raise DataError(f"{p}: no non-empty lines")
        return modality, items, []
    try:
        items, skipped = read_text_items(p, text_col=text_col, label_col=label_col)
    except DataError as e:
        if f"no '{label_col}' column" not in str(e):
            raise
        items, skipped = read_text_items(p, text_col=text_col, label_col=None)
    return modality, items, skipped
