"""The pair registry holds every fact about a registered pair in one record (drope_check.models.pairs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from drope_check.models.embedded import DEFAULT_EMBEDDED, is_embedded
from drope_check.models.pairs import EMBEDDED_MODELS, PAIRS, custom_pair, embedded_model
from drope_check.report.evidence import family_rank, family_title

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_every_registered_pair_has_its_claim_file_title_colour_and_extra(name):
    pair = PAIRS[name]
    assert pair.name == name
    assert (REPO / pair.expected_file).is_file(), f"{name}: no claim file {pair.expected_file}"
    assert pair.title and pair.colour, f"{name}: the report needs a family title and a plot colour"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert pair.extra in extras, f"{name}: extra {pair.extra!r} is not in pyproject.toml ({sorted(extras)})"


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_an_embedded_pair_carries_its_own_package(name):
    pair = PAIRS[name]
    embedded_sources = [m.source for m in pair.models() if is_embedded(m.source)]
    if pair.embedded is None:
        assert embedded_sources == []
        return
    assert pair.embedded.key == name
    for source in embedded_sources:
        assert embedded_model(source) is pair.embedded


def test_embedded_models_come_from_the_records_and_plain_embedded_is_the_default_pair():
    assert EMBEDDED_MODELS == {n: p.embedded for n, p in PAIRS.items() if p.embedded is not None}
    assert embedded_model("embedded") is PAIRS[DEFAULT_EMBEDDED].embedded


def test_titles_colours_and_column_order_are_read_from_the_records():
    for rank, (name, pair) in enumerate(PAIRS.items()):
        assert family_title(name) == pair.title
        assert family_title(f"{name}@4bit-nf4") == f"{pair.title} (4bit-nf4)"
        assert family_rank(name) == rank
    assert family_title("custom") == "custom" and family_rank("custom") == len(PAIRS)
    assert custom_pair("a", "b").family_title == "custom"
