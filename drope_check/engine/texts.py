"""Evaluation texts for the RoPE-vs-DroPE checks, with their provenance.

The report's later perplexity numbers (RoPE 10.2, DroPE 18.6) are said to come from WikiText-2.
The protocol found upstream is: the ``wikitext-2-raw-v1`` *test* split, the rows with more than 100
characters, the first 20 of them, each row its own sequence (truncated to 512 tokens with BOS
prepended; see :mod:`drope_check.engine.batching`). Which 20 rows are used decides the number, so every text
set produced here carries a :class:`TextSet` record -- a name, the source it came from, the selection
rule in words and a SHA-256 of the texts -- that results can quote.

Where the WikiText-2 test split comes from, in this order:

1. an explicit ``path`` argument (the CLI's ``--wikitext PATH``) to a ``wiki.test.raw`` file;
2. the environment variable ``DROPE_CHECK_WIKITEXT`` naming such a file;
3. ``datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")``, i.e. the
   hub or a local Hugging Face cache. With no network, ``huggingface_hub`` retries for about 25 s
   before it gives up; setting ``HF_HUB_OFFLINE=1`` makes a cache-only lookup fail at once. This
   module sets no environment variable or library flag itself.

If none of these is available, :func:`wikitext_lines` can fall back (``allow_fallback=True``) to real
Wikipedia paragraphs bundled in gensim's wheel. Those are *not* WikiText-2, and the text set says so
in its ``name`` and ``source``: a perplexity on them is not comparable with the report's.

A ``wiki.test.raw`` file and the HF split hold the same text in two layouts. In the file every line
ends with ``" \\n"`` and blank lines are exactly ``" \\n"``; the HF rows are the file's lines as Python
iterates them (trailing ``"\\n"`` kept), with whitespace-only lines turned into ``""``. The file is
mapped to that row form here, so both routes give the same 4,358 rows (2,891 non-empty).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from drope_check.engine.gensim_texts import (
    gensim_fallback,
)
from drope_check.engine.text_set import (
    TextSet,
    TextSourceError,
    bytes_sha256,
    check_n_min_chars,
)

__all__ = [
    "ENV_WIKITEXT",
    "HF_CONFIG",
    "HF_DATASET",
    "HF_SOURCE",
    "HF_SPLIT",
    "WIKITEXT2_TEST_NONEMPTY_ROWS",
    "WIKITEXT2_TEST_RAW_SHA256",
    "WIKITEXT2_TEST_ROWS",
    "WikiTextUnavailableError",
    "load_wikitext_rows",
    "wikitext_lines",
    "wikitext_split_text",
]

#: Environment variable naming a local ``wiki.test.raw`` (WikiText-2 raw, test split).
ENV_WIKITEXT = "DROPE_CHECK_WIKITEXT"

HF_DATASET = "Salesforce/wikitext"
HF_CONFIG = "wikitext-2-raw-v1"
HF_SPLIT = "test"
#: ``source`` string of text sets read through ``datasets``.
HF_SOURCE = f"datasets:{HF_DATASET}:{HF_CONFIG}:{HF_SPLIT}"

#: SHA-256 of the canonical ``wiki.test.raw`` (1,290,590 bytes), as recorded in the shared data
#: README. A file with another hash still loads; its own hash goes into the provenance record.
WIKITEXT2_TEST_RAW_SHA256 = "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"
#: Rows of the HF ``wikitext-2-raw-v1`` test split (= lines of ``wiki.test.raw``).
WIKITEXT2_TEST_ROWS = 4358
#: Non-empty rows of that split.
WIKITEXT2_TEST_NONEMPTY_ROWS = 2891


class WikiTextUnavailableError(TextSourceError):
    """No WikiText-2 source was configured and ``datasets`` could not provide one.

    Raised only when neither a path argument nor ``DROPE_CHECK_WIKITEXT`` was given; a configured
    path that is broken raises a plain :class:`TextSourceError` instead (and never falls back).
    """


# --------------------------------------------------------------------------------------------------
# WikiText-2


@dataclass(frozen=True)
class _WikiRows:
    rows: list[str]
    source: str
    file_sha256: str | None


def _how_to_provide(allow_fallback: bool) -> str:
    ways = [
        f"(1) pass --wikitext PATH or set {ENV_WIKITEXT}=PATH, pointing at wiki.test.raw "
        "(WikiText-2 raw, test split, from wikitext-2-raw-v1.zip);",
        f"(2) install `datasets` with access to the Hugging Face hub, or with a local HF cache of "
        f"{HF_DATASET} {HF_CONFIG} (set HF_HUB_OFFLINE=1 to use the cache without network);",
    ]
    third = "(3) `pip install gensim` for the offline fallback sample (real Wikipedia text, NOT WikiText-2)"
    ways.append(third + ("." if allow_fallback else "; it is disabled for this call (allow_fallback=False)."))
    return "\n  ".join(["Ways to provide WikiText-2:", *ways])


def _rows_from_raw_bytes(data: bytes) -> list[str]:
    """Map the bytes of a ``wiki.test.raw`` file to the rows ``datasets`` yields for the same split.

    The HF split was built by iterating the file in Python text mode, keeping each line (with its
    ``"\\n"``) and replacing whitespace-only lines by ``""``. The same iteration is done here, so the
    two routes agree row for row.
    """
    stream = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    return [line if line.strip() else "" for line in stream]


def _read_wikitext_file(path: Path, origin: str) -> _WikiRows:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TextSourceError(
            f"cannot read the WikiText-2 file {str(path)!r} (given by {origin}): {exc.strerror or exc}. "
            "It should be wiki.test.raw from wikitext-2-raw-v1.zip."
        ) from exc
    try:
        rows = _rows_from_raw_bytes(data)
    except UnicodeDecodeError as exc:
        raise TextSourceError(
            f"the WikiText-2 file {str(path)!r} (given by {origin}) is not UTF-8 text: {exc}"
        ) from exc
    if not any(rows):
        raise TextSourceError(f"the WikiText-2 file {str(path)!r} (given by {origin}) holds no text")
    nul_rows = [i + 1 for i, row in enumerate(rows) if "\x00" in row]
    if nul_rows:
        raise TextSourceError(
            f"the WikiText-2 file {str(path)!r} (given by {origin}) contains NUL bytes (first on line "
            f"{nul_rows[0]}, {len(nul_rows)} line(s) in all); it is not wiki.test.raw: use the file from wikitext-2-raw-v1.zip"
        )
    return _WikiRows(rows=rows, source=f"file:{path}", file_sha256=bytes_sha256(data))


def _load_rows_with_datasets() -> list[str]:
    """Rows of the split through ``datasets`` (hub or local cache). Raises whatever it raises."""
    import datasets  # local import: heavy, and optional for the file route

    split = datasets.load_dataset(HF_DATASET, HF_CONFIG, split=HF_SPLIT)
    return list(split["text"])


def _resolve_wikitext(path: str | os.PathLike[str] | None, allow_fallback: bool = True) -> _WikiRows:
    if path is not None:
        return _read_wikitext_file(Path(path).expanduser().resolve(), "the path argument")
    env_path = os.environ.get(ENV_WIKITEXT)
    if env_path:
        return _read_wikitext_file(
            Path(env_path).expanduser().resolve(), f"the environment variable {ENV_WIKITEXT}"
        )
    try:
        rows = _load_rows_with_datasets()
    except Exception as exc:  # any failure of the hub/cache route means "unavailable"
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise WikiTextUnavailableError(
            f"WikiText-2 ({HF_CONFIG}, {HF_SPLIT} split) is not available: no path was given, "
            f"{ENV_WIKITEXT} is not set, and datasets.load_dataset({HF_DATASET!r}, {HF_CONFIG!r}, "
            f"split={HF_SPLIT!r}) failed ({reason}).\n  {_how_to_provide(allow_fallback)}"
        ) from exc
    if not rows or not all(isinstance(r, str) for r in rows):
        raise TextSourceError(f"{HF_SOURCE} returned no rows or non-string rows")
    return _WikiRows(rows=rows, source=HF_SOURCE, file_sha256=None)


def load_wikitext_rows(path: str | os.PathLike[str] | None = None) -> tuple[list[str], str]:
    """Rows of the WikiText-2 raw test split, exactly as ``datasets`` yields them, and their source.

    Each non-empty row keeps its trailing ``"\\n"``; blank rows are ``""``. The canonical split has
    4,358 rows, 2,891 of them non-empty.

    Resolution order: ``path``; else the ``DROPE_CHECK_WIKITEXT`` environment variable; else
    ``datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")``.

    Returns:
        ``(rows, source)`` with ``source`` either ``"file:<absolute path>"`` or
        ``"datasets:Salesforce/wikitext:wikitext-2-raw-v1:test"``.

    Raises:
        TextSourceError: the given file is missing, unreadable, not UTF-8 or empty (the message names
            the path and whether it came from the argument or the environment variable).
        WikiTextUnavailableError: nothing was configured and ``datasets`` failed; the message lists
            the ways to provide WikiText-2.
    """
    resolved = _resolve_wikitext(path)
    return list(resolved.rows), resolved.source


def wikitext_lines(
    n: int = 20,
    min_chars: int = 100,
    path: str | os.PathLike[str] | None = None,
    allow_fallback: bool = True,
) -> TextSet:
    """Upstream's perplexity texts: the first ``n`` test rows with ``len(row) > min_chars``.

    ``len(row)`` is taken on the row as ``datasets`` yields it, trailing ``"\\n"`` included, as in
    upstream's ``[t for t in ds["text"] if len(t) > 100][:20]``. (Stripping the newline changes the
    count of qualifying rows from 1,835 to 1,833, but not the first 20.) The rows are returned
    unchanged -- leading space and trailing newline kept -- because that is what was tokenized.

    If no WikiText-2 source is configured or reachable and ``allow_fallback`` is true, returns
    :func:`gensim_fallback` instead, whose ``name`` and ``source`` say it is not WikiText-2. A path
    that was given (argument or environment variable) but is broken never falls back.

    Raises:
        TextSourceError: a configured file is broken, fewer than ``n`` rows qualify, or nothing is
            available and the fallback is disabled or fails.
    """
    check_n_min_chars(n, min_chars)
    try:
        resolved = _resolve_wikitext(path, allow_fallback=allow_fallback)
    except WikiTextUnavailableError as exc:
        if not allow_fallback:
            raise
        try:
            return gensim_fallback(n, min_chars)
        except TextSourceError as fallback_exc:
            raise WikiTextUnavailableError(
                f"{exc}\n  The gensim fallback failed too: {fallback_exc}"
            ) from fallback_exc
    selected = [row for row in resolved.rows if len(row) > min_chars][:n]
    if len(selected) < n:
        raise TextSourceError(
            f"only {len(selected)} rows of {resolved.source} have more than {min_chars} characters; "
            f"{n} were asked for"
        )
    return TextSet(
        name=f"{HF_CONFIG}/{HF_SPLIT} lines>{min_chars} first {n}",
        source=resolved.source,
        texts=tuple(selected),
        selection=(
            f"rows of the {HF_CONFIG} {HF_SPLIT} split in order, as datasets yields them (trailing "
            f"'\\n' kept, blank rows ''), keeping rows with len(row) > {min_chars}; the first {n}; "
            "each row is its own sequence"
        ),
        source_sha256=resolved.file_sha256,
    )


def wikitext_split_text(path: str | os.PathLike[str] | None = None) -> TextSet:
    """The whole WikiText-2 raw test split as one text, for the sliding-window perplexity protocol.

    Joined as in the Hugging Face "Perplexity of fixed-length models" guide:
    ``"\\n\\n".join(rows)`` over all rows, blank ones included. No fallback: a sliding-window
    number is only meaningful on the real split.
    """
    resolved = _resolve_wikitext(path, allow_fallback=False)
    return TextSet(
        name=f"{HF_CONFIG}/{HF_SPLIT} joined",
        source=resolved.source,
        texts=("\n\n".join(resolved.rows),),
        selection=(
            f"all {len(resolved.rows)} rows of the {HF_CONFIG} {HF_SPLIT} split (blank rows '' "
            "included) joined with '\\n\\n', one text"
        ),
        source_sha256=resolved.file_sha256,
    )


# --------------------------------------------------------------------------------------------------
# gensim fallback: real Wikipedia paragraphs, NOT WikiText-2


# --------------------------------------------------------------------------------------------------
# user prompts
