"""The `transferkit` command: `main` parses and dispatches; `choose` holds compare/rank; `options`
the flags shared by the commands that train."""

from .main import main

__all__ = ["main"]
