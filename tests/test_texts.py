"""Tests of drope_check.engine.texts: which texts the perplexity protocol uses, and their provenance.

The facts checked against the shared WikiText-2 file (row counts, the first selected lines, the
newline-in-length question, the file hash) are those recorded in shared/data/wikitext-2-raw/README.md.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from drope_check.engine import gensim_texts as engine_gensim_texts
from drope_check.engine import texts as T
from drope_check.engine.gensim_texts import gensim_fallback
from drope_check.engine.prompt_files import prompt_file
from drope_check.engine.text_set import TextSet, TextSourceError, sha256_of_texts
from drope_check.engine.texts import (
    ENV_WIKITEXT,
    HF_SOURCE,
    WIKITEXT2_TEST_NONEMPTY_ROWS,
    WIKITEXT2_TEST_RAW_SHA256,
    WIKITEXT2_TEST_ROWS,
    WikiTextUnavailableError,
    load_wikitext_rows,
    wikitext_lines,
    wikitext_split_text,
)

# sha256_of_texts of the first 20 rows with len > 100 of the canonical wiki.test.raw, recorded when
# this module was written; it is also recomputed independently below from the raw file.
_FIRST20_SHA256 = "e97cb83e2950ae8f35ce49d46e37144374161c9fbed36d29fc526884eaf3d587"


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_WIKITEXT, raising=False)


@pytest.fixture
def datasets_unreachable(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Make ``datasets.load_dataset`` fail at once, as with no hub and no cache; records its calls."""
    datasets = pytest.importorskip("datasets")
    calls: list[tuple] = []

    def fail(*args: object, **kwargs: object) -> None:
        calls.append((args, kwargs))
        raise ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub (test)")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    return calls


