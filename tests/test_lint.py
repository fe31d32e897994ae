"""The code stays as ``ruff format`` writes it and ``ruff check`` clean (issue 17), checked in every CI
run (README command 2 runs this file) and by ``tox -e lint``.

The ruff version is pinned for CI in ci/constraints-cpu.txt, so a new ruff release cannot turn CI red
by formatting differently; without ruff installed the test skips saying so.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    return [exe]


@pytest.mark.parametrize("args", [["format", "--check", "."], ["check", "."]], ids=["format", "check"])
def test_ruff(args: list[str]) -> None:
    proc = subprocess.run([*_ruff(), *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"ruff {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
