"""The one exception type for mistakes of the person running drope_check.

A :class:`UserError` is bad input -- a path that does not exist, an option value out of range, a
checkpoint the loader does not implement -- never a bug. Its message is one sentence that names the
input (file, option, model) and says how to fix it; ``drope-check`` prints it on stderr and exits 2
without a traceback (``--debug`` shows one). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["UserError", "count_and_names"]


class UserError(Exception):
    """Bad input; the message names the input and the fix."""


def count_and_names(found: Mapping[str, Sequence[str]], shown: int = 4) -> str:
    """``{"missing": [a, b, ...], "unexpected": [c]}`` as an error names it: each kind with its count
    and its first ``shown`` names, ``"7 missing (a, b, c, d, ...); 1 unexpected (c)"`` (``_`` in a
    kind read as ``-``)."""
    return "; ".join(
        f"{len(names)} {kind.replace('_', '-')} ({', '.join(names[:shown])}{', ...' if len(names) > shown else ''})"
        for kind, names in found.items()
        if names
    )
