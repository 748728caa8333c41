"""YAML as transferkit reads it from users: the safe loader, without anchors and aliases.

An alias is a reference, so 430 bytes of nested aliases ("billion laughs") load as a small graph
that turns into billions of values as soon as anything walks it (a check, an error message, a
copy). Recipes, run config.yaml and adapt.yaml never need them; a file that uses one is refused,
with the line, before any value is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class AliasesRefused(yaml.YAMLError):
    """The file uses an anchor (&name) or an alias (*name)."""


class _PlainLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            raise AliasesRefused(f"uses YAML anchors/aliases (line {mark.line + 1}: "
                                 f"{'*' if isinstance(event, yaml.AliasEvent) else '&'}{event.anchor}), "
                                 "which transferkit does not read; write the values out in full")
        return super().compose_node(parent, index)


def load_plain_yaml(text: str) -> Any:
    """`yaml.safe_load` that raises AliasesRefused on the first anchor or alias."""
    return yaml.load(text, Loader=_PlainLoader)  # noqa: S506 - a SafeLoader subclass


def read_plain_yaml(path: str | Path) -> Any:
    return load_plain_yaml(Path(path).read_text(encoding="utf-8"))
