"""Options shared by the commands that train (`train`, `compare`): one flag per TrainConfig field."""

from __future__ import annotations

import argparse
import dataclasses

EXIT_USAGE = 2


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_options(p: argparse.ArgumentParser, skip: set[str]) -> None:
    """One flag per TrainConfig field (the dataclass is the single source of the options)."""
    from ..config import TrainConfig
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        default = f.default
        if isinstance(default, bool):
            p.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            p.add_argument(_flag(f.name), dest=f.name, default=None, metavar=f.name.upper())
