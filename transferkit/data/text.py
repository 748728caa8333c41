"""Text data: CSV, TSV or JSONL with a text column and a label column; dynamic padding per batch."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

from torch.utils.data import Dataset

from .splits import DataError, Example, check_utf8_path
from .tables import decode_table, decode_text, is_missing_label

TEXT_EXTS = {".csv", ".tsv", ".jsonl", ".json", ".txt"}


def is_text_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in {".tsv", ".jsonl", ".json"}


def _decode(path: Path) -> str:
    return decode_text(path)


def decode_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (split on newlines only); bad bytes are an error naming the line."""
    # not str.splitlines(): it also splits on U+2028, form feeds etc., which JSON strings may hold raw
    return [line.rstrip("\r") for line in _decode(Path(path)).split("\n")]


def _read_rows(path: Path, text: str) -> tuple[list[tuple[int, dict]], list[str]]:
    """(line number, row) pairs and the column names of a CSV/TSV/JSONL text."""
    rows: list[tuple[int, dict]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: line {n} is not valid JSON ({e.msg}); expected one "
                                "object per line (JSONL)") from e
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: line {n} is a JSON {type(row).__name__}, not an object; "
                                "expected one object per line (JSONL)")
            rows.append((n, row))
        return rows, sorted({k for _, r in rows for k in r})
    return decode_table(path, "\t" if path.suffix.lower() == ".tsv" else ",", text)


def read_text_items(path: str | Path, text_col: str = "text", label_col: str | None = "label",
                    ) -> tuple[list[Example], list[str]]:
    """Read (text, label) rows. Empty texts are skipped and reported in the second list.

    `label_col=None` reads unlabelled texts (label "").
    """
    path = Path(path)
    check_utf8_path(path)
    if not path.is_file():
        raise DataError(f"text data not found: {path}")
    rows, cols = _read_rows(path, _decode(path))
    for need in filter(None, (text_col, label_col)):
        if need not in cols:
            flag = "--text-col" if need == text_col else "--label-col"
            raise DataError(f"{path}: no '{need}' column (columns: {', '.join(cols) or 'none'}); "
                            f"name the right one with {flag}")
    items, skipped = [], []
    for n, row in rows:
        text = str(row.get(text_col) or "").strip()
        label = "" if label_col is None else str(row.get(label_col) if row.get(label_col) is not None else "").strip()
        if not text:
            skipped.append(f"{path}:{n}: empty text")
            continue
        if label_col is not None and is_missing_label(label):
            skipped.append(f"{path}:{n}: missing label ({label!r})")
            continue
        items.append(Example(text, unicodedata.normalize("NFC", label), f"{path.name}:{n}"))
    if not items:
        raise DataError(f"{path}: no usable rows" + (f" ({len(skipped)} skipped)" if skipped else ""))
    return items, skipped


class TextDataset(Dataset):
    def __init__(self, items: list[Example], class_to_idx: dict[str, int]):
        self.items = items
        self.class_to_idx = class_to_idx

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        ex = self.items[i]
        return ex.x, self.class_to_idx.get(ex.label, -1)


class TextCollator:
    """Tokenise a batch, padded to its longest member (not to max_length)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, batch):
        import torch
        texts = [t for t, _ in batch]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return dict(enc), torch.tensor([y for _, y in batch])
