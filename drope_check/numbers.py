"""Small predicates on JSON / TOML numbers, shared by the claim files, the bands, the validator and the
upstream import (one definition each, so the modules agree on what a number is)."""

from __future__ import annotations

import math
from typing import Any


def is_number(x: Any) -> bool:
    """An int or float, never a bool (``True`` is an ``int`` to Python, never a measurement)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def flatten(x: Any) -> list[float]:
    """A number or a (nested) list / tuple of numbers as one flat list of floats."""
    if isinstance(x, (list, tuple)):
        out: list[float] = []
        for item in x:
            out.extend(flatten(item))
        return out
    return [float(x)]


def first_non_finite(x: Any) -> float | None:
    """The first NaN or infinity in a number or (nested) list of numbers, or None when all are finite."""
    for v in flatten(x):
        if not math.isfinite(v):
            return v
    return None


def has_non_finite_float(x: Any) -> bool:
    """Whether a value or (nested) list holds a NaN or infinite float; anything that is not a float
    (an int, a string, ``None``) counts as finite here: the caller checks types on its own."""
    if isinstance(x, list):
        return any(has_non_finite_float(v) for v in x)
    return isinstance(x, float) and not math.isfinite(x)
