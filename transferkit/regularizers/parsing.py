"""The pieces every regularizer's `parse` is written with. A `BadPart` says what is wrong with one
`+`-separated part; spec.py adds the part and the accepted forms to the message."""

from __future__ import annotations

import math


class BadPart(ValueError):
    """Why a part of a --reg string is wrong (one phrase, no part and no forms)."""


def number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadPart(f"{name} must be a number, got '{text}'") from None
    if not math.isfinite(value) or value < 0:
        raise BadPart(f"{name} must be a finite number >= 0, got '{text}'")
    return value


def count(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadPart(f"{name} must be a whole number >= 1, got '{text}'") from None
    if value < 1:
        raise BadPart(f"{name} must be a whole number >= 1, got '{text}'")
    return value