@pytest.fixture
def no_gensim(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import gensim...`` raise ImportError."""
    for name in ("gensim", "gensim.test", "gensim.test.utils"):
        monkeypatch.setitem(sys.modules, name, None)


def _write_raw(path: Path, lines: list[str]) -> Path:
    """Write lines in wiki.test.raw layout: each ' <text> \\n', blank lines ' \\n'."""
    path.write_text("".join(f" {line} \n" if line else " \n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------
# the file layout -> HF rows mapping, on a tiny synthetic file


def test_raw_layout_maps_to_hf_rows(tmp_path: Path, no_env: None) -> None:
    path = _write_raw(
        tmp_path / "wiki.test.raw", ["", "= Title =", "", "Some text .", "More text here .", ""]
    )
    rows, source = load_wikitext_rows(path)
    assert rows == ["", " = Title = \n", "", " Some text . \n", " More text here . \n", ""]
    assert source == f"file:{path.resolve()}"


def test_whitespace_only_lines_become_empty_rows(tmp_path: Path) -> None:
    path = tmp_path / "w.raw"
    path.write_text(" a \n  \n\n b \n", encoding="utf-8")
    rows, _ = load_wikitext_rows(path)
    assert rows == [" a \n", "", "", " b \n"]


# ---------------------------------------------------------------------------------------------------
# the shared WikiText-2 test file


def test_shared_file_is_the_canonical_one(wikitext_path: Path) -> None:
    assert hashlib.sha256(wikitext_path.read_bytes()).hexdigest() == WIKITEXT2_TEST_RAW_SHA256


def test_local_file_rows(wikitext_path: Path) -> None:
    rows, source = load_wikitext_rows(wikitext_path)
    assert len(rows) == WIKITEXT2_TEST_ROWS == 4358
    nonempty = [r for r in rows if r]
    assert len(nonempty) == WIKITEXT2_TEST_NONEMPTY_ROWS == 2891
    assert all(r.startswith(" ") and r.endswith(" \n") for r in nonempty)
    assert rows[0] == "" and rows[-1] == ""
    assert rows[1] == " = Robert Boulter = \n"
    assert source == f"file:{wikitext_path.resolve()}"


def test_first_three_selected_lines(wikitext_path: Path) -> None:
    ts = wikitext_lines(path=wikitext_path)
    assert len(ts.texts) == 20
    assert ts.texts[0][:60] == " Robert Boulter is an English film , television and theatre "
    assert ts.texts[1][:60] == " In 2006 , Boulter starred alongside Whishaw in the play Cit"
    assert ts.texts[2][:60] == " In 2000 Boulter had a guest @-@ starring role on the televi"
    rows, _ = load_wikitext_rows(wikitext_path)
    # 1-based line numbers 4, 5, 12 of the file, rows kept exactly as datasets yields them
    assert ts.texts[:3] == (rows[3], rows[4], rows[11])
    assert all(t.endswith(" \n") for t in ts.texts)


def test_first_20_same_with_or_without_newline(wikitext_path: Path) -> None:
    rows, _ = load_wikitext_rows(wikitext_path)
    kept = [r for r in rows if len(r) > 100]
    stripped = [r for r in rows if len(r.rstrip("\n")) > 100]
    assert (len(kept), len(stripped)) == (1835, 1833)
    assert kept[:20] == stripped[:20]
    assert list(wikitext_lines(20, 100, path=wikitext_path).texts) == kept[:20]


def test_selection_hash_matches_independent_computation(wikitext_path: Path) -> None:
    ts = wikitext_lines(path=wikitext_path)
    # independent route: plain file iteration, blank " \n" lines are never > 100 chars
    with open(wikitext_path, encoding="utf-8") as f:
        lines = [line for line in f if len(line) > 100][:20]
    digest = hashlib.sha256(b"".join(line.encode("utf-8") + b"\x00" for line in lines)).hexdigest()
    assert ts.sha256 == digest == _FIRST20_SHA256
    prov = ts.to_provenance()
    assert prov == {
        "name": "wikitext-2-raw-v1/test lines>100 first 20",
        "source": f"file:{wikitext_path.resolve()}",
        "selection": ts.selection,
        "n_texts": 20,
        "sha256": _FIRST20_SHA256,
        "file_sha256": WIKITEXT2_TEST_RAW_SHA256,
    }
    json.dumps(prov)


def test_split_text_joined_as_hf_guide(wikitext_path: Path) -> None:
    rows, _ = load_wikitext_rows(wikitext_path)
    ts = wikitext_split_text(wikitext_path)
    assert ts.texts == ("\n\n".join(rows),)
    # README: 1,288,556 characters; the 1,467 blank " \n" lines become "", plus "\n\n" separators
    assert len(ts.texts[0]) == 1_288_556 - 2 * 1467 + 2 * (4358 - 1)
    assert ts.source_sha256 == WIKITEXT2_TEST_RAW_SHA256


def test_env_var_route(wikitext_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_WIKITEXT, str(wikitext_path))
    rows, source = load_wikitext_rows()
    assert len(rows) == 4358
    assert source == f"file:{wikitext_path.resolve()}"
    assert wikitext_lines(allow_fallback=False).source == source


def test_explicit_path_beats_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = _write_raw(tmp_path / "env.raw", ["from the environment variable " * 5])
    arg_file = _write_raw(tmp_path / "arg.raw", ["from the explicit argument " * 5])
    monkeypatch.setenv(ENV_WIKITEXT, str(env_file))
    rows, source = load_wikitext_rows(arg_file)
    assert source == f"file:{arg_file.resolve()}"
    assert rows[0].startswith(" from the explicit argument")
    # and a broken env var is not even looked at when a path is given
    monkeypatch.setenv(ENV_WIKITEXT, str(tmp_path / "missing.raw"))
    assert load_wikitext_rows(arg_file)[1] == f"file:{arg_file.resolve()}"


def test_missing_file_error_names_path_and_origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere" / "wiki.test.raw"
    with pytest.raises(TextSourceError, match="path argument") as exc:
        load_wikitext_rows(missing)
    assert str(missing) in str(exc.value)
    monkeypatch.setenv(ENV_WIKITEXT, str(missing))
    with pytest.raises(TextSourceError, match=ENV_WIKITEXT) as exc:
        load_wikitext_rows()
    assert str(missing) in str(exc.value)
    assert isinstance(exc.value, RuntimeError)


def test_configured_broken_path_never_falls_back(tmp_path: Path, no_env: None) -> None:
    with pytest.raises(TextSourceError) as exc:
        wikitext_lines(path=tmp_path / "missing.raw", allow_fallback=True)
    assert not isinstance(exc.value, WikiTextUnavailableError)


def test_unreadable_or_empty_file(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.raw"
    bad.write_bytes(b" caf\xe9 \n")
    with pytest.raises(TextSourceError, match="UTF-8"):
        load_wikitext_rows(bad)
    empty = tmp_path / "empty.raw"
    empty.write_text(" \n \n", encoding="utf-8")
    with pytest.raises(TextSourceError, match="no text"):
        load_wikitext_rows(empty)
    with pytest.raises(TextSourceError, match="directory|read"):
        load_wikitext_rows(tmp_path)


def test_too_few_qualifying_rows(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "w.raw", ["x" * 150, "short", "y" * 150])
    assert wikitext_lines(2, 100, path=path).texts == (" " + "x" * 150 + " \n", " " + "y" * 150 + " \n")
    with pytest.raises(TextSourceError, match="only 2 rows"):
        wikitext_lines(3, 100, path=path)
    with pytest.raises(ValueError):
        wikitext_lines(0, 100, path=path)


# ---------------------------------------------------------------------------------------------------
# the datasets route and "nothing available"


def test_datasets_route(wikitext_path: Path, no_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    file_rows, _ = load_wikitext_rows(wikitext_path)
    calls: list[tuple] = []

    def fake_load_dataset(*args: object, **kwargs: object) -> dict[str, list[str]]:
        calls.append((args, kwargs))
        return {"text": list(file_rows)}

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows, source = load_wikitext_rows()
    assert calls == [(("Salesforce/wikitext", "wikitext-2-raw-v1"), {"split": "test"})]
    assert source == HF_SOURCE == "datasets:Salesforce/wikitext:wikitext-2-raw-v1:test"
    ts = wikitext_lines()
    assert ts.source == HF_SOURCE
    assert ts.sha256 == wikitext_lines(path=wikitext_path).sha256
    assert "file_sha256" not in ts.to_provenance()


def test_nothing_available_lists_three_ways(
    no_env: None, datasets_unreachable: list, no_gensim: None
) -> None:
    with pytest.raises(WikiTextUnavailableError) as exc:
        wikitext_lines()
    msg = str(exc.value)
    assert "--wikitext PATH" in msg and f"{ENV_WIKITEXT}=PATH" in msg and "wiki.test.raw" in msg
    assert "(2)" in msg and "datasets" in msg and "Salesforce/wikitext" in msg
    assert "(3)" in msg and "pip install gensim" in msg
    assert "ConnectionError" in msg
    assert len(datasets_unreachable) == 1
    with pytest.raises(WikiTextUnavailableError, match="pip install gensim"):
        load_wikitext_rows()
    with pytest.raises(WikiTextUnavailableError, match="--wikitext PATH"):
        wikitext_split_text()


def test_no_fallback_when_disallowed(
    no_env: None, datasets_unreachable: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*a: object, **k: object) -> None:
        raise AssertionError("fallback used although allow_fallback=False")

    monkeypatch.setattr(T, "gensim_fallback", must_not_run)  # the name wikitext_lines calls
    with pytest.raises(WikiTextUnavailableError, match="disabled"):
        wikitext_lines(allow_fallback=False)


# ---------------------------------------------------------------------------------------------------
# gensim fallback


def test_fallback_used_when_wikitext_unavailable(no_env: None, datasets_unreachable: list) -> None:
    pytest.importorskip("gensim")
    ts = wikitext_lines(5, 100)
    assert ts.source.startswith("gensim-fallback:")
    assert "NOT WikiText-2" in ts.name
    assert ts == gensim_fallback(5, 100)


def test_gensim_fallback_texts() -> None:
    pytest.importorskip("gensim")
    ts = gensim_fallback(20, 100)
    assert len(ts.texts) == 20
    assert all(len(t) > 100 for t in ts.texts)
    assert ts.source == f"gensim-fallback:{engine_gensim_texts.GENSIM_WIKI_SAMPLE}"
    assert "NOT WikiText-2" in ts.name and "NOT WikiText-2" in ts.selection
    assert ts.texts[0].startswith("Anarchism is a political philosophy")
    for t in ts.texts:  # the cheap stripper left no obvious markup
        assert not any(m in t for m in ("[[", "]]", "{{", "}}", "''", "<ref", "==", "\n"))
    again = gensim_fallback(20, 100)
    assert again.sha256 == ts.sha256 and again.texts == ts.texts
    assert gensim_fallback(5, 100).texts == ts.texts[:5]
    longer = gensim_fallback(5, 400)
    assert all(len(t) > 400 for t in longer.texts)
    prov = ts.to_provenance()
    assert prov["n_texts"] == 20 and len(prov["file_sha256"]) == 64


def test_gensim_absent(no_gensim: None) -> None:
    with pytest.raises(TextSourceError, match="pip install gensim"):
        gensim_fallback(5, 100)


def test_markup_stripper() -> None:
    src = (
        "'''Foo''' is a [[bar (thing)|bar]] of [[baz]].<ref name=x>cite</ref> "
        "{{citation needed|date=2020{{nested}}}}It is ''old''.[[Category:Things]]\n"
        "== Heading ==\n* a list item that is long enough to be kept if lists were kept at all ok\n"
        "[[File:X.jpg|thumb|A caption with [[link]]]]See [http://example.org the site] &amp; more."
    )
    paragraphs = list(engine_gensim_texts._paragraphs(src))
    assert paragraphs == ["Foo is a bar of baz. It is old.", "See the site & more."]


# ---------------------------------------------------------------------------------------------------
# TextSet and its hash


def test_sha256_definition_stable_and_order_sensitive() -> None:
    a = TextSet(name="a", source="prompts:/x", texts=("first", "sécond"), selection="test")
    expected = hashlib.sha256(b"first" + b"\x00" + "sécond".encode() + b"\x00").hexdigest()
    assert a.sha256 == expected == sha256_of_texts(["first", "sécond"])
    assert a.sha256 == TextSet(name="other", source="s", texts=("first", "sécond"), selection="").sha256
    swapped = TextSet(name="a", source="prompts:/x", texts=("sécond", "first"), selection="test")
    assert swapped.sha256 != a.sha256
    assert sha256_of_texts(["ab", "c"]) != sha256_of_texts(["a", "bc"])
    assert sha256_of_texts(["a"]) != sha256_of_texts(["a", ""])


def test_textset_validation() -> None:
    ts = TextSet(name="n", source="s", texts=["x", "y"], selection="r")  # type: ignore[arg-type]
    assert ts.texts == ("x", "y") and len(ts) == 2 and list(ts) == ["x", "y"]
    with pytest.raises(ValueError, match="NUL"):
        TextSet(name="n", source="s", texts=("a\x00b",), selection="r")
    with pytest.raises(ValueError, match="no texts"):
        TextSet(name="n", source="s", texts=(), selection="r")
    with pytest.raises(TypeError):
        TextSet(name="n", source="s", texts=("a", 3), selection="r")  # type: ignore[arg-type]
    prov = ts.to_provenance()
    assert set(prov) == {"name", "source", "selection", "n_texts", "sha256"}


# ---------------------------------------------------------------------------------------------------
# prompt files


def test_prompt_file_lines(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"The capital of France is\r\n\n   \n  Indented prompt \nlast line without newline")
    ts = prompt_file(path)
    assert ts.texts == ("The capital of France is", "  Indented prompt ", "last line without newline")
    assert ts.source == f"prompts:{path.resolve()}"
    assert ts.to_provenance()["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_prompt_file_json(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(["one\ntwo", "three"]), encoding="utf-8")
    assert prompt_file(path).texts == ("one\ntwo", "three")


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("empty.txt", "", "no prompts"),
        ("blank.txt", "\n  \n", "no prompts"),
        ("empty.json", "[]", "no prompts"),
        ("items.json", '["ok", 3, "x"]', "item 1 is int"),
        ("blankitem.json", '["ok", "  "]', "item 1 is an empty string"),
        ("dict.json", '{"a": "b"}', "JSON list"),
        ("broken.json", '["a",', "not valid JSON"),
    ],
)
def test_prompt_file_errors(tmp_path: Path, name: str, content: str, pattern: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TextSourceError, match=pattern) as exc:
        prompt_file(path)
    assert str(path.resolve()) in str(exc.value)


def test_prompt_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "none.txt"
    with pytest.raises(TextSourceError) as exc:
        prompt_file(missing)
    assert str(missing) in str(exc.value)
