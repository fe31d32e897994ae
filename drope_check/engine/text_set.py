"""A named, ordered set of evaluation texts with its provenance (:class:`TextSet`), its hash, and the
error a text source raises."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from drope_check.errors import UserError


class TextSourceError(UserError, RuntimeError):
    """An evaluation text source is missing, unreadable or malformed.

    The message always says which path (or which route) failed and how to fix it.
    """


def sha256_of_texts(texts: Iterable[str]) -> str:
    """SHA-256 (hex) of a sequence of texts: the UTF-8 bytes of each text, each followed by 0x00.

    ``sha256(utf8(t_0) + b"\\x00" + utf8(t_1) + b"\\x00" + ... )``. The terminator makes the hash
    depend on where one text ends and the next begins (``["ab", "c"]`` differs from ``["a", "bc"]``)
    and on the order; :class:`TextSet` refuses texts that contain NUL, so the encoding is injective.
    """
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class TextSet:
    """A named, ordered set of evaluation texts and where it came from.

    Attributes:
        name: short label, e.g. ``"wikitext-2-raw-v1/test lines>100 first 20"``.
        source: ``"datasets:Salesforce/wikitext:wikitext-2-raw-v1:test"``, ``"file:<absolute path>"``,
            ``"gensim-fallback:<file name>"`` or ``"prompts:<absolute path>"``.
        texts: the texts, in evaluation order; each one is its own sequence.
        selection: the selection rule in words, enough to redo it by hand.
        source_sha256: SHA-256 of the source file's bytes when the texts were read from a file
            (``file:``, ``prompts:`` and ``gensim-fallback:`` sources), else ``None``.
    """

    name: str
    source: str
    texts: tuple[str, ...]
    selection: str
    source_sha256: str | None = None

    def __post_init__(self) -> None:
        texts = tuple(self.texts)
        if not texts:
            raise ValueError(f"TextSet {self.name!r} has no texts")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"TextSet {self.name!r}: text {i} is {type(text).__name__}, not str")
            if "\x00" in text:
                raise ValueError(f"TextSet {self.name!r}: text {i} contains a NUL character")
        object.__setattr__(self, "texts", texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[str]:
        return iter(self.texts)

    @property
    def sha256(self) -> str:
        """SHA-256 over the texts as defined by :func:`sha256_of_texts` (UTF-8, each + 0x00)."""
        return sha256_of_texts(self.texts)

    def to_provenance(self) -> dict[str, Any]:
        """A JSON-ready record of this text set for result files.

        Keys: ``name``, ``source``, ``selection``, ``n_texts``, ``sha256`` (of the texts, see
        :func:`sha256_of_texts`) and, for file-backed sources, ``file_sha256`` (of the file's bytes).
        """
        record: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "selection": self.selection,
            "n_texts": len(self.texts),
            "sha256": self.sha256,
        }
        if self.source_sha256 is not None:
            record["file_sha256"] = self.source_sha256
        return record


def check_n_min_chars(n: int, min_chars: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(min_chars, bool) or not isinstance(min_chars, int) or min_chars < 0:
        raise ValueError(f"min_chars must be a non-negative int, got {min_chars!r}")
