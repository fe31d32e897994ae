"""The permission bits an output file gets.

Atomic writes go through :func:`tempfile.mkstemp`, which creates files readable by their owner only
(0600); renamed over the target, that would silently turn a 0644 report into 0600. Every atomic
writer gives its temporary file the mode a plain ``open(path, "w")`` would have given: the existing
file's mode when one is replaced, else ``0666`` minus the umask.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["output_mode"]


def _umask() -> int:
    # The umask can only be read by setting it; set it back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_mode(target: str | os.PathLike[str]) -> int:
    """Mode for a file about to be written at ``target``: the existing file's permission bits, or
    ``0o666 & ~umask`` for a new file."""
    try:
        return stat.S_IMODE(Path(target).stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()
