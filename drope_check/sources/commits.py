"""Reading one of the author's files at a commit, from a git clone (``git show``) or a ``<commit>/<path>`` folder."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from drope_check.sources.table import (
    UpstreamImportError,
)


class CommitReader:
    """Reads ``path`` at ``commit`` from a git clone or a ``<commit>/<path>`` folder."""

    def __init__(self, root: Path, kind: str) -> None:
        self.root = root
        self.kind = kind
        self._cache: dict[tuple[str, str], tuple[Any, str]] = {}

    def describe(self) -> str:
        return f"{'git clone' if self.kind == 'git' else 'folder'} {self.root}"

    def _read_bytes(self, commit: str, path: str) -> bytes:
        if self.kind == "folder":
            folder = self.root / commit
            if not folder.is_dir():
                raise UpstreamImportError(
                    f"upstream folder {self.root} has no folder for commit {commit} (expected {folder}/{path})"
                )
            file = folder / path
            if not file.is_file():
                raise UpstreamImportError(
                    f"upstream folder {self.root} has no file {path} at commit {commit} ({file})"
                )
            return file.read_bytes()
        have = subprocess.run(
            ["git", "-C", str(self.root), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True
        )
        if have.returncode != 0:
            raise UpstreamImportError(
                f"git clone {self.root} does not contain commit {commit} (fetch it first)"
            )
        shown = subprocess.run(["git", "-C", str(self.root), "show", f"{commit}:{path}"], capture_output=True)
        if shown.returncode != 0:
            raise UpstreamImportError(f"git clone {self.root} has no file {path} at commit {commit}")
        return shown.stdout

    def read_json(self, commit: str, path: str) -> tuple[Any, str]:
        """The parsed JSON (NaN literals allowed at parse time) and the file's sha256."""
        key = (commit, path)
        if key not in self._cache:
            data = self._read_bytes(commit, path)
            try:
                parsed = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise UpstreamImportError(
                    f"{path} at commit {commit} in {self.describe()} is not valid JSON: {exc}"
                ) from None
            self._cache[key] = (parsed, hashlib.sha256(data).hexdigest())
        return self._cache[key]


def open_source(source: str | Path) -> CommitReader:
    """A git clone (``git show``) or a ``<commit>/<path>`` folder; anything else is an error."""
    root = Path(source)
    if not root.is_dir():
        raise UpstreamImportError(
            f"upstream source {root} is not a folder (give a git clone or a <commit>/<path> folder)"
        )
    if (root / ".git").exists():
        probe = subprocess.run(["git", "-C", str(root), "rev-parse", "--git-dir"], capture_output=True)
        if probe.returncode != 0:
            raise UpstreamImportError(
                f"{root} has a .git but git cannot read it: {probe.stderr.decode().strip()}"
            )
        return CommitReader(root, "git")
    return CommitReader(root, "folder")
