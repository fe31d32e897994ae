"""Root fixtures only. The claims fixtures (pairs, measurements) live in the drope_check pytest
plugin (drope_check/pytest_plugin/hooks.py), so an installed drope_check serves any checkout.

Here: the hypothesis profiles, and the ``slow`` mark of every test (in tests/ and claims/) that loads
an embedded real model, set from what the test uses (``real_model`` fixture, suite claims tests)."""

import os

import pytest
from hypothesis import HealthCheck, settings

# Deterministic property tests in CI (a red CI must be reproducible); exploratory locally.
settings.register_profile("ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


# ---------------------------------------------------------------------------------------------------
# ``slow``: every test that loads an embedded real model, marked from what it uses

#: A fixture every fixture loading an embedded real model (SmolLM2-135M or Gemma-3-270M, CPU) requests;
#: a test with it anywhere in its fixture closure is marked ``slow`` by the hook below.
REAL_MODEL = "real_model"


@pytest.fixture(scope="session")
def real_model() -> None:
    """Requested by the fixtures that load an embedded real model: it marks their tests ``slow``
    (:func:`pytest_collection_modifyitems`); it provides nothing."""


def loads_real_model(item: pytest.Item) -> bool:
    """Whether ``item`` loads an embedded real model when it runs.

    * its fixture closure holds :data:`REAL_MODEL` (the model-loading fixtures request it), or
    * it is a step of the GPU job's rehearsal (mark ``rehearsal``: child processes download the
      stand-in models from a local hub and measure them, ~150 s together on the 2-core machine;
      an integration test, not a unit or property test), or
    * it is a claims test of the ``suite`` source (the plugin's ``claim_source`` parameter) in a run
      that measures its pair in the session, i.e. without ``--measurements``: the pair's first such
      test measures both models (``measure_pair``), the others wait on it. A claims test judged on the
      author's files, or on a measurements file, loads no model.
    """
    if REAL_MODEL in getattr(item, "fixturenames", ()) or item.get_closest_marker("rehearsal") is not None:
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is None or callspec.params.get("claim_source") != "suite":
        return False
    return not item.config.getoption("drope_measurements", default=None)


@pytest.hookimpl(tryfirst=True)  # before the ``-m`` deselection reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that loads an embedded real model (:func:`loads_real_model`) or drives a
    child pytest session (:func:`runs_a_child_session`), so that ``pytest -m 'not slow'`` runs the unit
    and property tests alone; marks already there stay."""
    for item in items:
        if item.get_closest_marker("slow") is None and (loads_real_model(item) or runs_a_child_session(item)):
            item.add_marker(pytest.mark.slow)


#: Fixtures that run another pytest session or drope-check process (seconds each: a fresh interpreter
#: importing torch and transformers): end-to-end integration tests, not unit or property tests.
CHILD_SESSION_FIXTURES = ("pytester", "testdir")


def runs_a_child_session(item: pytest.Item) -> bool:
    """Whether ``item`` drives a whole child pytest session (``pytester``); the GPU rehearsal's steps are
    marked by :func:`loads_real_model`."""
    return any(name in getattr(item, "fixturenames", ()) for name in CHILD_SESSION_FIXTURES)
