"""Data given as Python objects (a list of (x, label) pairs, a pandas DataFrame) written out as the
files `train` reads (an image CSV `path,label`, a text CSV `text,label`), so that a run made from a
notebook is reproducible like any other: its config.yaml names real files.

Images given as PIL images are saved as PNG (lossless); images given as paths are referenced, not
copied.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .images import IMAGE_EXTS
from .splits import DataError

IMAGE_COLUMNS = ("path", "image", "file", "filepath")


def is_in_memory(data: Any) -> bool:
    """True for data that must be written out first (anything but a path)."""
    return data is not None and not isinstance(data, (str, Path))


def materialise(data: Any, dest: Path, name: str = "data", *, text_col: str = "text",
                label_col: str = "label") -> tuple[str, str]:
    """Write `data` under `dest` and return (path of the CSV, modality).

    `data`: a list/tuple of (x, label) pairs where x is a PIL image, an image path or a text; or a
    DataFrame with `label_col` and either `text_col` (texts) or a path/image column (images)."""
    pairs = _pairs(data, text_col=text_col, label_col=label_col)
    if not pairs:
        raise DataError(f"{name}: no items (give (x, label) pairs or a DataFrame with rows)")
    modality = _modality([x for x, _ in pairs], name)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{name}.csv"
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if modality == "text":
            w.writerow([text_col, label_col])  # the run reads them with its own column names
            w.writerows((str(x), _label(y, i, name)) for i, (x, y) in enumerate(pairs))
        else:
            w.writerow(["path", "label"])
            for i, (x, y) in enumerate(pairs):
                w.writerow([_image_path(x, dest / name, i), _label(y, i, name)])
    return str(out), modality


def _pairs(data: Any, *, text_col: str, label_col: str) -> list[tuple[Any, Any]]:
    if hasattr(data, "columns") and hasattr(data, "itertuples"):  # a pandas DataFrame
        cols = [str(c) for c in data.columns]
        if label_col not in cols:
            raise DataError(f"DataFrame has no '{label_col}' column (columns: {', '.join(cols)}); "
                            "pass label_col='...'")
        x_col = text_col if text_col in cols else next((c for c in IMAGE_COLUMNS if c in cols), None)
        if x_col is None:
            raise DataError(f"DataFrame has neither a '{text_col}' column (texts) nor one of "
                            f"{', '.join(IMAGE_COLUMNS)} (images); columns: {', '.join(cols)}")
        return list(zip(data[x_col].tolist(), data[label_col].tolist()))
    try:
        pairs = [tuple(p) for p in data]
    except TypeError:
        raise DataError(f"cannot use {type(data).__name__} as data: give a path, a list of "
                        "(x, label) pairs or a pandas DataFrame") from None
    bad = next((i for i, p in enumerate(pairs) if len(p) != 2), None)
    if bad is not None:
        raise DataError(f"item {bad} is not an (x, label) pair: {pairs[bad]!r:.80}")
    return pairs


def _is_image(x: Any) -> bool:
    if hasattr(x, "save") and hasattr(x, "mode"):  # a PIL image
        return True
    if isinstance(x, (str, Path)) and Path(x).suffix.lower() in IMAGE_EXTS:
        try:
            return Path(x).is_file()
        except OSError:
            return False
    return False


def _modality(xs: list[Any], name: str) -> str:
    kinds = {"image" if _is_image(x) else "text" if isinstance(x, str) else type(x).__name__ for x in xs}
    if len(kinds) == 1 and kinds <= {"image", "text"}:
        return kinds.pop()
    if kinds <= {"image", "text"}:
        raise DataError(f"{name}: mixes images and texts (or names image files that do not exist); "
                        "give one kind")
    other = sorted(kinds - {"image", "text"})[0]
    raise DataError(f"{name}: an x of type {other} is neither a PIL image, an image path nor a text")


def _label(y: Any, i: int, name: str) -> str:
    text = "" if y is None else str(y).strip()
    if not text:
        raise DataError(f"{name}: item {i} has no label")
    return text


def _image_path(x: Any, folder: Path, i: int) -> str:
    if isinstance(x, (str, Path)):
        return str(Path(x).resolve())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{i:06d}.png"
    x.save(path, format="PNG")
    return str(path.resolve())
