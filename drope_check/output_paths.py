"""Checks that an output path can be written, before any work: ``--out``, ``--report-dir``, ``--claims-report``.

A light module (no torch, no transformers): the pytest plugin checks ``--claims-report`` at
configure time, before anything is measured, and the CLI checks its outputs before any weights
load (:mod:`drope_check.preflight` re-exports both checks). Each failure is a
:class:`~drope_check.errors.UserError` naming the option, the path and the fix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from drope_check.errors import UserError

__all__ = ["check_output_file", "check_output_folder"]


def _probe_writable(folder: Path, option: str) -> None:
    """Create and remove a file in ``folder``: the only check that is right for root, ACLs and
    read-only mounts alike."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".drope-check-probe.", dir=folder)
    except OSError as exc:
        raise UserError(
            f"{option}: cannot write in the folder {str(folder)!r} ({exc.strerror or exc}); choose a writable folder"
        ) from exc
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: str | os.PathLike[str], option: str = "--out") -> bool:
    """``path`` can be written: its folder exists and is writable, and it is not a folder.
    Returns whether a file is already there (and will be replaced)."""
    target = Path(path)
    if target.is_dir():
        raise UserError(
            f"{option} {str(target)!r} is a folder; give a file name, e.g. {str(target / 'measurements.json')!r}"
        )
    folder = target.parent
    if not folder.exists():
        raise UserError(
            f"{option} {str(target)!r}: the folder {str(folder)!r} does not exist; create it first"
        )
    if not folder.is_dir():
        raise UserError(f"{option} {str(target)!r}: {str(folder)!r} is a file, not a folder")
    _probe_writable(folder, option)
    return target.exists()


def check_output_folder(path: str | os.PathLike[str], option: str = "--report-dir") -> None:
    """A folder to write into: it exists as a writable folder, or can be created (its nearest
    existing parent is a writable folder)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {str(folder)!r} is a file; give a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {str(folder)!r}: {str(existing)!r} is a file, not a folder")
    _probe_writable(existing, option)
