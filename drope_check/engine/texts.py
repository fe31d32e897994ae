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

import bz2
import hashlib
import html
import io
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drope_check.errors import UserError

__all__ = [
    "ENV_WIKITEXT",
    "GENSIM_WIKI_SAMPLE",
    "HF_CONFIG",
    "HF_DATASET",
    "HF_SOURCE",
    "HF_SPLIT",
    "WIKITEXT2_TEST_NONEMPTY_ROWS",
    "WIKITEXT2_TEST_RAW_SHA256",
    "WIKITEXT2_TEST_ROWS",
    "TextSet",
    "TextSourceError",
    "WikiTextUnavailableError",
    "gensim_fallback",
    "load_wikitext_rows",
    "prompt_file",
    "sha256_of_texts",
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

#: The Wikipedia sample shipped in gensim's wheel (``gensim/test/test_data``), used as fallback.
GENSIM_WIKI_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


class TextSourceError(UserError, RuntimeError):
    """An evaluation text source is missing, unreadable or malformed.

    The message always says which path (or which route) failed and how to fix it.
    """


class WikiTextUnavailableError(TextSourceError):
    """No WikiText-2 source was configured and ``datasets`` could not provide one.

    Raised only when neither a path argument nor ``DROPE_CHECK_WIKITEXT`` was given; a configured
    path that is broken raises a plain :class:`TextSourceError` instead (and never falls back).
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


def _file_sha256(data: bytes) -> str:
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
    return _WikiRows(rows=rows, source=f"file:{path}", file_sha256=_file_sha256(data))


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


def _check_n_min_chars(n: int, min_chars: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(min_chars, bool) or not isinstance(min_chars, int) or min_chars < 0:
        raise ValueError(f"min_chars must be a non-negative int, got {min_chars!r}")


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
    _check_n_min_chars(n, min_chars)
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

_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_REF_PAIRED = re.compile(r"<ref\b[^>/]*>.*?</ref\s*>", re.DOTALL | re.IGNORECASE)
_REF_SINGLE = re.compile(r"<ref\b[^>]*/>", re.IGNORECASE)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|.*?\|\}", re.DOTALL)
_INNER_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXT_LINK = re.compile(r"\[(?:https?:)?//[^\s\]]*\s*([^\]]*)\]")
_TAG = re.compile(r"<[^<>]*>")
_QUOTES = re.compile(r"'{2,}")
_SPACES = re.compile(r"[ \t\u00a0]+")
_HEADING = re.compile(r"^=+.*=+$")
# [[Prefix:...]] links whose text is not prose (files, categories, interlanguage links, ...).
_NON_PROSE_LINK = re.compile(
    r"^\s*:?\s*(file|image|media|category|[a-z]{2,3}(-[a-z]+)?|wikt|wiktionary)\s*:", re.I
)


def _sub_until_stable(pattern: re.Pattern[str], repl: Any, text: str) -> str:
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return new
        text = new


def _link_text(match: re.Match[str]) -> str:
    inner = match.group(1)
    if _NON_PROSE_LINK.match(inner):
        return ""
    return inner.rsplit("|", 1)[-1]


def _strip_wiki_markup(text: str) -> str:
    """Cheap, deterministic removal of the most common MediaWiki markup (not a full parser)."""
    text = _COMMENT.sub("", text)
    text = _REF_PAIRED.sub("", text)
    text = _REF_SINGLE.sub("", text)
    text = _sub_until_stable(_TEMPLATE, "", text)
    text = _TABLE.sub("", text)
    text = _sub_until_stable(_INNER_LINK, _link_text, text)
    text = _EXT_LINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = _QUOTES.sub("", text)
    return html.unescape(text)


def _paragraphs(wikitext: str) -> Iterator[str]:
    """Prose lines of cleaned article text: headings, lists, tables and leftover markup dropped."""
    for raw in _strip_wiki_markup(wikitext).split("\n"):
        line = _SPACES.sub(" ", raw).strip()
        if not line or _HEADING.match(line) or line[0] in "*#:;|!{}":
            continue
        if any(mark in line for mark in ("{{", "}}", "[[", "]]", "{|", "|}", "|", "<", ">")):
            continue  # markup the cheap stripper could not handle; skip rather than guess
        yield line


def _iter_article_texts(stream: io.BufferedIOBase | Any) -> Iterator[str]:
    """Wikitext of main-namespace, non-redirect pages of a MediaWiki XML dump, in dump order."""
    for _event, elem in ET.iterparse(stream, events=("end",)):
        if elem.tag.rsplit("}", 1)[-1] != "page":
            continue
        ns = redirect = text = None
        for child in elem.iter():
            local = child.tag.rsplit("}", 1)[-1]
            if local == "ns":
                ns = (child.text or "").strip()
            elif local == "redirect":
                redirect = True
            elif local == "text":
                text = child.text or ""
        elem.clear()
        if ns == "0" and not redirect and text:
            yield text


def _gensim_sample_path() -> Path:
    try:
        from gensim.test.utils import datapath
    except ImportError as exc:
        raise TextSourceError(
            "the offline fallback needs gensim (its wheel ships a Wikipedia sample, "
            f"{GENSIM_WIKI_SAMPLE}); `pip install gensim` or provide WikiText-2"
        ) from exc
    path = Path(datapath(GENSIM_WIKI_SAMPLE))
    if not path.is_file():
        raise TextSourceError(f"gensim is installed but its Wikipedia sample {str(path)!r} is missing")
    return path


def gensim_fallback(n: int = 20, min_chars: int = 100) -> TextSet:
    """Offline stand-in for WikiText-2: the first ``n`` prose paragraphs longer than ``min_chars``.

    Real English Wikipedia text from gensim's test data (``GENSIM_WIKI_SAMPLE``, a shortened
    ``enwiki`` pages-articles dump). The dump is parsed with the standard library; main-namespace,
    non-redirect articles are taken in dump order; comments, ``<ref>``s, templates ``{{...}}``,
    tables, file/category links, HTML tags and ``''``/``'''`` quotes are removed,
    ``[[target|text]]`` becomes ``text``; each remaining prose line is a paragraph (headings, list
    and table lines, and lines with leftover markup are dropped); whitespace runs become one space.
    Fully deterministic for a given gensim file.

    This is NOT WikiText-2 (different articles, no WikiText tokenization such as ``" @-@ "``), so
    perplexities on it are not comparable with the report's; ``name`` and ``source`` say so.

    Raises:
        TextSourceError: gensim is not installed, its sample is missing or unreadable, or it has
            fewer than ``n`` qualifying paragraphs.
    """
    _check_n_min_chars(n, min_chars)
    path = _gensim_sample_path()
    try:
        data = path.read_bytes()
        selected: list[str] = []
        with bz2.open(io.BytesIO(data), "rb") as stream:
            for article in _iter_article_texts(stream):
                selected.extend(p for p in _paragraphs(article) if len(p) > min_chars)
                if len(selected) >= n:
                    break
    except (OSError, EOFError, ET.ParseError) as exc:
        raise TextSourceError(f"cannot read gensim's Wikipedia sample {str(path)!r}: {exc}") from exc
    if len(selected) < n:
        raise TextSourceError(
            f"gensim's Wikipedia sample {str(path)!r} has only {len(selected)} paragraphs with more than "
            f"{min_chars} characters; {n} were asked for"
        )
    return TextSet(
        name=f"gensim-fallback enwiki sample paragraphs>{min_chars} first {n} (NOT WikiText-2)",
        source=f"gensim-fallback:{GENSIM_WIKI_SAMPLE}",
        texts=tuple(selected[:n]),
        selection=(
            "NOT WikiText-2: main-namespace non-redirect articles of gensim's shortened enwiki dump in "
            "order, wiki markup stripped (templates, refs, tables, file/category links, tags, quotes; "
            f"[[a|b]] -> b), prose lines as paragraphs, keeping len > {min_chars}; the first {n}"
        ),
        source_sha256=_file_sha256(data),
    )


# --------------------------------------------------------------------------------------------------
# user prompts


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
        source_sha256=_file_sha256(raw),
    )
