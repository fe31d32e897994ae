"""pytest plugin of drope_check (registered through the ``pytest11`` entry point).

It turns every claim of ``expected/<pair>.toml`` into a test of the ``claims/`` modules and ends the
run with a tolerance report. Options:

``--pair NAME``        (repeatable) judge this pair's claims; default: every pair with a claim file.
                       A pair whose models are not available here has all its claims skipped with
                       the exact reason and the command that runs them where they are.
``--require-models``   a pair that cannot be loaded is an ERROR, not a skip (GPU runners: a run must
                       never go green by skipping).
``--measurements FILE`` (repeatable) judge a measurements JSON instead of measuring; the file's
                       ``pair`` names its pair (or the single ``--pair`` for a ``custom`` file).
``--claims-report DIR`` write ``claims-report.md``, ``claims-report.json`` and per-layer plots.
``--regen-expected``   rewrite the ``golden`` values (and the recorded measurements of
                       ``does-not-generalise`` claims) from this run; report-derived values are never
                       touched.
``--strict-claims``    (also implied by pytest's ``--strict``) a claim of an available pair that was not evaluated (pending golden, another
                       text set or protocol, a skip for any reason but "about a recalibrated DroPE
                       model") is an ERROR: a run that checked nothing is never green.
``--as-pair``          judge ``--measurements`` of other models than the pair's (refused otherwise);
                       every verdict then names the measured models.
``--audit``            also run the confound audit of each available pair (``drope_check.audit.run``).
``--audit-pair NAME``  (repeatable) audit only these pairs; implies ``--audit``.
``--upstream PATH``    the report author's committed result files (a git clone of the upstream repository
                       or a ``<commit>/<path>`` folder; also ``DROPE_CHECK_UPSTREAM``). Default: the
                       shipped copy ``shared/data/upstream-results`` above the repository
                       (:mod:`drope_check.sources.author_files`).
``--expected-dir DIR`` where the claim files live (default: ``expected/`` under the rootdir, else the
                       repository's).
``--drope-device``, ``--drope-dtype``, ``--drope-quantization {nf4,nf4-double,fp4}``, ``--drope-wikitext``,
``--drope-device-map auto``, ``--drope-offload-folder DIR``
                       how ``measure_pair`` loads models and texts (fixture ``drope_measure_options``); a
                       device map spreads a model larger than one device over every visible GPU.

How a claims module looks: it sets ``CLAIM_FAMILY = "sink"`` and has a test taking ``claim`` and
``claim_verdict``; this plugin parametrizes ``claim`` over the family's claims of every selected pair
(ids like ``sink_rate_average[smollm2-135m:rope]``, grouped per pair for ``--dist loadgroup``), and
``claim_verdict`` judges it against the session's measurements.

Evidence sources: a claim with a ``[claim.evidence."author-files"]`` table
(:mod:`drope_check.claims.evidence_spec`) has one test per source, ``claim_source`` naming it:
``sink_rate_average[llama2-7b:rope:author-files]`` judges the author's committed files (no model
needed: evaluated on every machine), ``sink_rate_average[llama2-7b:rope:suite]`` this suite's
measurement. A prose-only claim (no committed file holds its number) is reported as an expected
failure (``pytest.xfail``): a finding, never a pass, and evaluated for ``--strict-claims``. Under
``--strict-claims`` an author-files claim that was not evaluated (no copy of the files found, a path
the files lack, another protocol) is an error. Each verdict travels to the
controller as a ``record_property`` (``drope_claim``), so ``pytest -n 2 --dist loadgroup`` writes the
same report as a serial run: the report is assembled and written on the controller only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drope_check.claims.bands import fmt
from drope_check.claims.claim_file import (
    Claim,
    ClaimsFileError,
    default_expected_dir,
)
from drope_check.claims.evidence_spec import AUTHOR_FILES, SUITE
from drope_check.pytest_plugin.aggregate import Aggregator

# pytest finds a plugin's fixtures among the names of the module the entry point registers: the
# fixtures are written in fixtures.py and named here.
from drope_check.pytest_plugin.fixtures import (
    ClaimNotHeld,
    claim_pairs,
    claim_source,
    claim_verdict,
    drope_measure_options,
    pair_measurements,
)
from drope_check.pytest_plugin.session import (
    STATE_KEY,
    SessionState,
    claims_report_dir,
    is_worker,
    pair_available_here,
    session_state,
)
from drope_check.sources.author_files import (
    AuthorFilesBroken,
    AuthorFilesUnavailable,
)

__all__ = ["claim_pairs", "claim_source", "claim_verdict", "drope_measure_options", "pair_measurements"]


# ----------------------------------------------------------------------------------------------
# hooks


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("drope_check", "drope_check claims")
    group.addoption(
        "--pair",
        action="append",
        dest="drope_pairs",
        default=None,
        metavar="NAME",
        help="judge this pair's claims (repeatable; default: every pair with a claim file)",
    )
    group.addoption(
        "--require-models",
        action="store_true",
        dest="drope_require_models",
        default=False,
        help="a pair whose models cannot be loaded is an error, not a skip",
    )
    group.addoption(
        "--claims-report",
        dest="drope_claims_report",
        default=None,
        metavar="DIR",
        help="write claims-report.md, claims-report.json and per-layer plots into DIR",
    )
    group.addoption(
        "--regen-expected",
        action="store_true",
        dest="drope_regen",
        default=False,
        help="rewrite golden values in expected/<pair>.toml from this run (never report values)",
    )
    group.addoption(
        "--strict-claims",
        action="store_true",
        dest="drope_strict",
        default=False,
        help="a claim of an available pair that was not evaluated (other than one about a recalibrated "
        "DroPE model) is an error; pytest's own --strict (strict mode) implies it",
    )
    group.addoption(
        "--as-pair",
        action="store_true",
        dest="drope_as_pair",
        default=False,
        help="judge --measurements of other models than the pair's; every verdict names the measured models",
    )
    group.addoption(
        "--measurements",
        action="append",
        dest="drope_measurements",
        default=None,
        metavar="FILE",
        help="judge this measurements JSON instead of measuring (repeatable, one per pair)",
    )
    group.addoption(
        "--upstream",
        dest="drope_upstream",
        default=None,
        metavar="PATH",
        help="the report author's result files: a git clone of DavidDemitriAfrica/drope-activations or a "
        "<commit>/<path> folder (default: $DROPE_CHECK_UPSTREAM, else shared/data/upstream-results above "
        "the repository)",
    )
    group.addoption(
        "--expected-dir",
        dest="drope_expected_dir",
        default=None,
        metavar="DIR",
        help="folder of the claim files (default: <rootdir>/expected)",
    )
    group.addoption(
        "--drope-device",
        dest="drope_device",
        default=None,
        metavar="DEVICE",
        help="device for measuring (default: the engine's choice, cuda if present)",
    )
    group.addoption(
        "--drope-dtype",
        dest="drope_dtype",
        default=None,
        metavar="DTYPE",
        help="model dtype for measuring: float32, bfloat16, float16 (default: the engine's choice)",
    )
    group.addoption(
        "--drope-quantization",
        dest="drope_quantization",
        default=None,
        choices=("nf4", "nf4-double", "fp4"),
        help="load the models in bitsandbytes 4-bit as upstream did (GPU only; nf4-double = its first run)",
    )
    group.addoption(
        "--drope-device-map",
        dest="drope_device_map",
        default=None,
        metavar="MAP",
        help="accelerate's device map for models larger than one device (auto, balanced, balanced_low_0, "
        "sequential): layers spread over the visible GPUs, then CPU memory, then --drope-offload-folder",
    )
    group.addoption(
        "--drope-offload-folder",
        dest="drope_offload_folder",
        default=None,
        metavar="DIR",
        help="with --drope-device-map: where layers that fit neither the GPUs nor CPU memory are kept",
    )
    group.addoption(
        "--audit",
        action="store_true",
        dest="drope_audit",
        default=False,
        help="also run the confound audit of each available pair (drope_check.audit.run): audit/<pair>/ "
        "in the --claims-report DIR (else ./audit/<pair>/), linked from the claims report",
    )
    group.addoption(
        "--audit-pair",
        action="append",
        dest="drope_audit_pairs",
        default=None,
        metavar="PAIR",
        help="audit only this pair (repeatable; implies --audit): e.g. CI audits the default pair "
        "and llama2-7b's author files but not the opt-in Gemma pair",
    )
    group.addoption(
        "--drope-wikitext",
        dest="drope_wikitext",
        default=None,
        metavar="PATH",
        help="a local wiki.test.raw for the WikiText-2 texts (else DROPE_CHECK_WIKITEXT or the hub)",
    )
    group.addoption(
        "--drope-allow-incomplete-weights",
        action="store_true",
        dest="drope_allow_incomplete_weights",
        default=False,
        help="measure checkpoints whose tensors do not match the model (refused otherwise); what did not "
        "match is recorded in the provenance and shown in the report",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xdist_group(name): keep tests of one group on one xdist worker")
    config.addinivalue_line("markers", "drope_claim: a claim of the report judged by drope_check")
    if is_worker(config):  # split the cores (and GPUs) between workers before any model loads
        from drope_check.engine.workers import CORES_DIR_KEY, apply_to_this_worker, join_core_share

        apply_to_this_worker(config.workerinput["workerid"], int(config.workerinput["workercount"]))
        join_core_share(config.workerinput.get(CORES_DIR_KEY), config.workerinput["workerid"])
    given = config.getoption("drope_expected_dir", None)
    if given:
        expected = Path(given).resolve()
    elif (Path(str(config.rootpath)) / "expected").is_dir():
        expected = Path(str(config.rootpath)) / "expected"
    else:
        expected = default_expected_dir()
    _check_claims_report_option(config)
    state = SessionState(config=config, expected_dir=expected)
    config.stash[STATE_KEY] = state
    config.pluginmanager.register(Aggregator(state), "drope_check-aggregator")
    if config.getoption("drope_pairs") or config.getoption("drope_measurements"):
        state.selected_pairs()  # an unknown pair or an unreadable file is a usage error, before collection
    audit_pairs = config.getoption("drope_audit_pairs", None) or []
    if audit_pairs:
        selected = state.selected_pairs()
        stray = [p for p in audit_pairs if p not in selected]
        if stray:
            raise pytest.UsageError(
                f"--audit-pair {', '.join(stray)}: not a pair this run judges ({', '.join(selected) or 'none'})"
            )
    try:
        state.upstream_path()
    except AuthorFilesBroken as exc:  # --upstream / DROPE_CHECK_UPSTREAM is not a folder: a usage error
        raise pytest.UsageError(str(exc)) from None
    except AuthorFilesUnavailable:
        pass  # the author-files tests skip (or error under --strict-claims) saying where it looked
    if not is_worker(config):
        _fit_workers_to_pairs(config, state)


def _fit_workers_to_pairs(config: pytest.Config, state: SessionState) -> None:
    """``-n N`` on a claims-only run: one xdist worker per pair with work here, at most N; serial
    with one (:func:`drope_check.engine.workers.planned_workers`). Runs before xdist starts its workers
    (xdist's own ``pytest_configure`` is ``trylast``)."""
    tx = list(config.getoption("tx", None) or [])
    if not tx or config.getoption("dist", "no") == "no" or config.getoption("collectonly", False):
        return
    from drope_check.engine.workers import claims_only, planned_workers

    if not claims_only(
        list(config.args), Path(str(config.invocation_params.dir)), Path(str(config.rootpath))
    ):
        return
    files = state.measurement_files()
    working = [p for p in state.selected_pairs() if p in files or pair_available_here(p)[0]]
    state.working_pairs = working
    wanted = planned_workers(len(tx), len(working))
    if wanted == len(tx):
        return
    state.worker_note = (
        f"drope_check: {len(working)} pair(s) to measure or judge here ({', '.join(working) or 'none'}): "
        + ("running serially" if wanted == 1 else f"{wanted} xdist workers")
        + f" instead of {len(tx)} (every claim of a pair runs on the worker that measures it)"
    )
    if wanted == 1:
        config.option.dist = "no"
        config.option.tx = []
        config.option.numprocesses = 0
    else:
        config.option.tx = tx[:wanted]
        config.option.numprocesses = wanted


def pytest_report_header(config: pytest.Config) -> str | None:
    state = config.stash.get(STATE_KEY, None)
    return state.worker_note if state is not None else None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Tell every xdist worker where measuring workers share the cores (drope_check.engine.workers.CoreShare)."""
    import tempfile

    from drope_check.engine.workers import CORES_DIR_KEY

    state = session_state(node.config)
    if state.cores_dir is None:
        state.cores_dir = tempfile.mkdtemp(prefix="drope-check-cores-")
    node.workerinput[CORES_DIR_KEY] = state.cores_dir


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is not None and state.cores_dir is not None and not is_worker(config):
        import shutil

        shutil.rmtree(state.cores_dir, ignore_errors=True)


def _check_claims_report_option(config: pytest.Config) -> None:
    """``--claims-report`` names a folder that exists or can be created and is writable: a usage
    error now, before anything is measured, never a traceback when the report is written."""
    from drope_check.errors import UserError
    from drope_check.output_paths import check_output_folder

    report_dir = claims_report_dir(config)
    if report_dir is None or is_worker(config):
        return
    try:
        check_output_folder(report_dir, "--claims-report")
    except UserError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n N`` (``--dist load`` or ``loadgroup``): every claim test of a pair on one worker, the
    pairs with work here queued first (see drope_check.engine.workers)."""
    if config.getvalue("dist") not in ("load", "loadgroup"):
        return None
    from drope_check.engine.workers import make_pair_group_scheduler

    state = session_state(config)
    selected = state.selected_pairs()
    working = state.working_pairs if state.working_pairs is not None else selected
    groups: dict[str, str] = {}
    for pair in [*working, *(p for p in selected if p not in working)]:
        try:
            claims = state.claim_set(pair).claims
        except ClaimsFileError:
            continue  # reported at collection
        groups.update({claim.key: f"drope-{pair}" for claim in claims})
    return make_pair_group_scheduler(config, log, groups, first=[f"drope-{p}" for p in working])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    family = getattr(metafunc.module, "CLAIM_FAMILY", None)
    if family is None or "claim" not in metafunc.fixturenames:
        return
    state = session_state(metafunc.config)
    params = []
    for pair in state.selected_pairs():
        try:
            claim_set = state.claim_set(pair)
        except ClaimsFileError as exc:  # reported as a collection error: the message alone, no traceback
            raise pytest.Collector.CollectError(str(exc)) from None
        for claim in claim_set.by_family(family):
            for source in claim.sources:
                params.append(
                    pytest.param(claim, source, id=claim.source_key(source), marks=_marks(claim, source))
                )
    if (
        not params
    ):  # no selected pair has a claim of this family (the Methods statements are llama2-7b's only)
        state.empty_families.add((str(metafunc.definition.path), metafunc.definition.originalname))
    metafunc.parametrize(("claim", "claim_source"), params)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A claims test of a family no selected pair has is deselected, not reported as an empty skip."""
    empty = session_state(config).empty_families
    if not empty:
        return
    drop = [i for i in items if (str(i.path), getattr(i, "originalname", i.name)) in empty]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [i for i in items if i not in drop]


def _marks(claim: Claim, source: str) -> list[Any]:
    """xdist group (the author-files tests need no models: a group of their own) and strict xfails."""
    group = f"drope-{claim.pair}" if source == SUITE else f"drope-{claim.pair}-{source}"
    marks = [pytest.mark.xdist_group(name=group), pytest.mark.drope_claim]
    if source == SUITE and claim.status == "does-not-generalise" and not claim.pending:
        marks.append(
            pytest.mark.xfail(
                strict=True,
                raises=ClaimNotHeld,
                reason=(
                    f"does not generalise to {claim.pair}: this suite measured {fmt(claim.recorded, ratio=claim.is_ratio)} "
                    f"where the report claims {fmt(claim.value, ratio=claim.is_ratio)} ({claim.band_text()})"
                ),
            )
        )
    if source == AUTHOR_FILES and claim.author_files is not None and claim.author_files.contradicted:
        marks.append(
            pytest.mark.xfail(
                strict=True,
                raises=ClaimNotHeld,
                reason=f"the author's own files contradict the claim: {claim.author_files.contradicted}",
            )
        )
    return marks


# ----------------------------------------------------------------------------------------------
# fixtures
