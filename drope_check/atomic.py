"""Atomic file writes: a temporary file in the target's folder, fsync, then ``os.replace``.

A crash or Ctrl-C never leaves a half-written report, claim file or measurements JSON: either the
old file or the complete new one is there. Used by the report, ``--regen-expected`` and the CLI.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from drope_check.file_mode import output_mode

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text"]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, output_mode(target))  # mkstemp's 0600 would replace the file's own mode
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(
    path: str | Path, payload: Any, indent: int | None = 1, sort_keys: bool = False
) -> Path:
    """``payload`` as JSON plus a newline, atomically. NaN / Infinity are refused (``allow_nan=False``):
    they are not JSON, and a measurements file never carries them."""
    text = json.dumps(payload, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n"
    return atomic_write_text(path, text)
