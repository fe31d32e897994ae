"""The one exception type for mistakes of the person running drope_check.

A :class:`UserError` is bad input -- a path that does not exist, an option value out of range, a
checkpoint the loader does not implement -- never a bug. Its message is one sentence that names the
input (file, option, model) and says how to fix it; ``drope-check`` prints it on stderr and exits 2
without a traceback (``--debug`` shows one). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input; the message names the input and the fix."""
