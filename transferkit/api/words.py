"""Errors of the notebook API in its own names: a message written for the CLI (`--overwrite`,
`'batch_size' (--batch-size)`, `transferkit train --resume RUN`) reworded for a keyword argument."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re

from ..config import TrainConfig

_BOOL_FIELDS = {f.name for f in dataclasses.fields(TrainConfig) if f.type in ("bool", bool)} | {"resume"}
_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def api_words(message: str) -> str:
    """A message written for the CLI in the API's names: `--overwrite` -> `overwrite=True`,
    `'batch_size' (--batch-size)` -> `'batch_size'`, `--out runs/x` -> `out='runs/x'`."""
    message = re.sub(r"transferkit train --resume (\S+?)(['\")]?)(?=[\s,;)]|$)",
                     lambda m: f"transferkit.fit(out='{m.group(1)}', resume=True){m.group(2)}", message)
    message = re.sub(r"('\w+') \(--[\w-]+\)", r"\1", message)

    def flag(m: re.Match) -> str:
        name, value = m.group(1).replace("-", "_"), m.group(2)
        negated = name.startswith("no_") and name[3:] in _BOOL_FIELDS
        name = name[3:] if negated else name
        if name in _BOOL_FIELDS:
            return f"{name}={not negated}" + (value or "")
        if name not in _FIELDS:
            return m.group(0)
        if value and ("/" in value or os.sep in value):  # a path after the flag: its value
            return f"{name}='{value.strip()}'"
        return name + (value or "")
    return re.sub(r"--([a-z][a-z0-9-]*)( [^\s;,]+)?", flag, message)


@contextlib.contextmanager
def api_errors():
    """Errors raised inside speak the API's names (the same exception, its message reworded)."""
    try:
        yield
    except (ValueError, OSError, RuntimeError) as e:
        if len(e.args) == 1 and isinstance(e.args[0], str):
            e.args = (api_words(e.args[0]),)
        raise
