"""The ``slow`` mark is set from what a test uses (root conftest.py, ``pytest_collection_modifyitems``).

Claimed: a test whose fixture closure holds ``real_model`` (requested by every fixture that loads an
embedded real model) is collected with the ``slow`` mark, directly or through another fixture; a
claims test of the ``suite`` source is ``slow`` unless the run reads ``--measurements``; a claims test
of the author's files and a unit test are not; marks already set stay; and ``-m 'not slow'`` deselects
exactly the marked ones (the hook runs before the ``-m`` selection).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"

#: A stand-in of the claims plugin's ``--measurements`` option (the plugin itself is disabled in
#: these runs, so the inner session does not collect the repository's claim files).
MEASUREMENTS_OPTION = """

def pytest_addoption(parser):
    parser.addoption("--measurements", action="append", dest="drope_measurements", default=None)
"""

MODULE = """
import pytest


@pytest.fixture
def loaded(real_model):
    return "a model"


def test_through_a_fixture(loaded):
    pass


def test_direct(real_model):
    pass


@pytest.mark.parametrize("claim_source", ["suite", "author-files"])
def test_claim(claim_source):
    pass


@pytest.mark.slow
def test_marked_by_hand():
    pass


def test_unit():
    pass
"""


def test_a_test_requesting_real_model_is_collected_slow(
    request: pytest.FixtureRequest, real_model: None
) -> None:
    assert request.node.get_closest_marker("slow") is not None


def test_a_unit_test_is_not_slow(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("slow") is None


def _collected(pytester: pytest.Pytester, *args: str) -> set[str]:
    pytester.makeconftest(ROOT_CONFTEST.read_text() + MEASUREMENTS_OPTION)
    pytester.makepyfile(test_marks=MODULE)
    pytester.makeini("[pytest]\nmarkers =\n    slow: loads an embedded real model\n")
    result = pytester.runpytest("-p", "no:drope_check", "-p", "no:cacheprovider", "--co", "-q", *args)
    return {line.split("::", 1)[1] for line in result.outlines if line.startswith("test_marks.py::")}


ALL = {
    "test_through_a_fixture",
    "test_direct",
    "test_claim[suite]",
    "test_claim[author-files]",
    "test_marked_by_hand",
    "test_unit",
}


def test_the_marks_follow_the_fixtures_and_the_claim_source(pytester: pytest.Pytester) -> None:
    slow = _collected(pytester, "-m", "slow")
    assert slow == {"test_through_a_fixture", "test_direct", "test_claim[suite]", "test_marked_by_hand"}
    assert _collected(pytester, "-m", "not slow") == ALL - slow


def test_with_a_measurements_file_the_suite_claims_are_not_slow(pytester: pytest.Pytester) -> None:
    slow = _collected(pytester, "-m", "slow", "--measurements", "m.json")
    assert slow == {"test_through_a_fixture", "test_direct", "test_marked_by_hand"}
