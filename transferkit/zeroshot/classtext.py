"""Class descriptions for `--class-text FILE`: which words stand for each class.

A CSV/TSV with a header naming `class` and `text` columns (or any two columns: class first, then its
words), or a JSON object {"class": "words", ...}. A class without a row uses nothing silently: it is
an error that names the file and the class.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..data import DataError


def read_class_text(path: str | Path, classes: list[str] | None = None) -> dict[str, str]:
    """{class: description}; with `classes`, every one of them must have a non-empty description."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--class-text file not found: {p}")
    raw = p.read_text(encoding="utf-8-sig")
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: not valid JSON ({e.msg} at line {e.lineno}); expected an object "
                            '{"class": "description", ...}') from e
        if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
            raise DataError(f'{p}: expected a JSON object {{"class": "description", ...}} of strings')
        table = {str(k).strip(): v.strip() for k, v in obj.items()}
    else:
        table = _read_table(p, raw)
    empty = [c for c, t in table.items() if not t]
    if empty:
        raise DataError(f"{p}: class '{empty[0]}' has an empty description; give it a few words")
    if classes is not None:
        missing = [c for c in classes if c not in table]
        if missing:
            raise DataError(f"{p}: no description for class '{missing[0]}'"
                            + (f" (and {len(missing) - 1} more: {', '.join(missing[1:4])})" if len(missing) > 1 else "")
                            + f"; add a row '{missing[0]},<words>' (the file names: "
                            + f"{', '.join(sorted(table)[:6]) or 'no class'})")
    return table


def _read_table(p: Path, raw: str) -> dict[str, str]:
    rows = list(csv.reader(io.StringIO(raw, newline=""), delimiter="\t" if p.suffix.lower() == ".tsv" else ","))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{p}: empty; expected rows 'class,description'")
    head = [c.strip().lower() for c in rows[0]]
    if "class" in head and "text" in head:
        ci, ti, body, first = head.index("class"), head.index("text"), rows[1:], 2
    else:
        ci, ti, body, first = 0, 1, rows, 1
    table: dict[str, str] = {}
    for n, r in enumerate(body, start=first):
        if len(r) <= max(ci, ti):
            raise DataError(f"{p}:{n}: expected 'class,description', got {','.join(r)!r}")
        table[r[ci].strip()] = r[ti].strip()
    return table
