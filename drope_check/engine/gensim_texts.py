"""The text fallback: real Wikipedia paragraphs from the sample in gensim's wheel, NOT WikiText-2 (its
``name`` and ``source`` say so)."""

from __future__ import annotations

import bz2
import html
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from drope_check.engine.text_set import (
    TextSet,
    TextSourceError,
    bytes_sha256,
    check_n_min_chars,
)

#: The Wikipedia sample shipped in gensim's wheel (``gensim/test/test_data``), used as fallback.
GENSIM_WIKI_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


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
    check_n_min_chars(n, min_chars)
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
        source_sha256=bytes_sha256(data),
    )
