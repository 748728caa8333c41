"""Options shared by the commands that train (`train`, `compare`): one flag per TrainConfig field,
its help text generated from the field's metadata (transferkit/config.py), so it cannot drift."""

from __future__ import annotations

import argparse
import dataclasses

EXIT_USAGE = 2


def _default_text(f: dataclasses.Field) -> str:
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    if f.default is None or f.default == "":
        return f.metadata.get("none") or "none"
    return str(f.default)


def field_help(f: dataclasses.Field) -> str:
    """`help (default: X; allowed: ...)` for one TrainConfig field."""
    from ..config import describe_allowed
    text = f"{f.metadata.get('help', '')} (default: {_default_text(f)}"
    allowed = describe_allowed(f)
    if allowed:
        text += f"; allowed: {allowed}"
    return (text + ")").replace("%", "%%")


def _metavar(f: dataclasses.Field) -> str:
    from ..config import is_float_field, is_int_field
    if f.metadata.get("choices"):
        return "{" + ",".join(f.metadata["choices"]) + "}"
    if is_int_field(f):
        return "N"
    if is_float_field(f):
        return "X"
    return f.name.upper()


def add_train_options(p: argparse.ArgumentParser, skip: set[str],
                      title: str = "training options (also valid as keys of a --config recipe)") -> None:
    """One flag per TrainConfig field (the dataclass is the single source of the options).
    Values are parsed and checked by `make_config`, so recipes, flags and the notebook API give the
    same errors."""
    from ..config import TrainConfig, flag
    group = p.add_argument_group(title)
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        if isinstance(f.default, bool):
            group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None, help=field_help(f))
        else:
            group.add_argument(flag(f.name), dest=f.name, default=None, metavar=_metavar(f),
                               help=field_help(f))


def config_help() -> str:
    from ..config import shipped_recipes
    return ("YAML recipe: a path, or the name of a shipped recipe (" + ", ".join(shipped_recipes())
            + "); flags override it (default: none)")
