"""User prompts as evaluation texts: a text file (one prompt per line) or a JSON list, as a :class:`~drope_check.engine.text_set.TextSet`."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from drope_check.engine.text_set import (
    TextSet,
    TextSourceError,
    bytes_sha256,
)


def _prompts_from_json(data: str, path: Path) -> list[str]:
    try:
        items = json.loads(data)
    except json.JSONDecodeError as exc:
        raise TextSourceError(f"prompt file {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(items, list):
        raise TextSourceError(
            f"prompt file {str(path)!r} must hold a JSON list of strings, not {type(items).__name__}"
        )
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TextSourceError(
                f"prompt file {str(path)!r}: item {i} is {type(item).__name__} ({item!r}), not a string"
            )
        if not item.strip():
            raise TextSourceError(f"prompt file {str(path)!r}: item {i} is an empty string")
    return items


def prompt_file(path: str | os.PathLike[str]) -> TextSet:
    """User-supplied prompts: one prompt per non-empty line, or a ``.json`` file holding a list of strings.

    In a text file each line is one prompt with its line terminator removed and nothing else
    changed; whitespace-only lines are skipped. A ``.json`` file must hold a non-empty list of
    non-empty strings, taken in order.

    Raises:
        TextSourceError: the file is missing, unreadable, not UTF-8, invalid JSON, holds no prompt,
            or holds a non-string / empty item (the message names the path and the item index).
    """
    resolved = Path(path).expanduser().resolve()
    try:
        raw = resolved.read_bytes()
    except OSError as exc:
        raise TextSourceError(f"cannot read prompt file {str(resolved)!r}: {exc.strerror or exc}") from exc
    try:
        data = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TextSourceError(f"prompt file {str(resolved)!r} is not UTF-8 text: {exc}") from exc
    is_json = resolved.suffix.lower() == ".json"
    if is_json:
        prompts: Sequence[str] = _prompts_from_json(data, resolved)
        rule = "the strings of the JSON list, in order"
    else:
        lines = (line.rstrip("\r\n") for line in io.StringIO(data, newline=""))
        prompts = [line for line in lines if line.strip()]
        rule = "one prompt per non-empty line, in order (line terminator removed)"
    if not prompts:
        raise TextSourceError(f"prompt file {str(resolved)!r} holds no prompts")
    for i, prompt in enumerate(prompts):
        if "\x00" in prompt:
            raise TextSourceError(f"prompt file {str(resolved)!r}: prompt {i} contains a NUL character")
    return TextSet(
        name=f"prompts {resolved.name} ({len(prompts)})",
        source=f"prompts:{resolved}",
        texts=tuple(prompts),
        selection=rule,
        source_sha256=bytes_sha256(raw),
    )
