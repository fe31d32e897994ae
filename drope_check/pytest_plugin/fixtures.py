"""The fixtures the claims tests use (``claim_verdict``, ``pair_measurements``, ...) and :func:`check_claim`, which fails a test on a claim outside its band."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drope_check.claims.claim_file import (
    Claim,
)
from drope_check.claims.evidence_spec import AUTHOR_FILES, SUITE
from drope_check.claims.regen import measured_how_text, regen_verdict
from drope_check.claims.verdicts import Verdict, pending_reason, skipped_verdict, strict_verdict, verdict_for
from drope_check.pytest_plugin.session import (
    AUTHOR_FILES_PROPERTY,
    CLAIM_PROPERTY,
    PAIR_PROPERTY,
    MeasurementFailed,
    PairUnavailable,
    SessionState,
    measure_options,
    session_state,
)
from drope_check.sources.author_files import (
    AuthorFilesBroken,
    AuthorFilesUnavailable,
    author_files_skip,
    author_files_verdict,
)


class ClaimNotHeld(pytest.fail.Exception):  # type: ignore[misc,name-defined]
    """A claim is outside its band. Raised as a clean failure (no traceback) with the full verdict."""


@pytest.fixture(scope="session")
def drope_measure_options(request: pytest.FixtureRequest) -> Any:
    """Options passed to ``measure_pair``: a ``drope_check.measurements.measure.MeasureOptions`` built from
    ``--drope-device`` / ``--drope-dtype`` / ``--drope-quantization`` / ``--drope-wikitext`` /
    ``--drope-device-map`` / ``--drope-offload-folder``, or None
    (the engine's defaults) when none is given. A conftest may override this fixture."""
    return measure_options(request.config)


@pytest.fixture(scope="session")
def claim_pairs(request: pytest.FixtureRequest) -> list[str]:
    """The pairs this run judges (``--pair``, the pairs of ``--measurements``, or every claim file):
    a test that loads a pair's models itself asks this first, so ``--pair gemma3-270m`` never loads
    SmolLM2."""
    return list(session_state(request.config).selected_pairs())


@pytest.fixture(scope="session")
def pair_measurements(
    request: pytest.FixtureRequest, drope_measure_options: Any
) -> Callable[[str], dict[str, Any]]:
    """``pair_measurements(pair) -> dict``: the measurements of a pair, measured once per session
    (or read from ``--measurements``). Raises :class:`PairUnavailable` when its models are not
    available here and :class:`MeasurementFailed` when measuring failed."""
    state = session_state(request.config)

    def get(pair: str) -> dict[str, Any]:
        return state.measurements(pair, drope_measure_options)

    return get


def _record(record_property: Callable[[str, Any], None], verdict: Verdict) -> None:
    record_property(CLAIM_PROPERTY, json.dumps(verdict.to_dict(), sort_keys=True))


def _record_pair(
    state: SessionState,
    record_property: Callable[[str, Any], None],
    pair: str,
    data: Any,
    available: bool,
    reason: str,
) -> None:
    if pair in state.recorded_pairs:
        return
    from drope_check.report.build import pair_info

    state.recorded_pairs.add(pair)
    info = pair_info(
        pair,
        data,
        state.claim_set(pair),
        available=available,
        reason=reason,
        origin=state.origins.get(pair, ""),
    )
    record_property(PAIR_PROPERTY, json.dumps(info, sort_keys=True))


@pytest.fixture
def claim_source() -> str:
    """The evidence source a claims test judges (parametrized by this plugin; ``suite`` otherwise)."""
    return SUITE


def _record_author_files(
    state: SessionState, record_property: Callable[[str, Any], None], claim: Claim, path: Path, data: Any
) -> None:
    if claim.pair in state.recorded_author_files:
        return
    from drope_check.report.build import pair_info

    state.recorded_author_files.add(claim.pair)
    era = (data.get("upstream") or {}).get("era", "?")
    info = pair_info(
        claim.pair,
        data,
        state.claim_set(claim.pair),
        origin=f"the report author's committed result files (era {era}) from {path}",
    )
    info["upstream"] = data.get("upstream")
    info.pop(
        "created", None
    )  # the import's wall-clock time: serial and xdist runs must write the same report
    record_property(AUTHOR_FILES_PROPERTY, json.dumps(info, sort_keys=True))


def _author_files_claim_verdict(
    state: SessionState, claim: Claim, record_property: Callable[[str, Any], None]
) -> Verdict:
    """The verdict of ``claim`` against the author's files; no copy found is a skip (an error under
    ``--strict-claims``), a copy that cannot be imported an error."""
    try:
        path, data = state.upstream()
    except AuthorFilesUnavailable as exc:
        verdict = author_files_skip(claim, str(exc))
        if state.strict:
            verdict = author_files_skip(
                claim, f"--strict: this claim was not evaluated: {exc}", outcome="error"
            )
        return verdict
    except AuthorFilesBroken as exc:
        return author_files_skip(claim, str(exc), outcome="error")
    _record_author_files(state, record_property, claim, path, data)
    verdict = author_files_verdict(claim, data)
    if state.strict:
        verdict = strict_verdict(claim, verdict)
    return verdict


@pytest.fixture
def claim_verdict(
    request: pytest.FixtureRequest,
    claim: Claim,
    claim_source: str,
    pair_measurements: Callable[[str], dict[str, Any]],
    record_property: Callable[[str, Any], None],
) -> Verdict:
    """The verdict of ``claim`` under ``claim_source`` (recorded for the report).

    ``suite``: against its pair's session measurements; an unavailable pair gives a skip verdict (an
    error with ``--require-models``); a missing metric path or a failed measurement is an error
    naming the claim and the path. ``author-files``: against the author's committed files
    (:func:`drope_check.sources.author_files.author_files_verdict`).
    """
    state = session_state(request.config)
    if claim_source == AUTHOR_FILES:
        verdict = _author_files_claim_verdict(state, claim, record_property)
        _record(record_property, verdict)
        if verdict.outcome == "error":
            pytest.fail(verdict.reason, pytrace=False)
        return verdict
    regenerating = state.regen and claim.status in ("golden", "does-not-generalise")
    why = pending_reason(claim)
    if why is not None and not regenerating and not state.strict:
        verdict = skipped_verdict(claim, why)
        _record(record_property, verdict)
        return verdict
    try:
        data = pair_measurements(claim.pair)
    except PairUnavailable as exc:
        reason = str(exc)
        _record_pair(state, record_property, claim.pair, None, False, reason)
        if state.require_models:
            reason = f"--require-models: {reason}"
            _record(record_property, skipped_verdict(claim, reason, outcome="error"))
            pytest.fail(reason, pytrace=False)
        verdict = skipped_verdict(claim, reason)
        _record(record_property, verdict)
        return verdict
    except MeasurementFailed as exc:
        _record(record_property, skipped_verdict(claim, str(exc), outcome="error"))
        pytest.fail(str(exc), pytrace=False)
    _record_pair(state, record_property, claim.pair, data, True, "")
    if regenerating:
        how = measured_how_text(data, claim, state.origins.get(claim.pair, ""))
        verdict = regen_verdict(claim, data, how)
    else:
        verdict = verdict_for(claim, data, as_pair=state.as_pair)
        if state.strict:
            verdict = strict_verdict(claim, verdict)
    _record(record_property, verdict)
    if verdict.outcome == "error":
        pytest.fail(verdict.reason, pytrace=False)
    return verdict


def check_claim(verdict: Verdict) -> None:
    """The body of every claims test: pass, skip with the reason, or fail with the full verdict."""
    __tracebackhide__ = True
    if verdict.outcome in ("skip", "regenerated"):
        pytest.skip(verdict.reason or "skipped without a reason (a bug: report it)")
    if verdict.outcome in ("prose-only", "artefact"):  # a finding, never a pass, not a failure of the suite
        pytest.xfail(verdict.reason)
    if verdict.outcome in ("fail", "xfail"):
        raise ClaimNotHeld(verdict.failure_message(), pytrace=False)
    if verdict.outcome == "xpass":
        # a strict xfail would only print the marker's reason; fail with the whole verdict instead
        pytest.fail(verdict.failure_message(), pytrace=False)
    assert verdict.outcome == "pass", verdict.outcome
