"""Reading CSV/TSV tables strictly: every row is the header's width or an error naming its line.

What spreadsheet tools and hand edits put in tables, and what happens to it here:
- a byte-order mark (Excel's "CSV UTF-8"): removed;
- bytes that are not UTF-8 (a Latin-1 export): an error with the line and the `iconv` fix;
- a quote opened and never closed, which would swallow the rows after it into one field: an error
  at the line where the quote opened (the reader is strict, and every row must have the header's
  number of fields);
- another delimiter on some lines (`;` or tabs in a CSV): those rows have the wrong number of
  fields, an error naming the line;
- very long fields: accepted up to 16 M characters, beyond that an error naming the line;
- blank lines: not rows.
Label values that spreadsheet tools write for "no value" (empty, NaN, None, N/A, null) are missing
labels (`is_missing_label`): the row is skipped and counted, never a class of its own; a class folder
with such a name is missing the same way (data/images.py). Labels are compared as written, in Unicode
NFC ("café" typed on macOS and on Linux is one class); JSONL numbers are written as Python writes them
(1 -> "1", 1.0 -> "1.0"), and labels that are one number written two ways are warned about
(data/checks.py `numeric_twins`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .splits import DataError

FIELD_LIMIT = 1 << 24
_MISSING = {"", "nan", "none", "n/a", "null"}


def is_missing_label(value: str | None) -> bool:
    return value is None or str(value).strip().lower() in _MISSING


def decode_text(path: Path) -> str:
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes that are not UTF-8 ({raw[e.start:e.start + 4]!r}) on line "
                        f"{line}; save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from e


def decode_table(path: Path, delimiter: str = ",", text: str | None = None
                 ) -> tuple[list[tuple[int, dict]], list[str]]:
    """(line number, row) pairs and the column names of a CSV/TSV file."""
    path = Path(path)
    text = decode_text(path) if text is None else text
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    # newline="" keeps newlines inside quoted fields; line_num counts physical lines
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    kind = "tab-separated (TSV)" if delimiter == "\t" else "comma-separated (CSV)"
    rows: list[tuple[int, dict]] = []
    first, cols = 1, None
    try:
        for rec in reader:
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                first = reader.line_num + 1
                continue
            if cols is None:
                cols = [c.strip() for c in rec]
                if len(set(cols)) != len(cols):
                    dup = sorted({c for c in cols if cols.count(c) > 1})
                    raise DataError(f"{path}:{first}: the header names {', '.join(map(repr, dup))} twice")
            elif len(rec) != len(cols):
                span = f"lines {first}-{reader.line_num}" if reader.line_num > first else f"line {first}"
                raise DataError(f"{path}:{first}: {len(rec)} fields on {span}, the header has {len(cols)}; "
                                f"the file is read as {kind}: check for another delimiter on that line, "
                                "or a quote (\") opened and not closed")
            else:
                rows.append((first, dict(zip(cols, rec))))
            first = reader.line_num + 1
    except csv.Error as e:
        hint = ("a quote (\") opened here is never closed, or a field is longer than 16 M characters"
                if "end of data" in str(e) or "field limit" in str(e) else "check the quoting on that line")
        raise DataError(f"{path}:{first}: not readable as {kind} ({e}); {hint}") from e
    return rows, cols or []
