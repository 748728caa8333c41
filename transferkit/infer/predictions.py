"""What `predict` reads and writes: the inputs named on the command line expanded to items, and one
row per item with its top-k labels. Shared by predict, serve and zero-shot prediction."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import DataError, Example
from ..data.kinds import INPUT_EXTS


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _is_file(p: Path) -> bool:
    # a sentence to classify is not a path: one longer than NAME_MAX makes stat() raise
    try:
        return p.is_file()
    except OSError:
        return False


def expand_inputs(inputs: list[str], modality: str, text_col: str = "text") -> list[Example]:
    """The items to predict on: image files and the images under folders, or (text) strings and the
    lines/rows of .txt/.csv/.tsv/.jsonl files."""
    out = []
    for s in inputs:
        p = Path(s)
        if modality == "image":
            if p.is_dir():
                out += [Example(str(f), "") for f in sorted(p.rglob("*"))
                        if f.suffix.lower() in INPUT_EXTS and f.is_file()]
            elif p.is_file():
                out.append(Example(str(p), ""))
            else:
                raise DataError(f"input not found: {p}")
        elif _is_file(p) and p.suffix.lower() in (".txt",):
            from ..data.text import decode_lines
            out += [Example(line.strip(), "") for line in decode_lines(p) if line.strip()]
        elif _is_file(p) and p.suffix.lower() in (".csv", ".tsv", ".jsonl"):
            from ..data.text import read_text_items
            out += read_text_items(p, text_col=text_col, label_col=None)[0]
        else:
            out.append(Example(s, ""))
    if not out:
        raise DataError("no inputs to predict on")
    return out


def error_row(e: Example, reason: str) -> dict:
    return {"input": e.x, "label": None, "probability": None, "top": [], "error": reason}


def topk_rows(items, probs: torch.Tensor, classes: list[str], top_k: int, *,
              probabilities: bool = False) -> list[dict]:
    """One prediction row per item: the top-k labels with their probabilities (an error row where the
    model's outputs are not finite). `probabilities`: also every class's probability, as
    `probabilities` {class: p} in the classes' order (what `predict --out` writes)."""
    k = max(1, min(top_k, len(classes)))
    vals, idx = probs.topk(k, dim=1)
    finite = torch.isfinite(probs).all(dim=1)
    rows = []
    for e, v, i, ok, p in zip(items, vals, idx, finite, probs):
        if not ok:
            rows.append(error_row(e, "the model produced NaN/infinite outputs for this input"))
            continue
        row = {"input": e.x, "label": classes[int(i[0])], "probability": round(float(v[0]), 6),
               "top": [{"label": classes[int(j)], "probability": round(float(q), 6)} for q, j in zip(v, i)]}
        if probabilities:
            row["probabilities"] = {c: round(float(q), 6) for c, q in zip(classes, p.tolist())}
        rows.append(row)
    return rows
