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

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from drope_check.claims.bands import fmt
from drope_check.claims.claim_file import (
    Claim,
    ClaimSet,
    ClaimsFileError,
    MeasurementsMismatch,
    available_pairs,
    check_measurements,
    default_expected_dir,
    load_claims,
)
from drope_check.claims.evidence_spec import AUTHOR_FILES, SUITE
from drope_check.claims.regen import measured_how_text, regen_expected, regen_verdict, updates_from_verdicts
from drope_check.claims.verdicts import Verdict, pending_reason, skipped_verdict, strict_verdict, verdict_for
from drope_check.measurements.validate import MeasurementsFileError, load_measurements
from drope_check.sources.author_files import (
    AuthorFilesBroken,
    AuthorFilesUnavailable,
    author_files_measurements,
    author_files_skip,
    author_files_verdict,
    locate_upstream,
)

__all__ = ["ClaimNotHeld", "PairUnavailable", "check_claim"]

CLAIM_PROPERTY = "drope_claim"
PAIR_PROPERTY = "drope_pair"
AUTHOR_FILES_PROPERTY = "drope_author_files"


class ClaimNotHeld(pytest.fail.Exception):  # type: ignore[misc,name-defined]
    """A claim is outside its band. Raised as a clean failure (no traceback) with the full verdict."""


class PairUnavailable(Exception):
    """The models of a pair cannot be loaded here; ``str()`` is the skip reason."""


class MeasurementFailed(Exception):
    """Measuring (or reading the measurements of) a pair failed; every claim of the pair errors."""


@dataclass
class _State:
    config: pytest.Config
    expected_dir: Path
    claim_sets: dict[str, ClaimSet] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # pair -> dict | Exception
    origins: dict[str, str] = field(default_factory=dict)
    recorded_pairs: set[str] = field(default_factory=set)
    recorded_author_files: set[str] = field(default_factory=set)
    author_files: dict[str, dict[str, Any]] = field(default_factory=dict)  # pair -> info of the author's files (controller)
    _upstream: Any = None  # the author's files: (path, measurements) or the exception that explains their absence
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)  # nodeid -> verdict dict
    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)  # pair -> info (controller)
    _selected: list[str] | None = None
    _files: dict[str, Path] | None = None
    empty_families: set[tuple[str, str]] = field(default_factory=set)  # claims tests with no claim to judge
    working_pairs: list[str] | None = None  # pairs measured here or judged from a file (controller, xdist runs)
    worker_note: str | None = None  # why this run starts fewer xdist workers than asked (controller)
    cores_dir: str | None = None  # where measuring xdist workers share the cores (controller)

    @property
    def require_models(self) -> bool:
        return bool(self.config.getoption("drope_require_models"))

    @property
    def strict(self) -> bool:
        """``--strict-claims``, or pytest's strict mode (``--strict`` / ``strict = true``): a run in
        strict mode must not go green on claims it never evaluated."""
        try:
            pytest_strict = bool(self.config.getini("strict"))
        except ValueError:  # a pytest without the strict ini option
            pytest_strict = False
        return bool(self.config.getoption("drope_strict")) or pytest_strict

    @property
    def as_pair(self) -> bool:
        return bool(self.config.getoption("drope_as_pair"))

    @property
    def regen(self) -> bool:
        return bool(self.config.getoption("drope_regen"))

    def upstream_path(self) -> Path:
        """Where the author's files are (``--upstream``, ``DROPE_CHECK_UPSTREAM``, or the shipped copy);
        raises :class:`AuthorFilesUnavailable` / :class:`AuthorFilesBroken`."""
        package_repo = Path(__file__).resolve().parents[2]
        return locate_upstream(self.config.getoption("drope_upstream"), [Path(str(self.config.rootpath)), package_repo])

    def upstream(self) -> tuple[Path, dict[str, Any]]:
        """``(path, measurements)`` of the author's files, imported once per process."""
        if self._upstream is None:
            try:
                path = self.upstream_path()
                self._upstream = (path, author_files_measurements(str(path)))
            except (AuthorFilesUnavailable, AuthorFilesBroken) as exc:
                self._upstream = exc
        if isinstance(self._upstream, Exception):
            raise self._upstream
        return self._upstream

    def claim_set(self, pair: str) -> ClaimSet:
        if pair not in self.claim_sets:
            self.claim_sets[pair] = load_claims(pair, self.expected_dir)
        return self.claim_sets[pair]

    def measurement_files(self) -> dict[str, Path]:
        """pair -> measurements file given with ``--measurements``."""
        if self._files is None:
            files: dict[str, Path] = {}
            given = self.config.getoption("drope_measurements") or []
            named = self.config.getoption("drope_pairs") or []
            for raw in given:
                path = Path(raw).resolve()
                try:
                    data = load_measurements(path)
                except MeasurementsFileError as exc:
                    raise pytest.UsageError(f"--measurements: {exc}") from None
                pair = data.get("pair")
                if len(given) == 1 and len(named) == 1:
                    pair = named[0]  # a file of another pair is then refused by check_measurements
                if not isinstance(pair, str):
                    raise pytest.UsageError(f"--measurements {raw}: no 'pair' in the file; name it with --pair")
                if pair in files:
                    raise pytest.UsageError(f"--measurements: two files for pair {pair!r}")
                files[pair] = path
            self._files = files
        return self._files

    def selected_pairs(self) -> list[str]:
        if self._selected is None:
            named = self.config.getoption("drope_pairs")
            have = available_pairs(self.expected_dir)
            if named:
                pairs = list(dict.fromkeys(named))
            elif self.config.getoption("drope_measurements"):
                pairs = sorted(self.measurement_files())
            else:
                pairs = have
            unknown = [p for p in pairs if p not in have]
            if unknown:
                raise pytest.UsageError(
                    f"--pair {', '.join(unknown)}: no claim file {self.expected_dir}/<pair>.toml "
                    f"(claim files: {', '.join(have) or 'none'})"
                )
            self._selected = pairs
        return self._selected

    # measurements ---------------------------------------------------------------------------

    def measurements(self, pair: str, options: Any) -> dict[str, Any]:
        if pair not in self.cache:
            try:
                self.cache[pair] = self._obtain(pair, options)
            except (PairUnavailable, MeasurementFailed) as exc:
                self.cache[pair] = exc
        value = self.cache[pair]
        if isinstance(value, Exception):
            raise value
        return value

    def interventions_needed(self, pair: str) -> str | dict[str, tuple[str, ...]]:
        """What to measure: per model, the interventions this pair's evaluated claims read (the
        audit's rule, :func:`drope_check.audit.run.needed_interventions`); every one under
        ``--regen-expected``, which may fill pending goldens that read any of them."""
        if self.regen:
            return "all"
        from drope_check.audit.run import needed_interventions
        from drope_check.engine.protocol import FAITHFUL

        claim_set = self.claim_set(pair)
        return {role: needed_interventions(claim_set, role, FAITHFUL) for role in ("rope", "drope")}

    def _obtain(self, pair: str, options: Any) -> dict[str, Any]:
        claim_set = self.claim_set(pair)
        files = self.measurement_files()
        if self.config.getoption("drope_measurements"):
            if pair not in files:
                raise PairUnavailable(
                    f"pair {pair}: no measurements file for it among --measurements "
                    f"({', '.join(str(p) for p in files.values())}); measure it with "
                    f"`drope-check measure --pair {pair} --out m.json`"
                )
            path = files[pair]
            try:
                data = load_measurements(path)
                check_measurements(claim_set, data, origin=str(path), as_pair=self.as_pair)
            except (MeasurementsFileError, MeasurementsMismatch) as exc:
                raise MeasurementFailed(f"pair {pair}: {exc}") from None
            self.origins[pair] = path.name
            return data
        ok, reason = _pair_available(pair, getattr(options, "device", None))
        if not ok:
            raise PairUnavailable(f"pair {pair} is not available here: {reason}. To run its claims: {claim_set.run_hint}")
        try:
            measure = importlib.import_module("drope_check.measurements.measure")
            data = measure.measure_pair(pair, protocol=None, interventions=self.interventions_needed(pair), options=options)
            check_measurements(claim_set, data, origin=f"measure_pair({pair!r})", as_pair=self.as_pair)
        except Exception as exc:  # any failure of a model that should load is an error, never a skip
            raise MeasurementFailed(f"pair {pair}: measuring failed: {type(exc).__name__}: {exc}") from exc
        self.origins[pair] = f"measured in this session by measure_pair({pair!r})"
        return data


def _pair_available(pair: str, device: str | None = None) -> tuple[bool, str]:
    """``drope_check.models.availability.pair_available`` (on ``device``, the one ``--drope-device`` names), never raising."""
    try:
        registry = importlib.import_module("drope_check.models.pairs").PAIRS
        availability = importlib.import_module("drope_check.models.availability")
    except Exception as exc:  # the engine may be missing or broken; say so instead of crashing collection
        return False, f"drope_check.models cannot be imported ({type(exc).__name__}: {exc})"
    if pair not in registry:
        return False, f"pair {pair!r} is not registered in drope_check.models.pairs.PAIRS ({', '.join(sorted(registry))})"
    try:
        ok, reason = availability.pair_available(pair, device=device)
    except Exception as exc:
        return False, f"pair_available({pair!r}) raised {type(exc).__name__}: {exc}"
    return bool(ok), str(reason)


_STATE_KEY = pytest.StashKey[_State]()


def _state(config: pytest.Config) -> _State:
    return config.stash[_STATE_KEY]


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


# ----------------------------------------------------------------------------------------------
# hooks


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("drope_check", "drope_check claims")
    group.addoption("--pair", action="append", dest="drope_pairs", default=None, metavar="NAME",
                    help="judge this pair's claims (repeatable; default: every pair with a claim file)")
    group.addoption("--require-models", action="store_true", dest="drope_require_models", default=False,
                    help="a pair whose models cannot be loaded is an error, not a skip")
    group.addoption("--claims-report", dest="drope_claims_report", default=None, metavar="DIR",
                    help="write claims-report.md, claims-report.json and per-layer plots into DIR")
    group.addoption("--regen-expected", action="store_true", dest="drope_regen", default=False,
                    help="rewrite golden values in expected/<pair>.toml from this run (never report values)")
    group.addoption("--strict-claims", action="store_true", dest="drope_strict", default=False,
                    help="a claim of an available pair that was not evaluated (other than one about a recalibrated "
                    "DroPE model) is an error; pytest's own --strict (strict mode) implies it")
    group.addoption("--as-pair", action="store_true", dest="drope_as_pair", default=False,
                    help="judge --measurements of other models than the pair's; every verdict names the measured models")
    group.addoption("--measurements", action="append", dest="drope_measurements", default=None, metavar="FILE",
                    help="judge this measurements JSON instead of measuring (repeatable, one per pair)")
    group.addoption("--upstream", dest="drope_upstream", default=None, metavar="PATH",
                    help="the report author's result files: a git clone of DavidDemitriAfrica/drope-activations or a "
                    "<commit>/<path> folder (default: $DROPE_CHECK_UPSTREAM, else shared/data/upstream-results above "
                    "the repository)")
    group.addoption("--expected-dir", dest="drope_expected_dir", default=None, metavar="DIR",
                    help="folder of the claim files (default: <rootdir>/expected)")
    group.addoption("--drope-device", dest="drope_device", default=None, metavar="DEVICE",
                    help="device for measuring (default: the engine's choice, cuda if present)")
    group.addoption("--drope-dtype", dest="drope_dtype", default=None, metavar="DTYPE",
                    help="model dtype for measuring: float32, bfloat16, float16 (default: the engine's choice)")
    group.addoption("--drope-quantization", dest="drope_quantization", default=None,
                    choices=("nf4", "nf4-double", "fp4"),
                    help="load the models in bitsandbytes 4-bit as upstream did (GPU only; nf4-double = its first run)")
    group.addoption("--drope-device-map", dest="drope_device_map", default=None, metavar="MAP",
                    help="accelerate's device map for models larger than one device (auto, balanced, balanced_low_0, "
                    "sequential): layers spread over the visible GPUs, then CPU memory, then --drope-offload-folder")
    group.addoption("--drope-offload-folder", dest="drope_offload_folder", default=None, metavar="DIR",
                    help="with --drope-device-map: where layers that fit neither the GPUs nor CPU memory are kept")
    group.addoption("--audit", action="store_true", dest="drope_audit", default=False,
                    help="also run the confound audit of each available pair (drope_check.audit.run): audit/<pair>/ "
                    "in the --claims-report DIR (else ./audit/<pair>/), linked from the claims report")
    group.addoption("--audit-pair", action="append", dest="drope_audit_pairs", default=None, metavar="PAIR",
                    help="audit only this pair (repeatable; implies --audit): e.g. CI audits the default pair "
                    "and llama2-7b's author files but not the opt-in Gemma pair")
    group.addoption("--drope-wikitext", dest="drope_wikitext", default=None, metavar="PATH",
                    help="a local wiki.test.raw for the WikiText-2 texts (else DROPE_CHECK_WIKITEXT or the hub)")
    group.addoption("--drope-allow-incomplete-weights", action="store_true", dest="drope_allow_incomplete_weights",
                    default=False,
                    help="measure checkpoints whose tensors do not match the model (refused otherwise); what did not "
                    "match is recorded in the provenance and shown in the report")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xdist_group(name): keep tests of one group on one xdist worker")
    config.addinivalue_line("markers", "drope_claim: a claim of the report judged by drope_check")
    if _is_worker(config):  # split the cores (and GPUs) between workers before any model loads
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
    state = _State(config=config, expected_dir=expected)
    config.stash[_STATE_KEY] = state
    config.pluginmanager.register(_Aggregator(state), "drope_check-aggregator")
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
    if not _is_worker(config):
        _fit_workers_to_pairs(config, state)


def _fit_workers_to_pairs(config: pytest.Config, state: _State) -> None:
    """``-n N`` on a claims-only run: one xdist worker per pair with work here, at most N; serial
    with one (:func:`drope_check.engine.workers.planned_workers`). Runs before xdist starts its workers
    (xdist's own ``pytest_configure`` is ``trylast``)."""
    tx = list(config.getoption("tx", None) or [])
    if not tx or config.getoption("dist", "no") == "no" or config.getoption("collectonly", False):
        return
    from drope_check.engine.workers import claims_only, planned_workers

    if not claims_only(list(config.args), Path(str(config.invocation_params.dir)), Path(str(config.rootpath))):
        return
    files = state.measurement_files()
    working = [p for p in state.selected_pairs() if p in files or _pair_available(p)[0]]
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
    state = config.stash.get(_STATE_KEY, None)
    return state.worker_note if state is not None else None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Tell every xdist worker where measuring workers share the cores (drope_check.engine.workers.CoreShare)."""
    import tempfile

    from drope_check.engine.workers import CORES_DIR_KEY

    state = _state(node.config)
    if state.cores_dir is None:
        state.cores_dir = tempfile.mkdtemp(prefix="drope-check-cores-")
    node.workerinput[CORES_DIR_KEY] = state.cores_dir


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE_KEY, None)
    if state is not None and state.cores_dir is not None and not _is_worker(config):
        import shutil

        shutil.rmtree(state.cores_dir, ignore_errors=True)


def _claims_report_dir(config: pytest.Config) -> Path | None:
    """``--claims-report DIR`` resolved against the directory pytest was invoked in."""
    out = config.getoption("drope_claims_report", None)
    if not out:
        return None
    report_dir = Path(out)
    return report_dir if report_dir.is_absolute() else Path(str(config.invocation_params.dir)) / report_dir


def _check_claims_report_option(config: pytest.Config) -> None:
    """``--claims-report`` names a folder that exists or can be created and is writable: a usage
    error now, before anything is measured, never a traceback when the report is written."""
    from drope_check.errors import UserError
    from drope_check.output_paths import check_output_folder

    report_dir = _claims_report_dir(config)
    if report_dir is None or _is_worker(config):
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

    state = _state(config)
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
    state = _state(metafunc.config)
    params = []
    for pair in state.selected_pairs():
        try:
            claim_set = state.claim_set(pair)
        except ClaimsFileError as exc:  # reported as a collection error: the message alone, no traceback
            raise pytest.Collector.CollectError(str(exc)) from None
        for claim in claim_set.by_family(family):
            for source in claim.sources:
                params.append(pytest.param(claim, source, id=claim.source_key(source), marks=_marks(claim, source)))
    if not params:  # no selected pair has a claim of this family (the Methods statements are llama2-7b's only)
        state.empty_families.add((str(metafunc.definition.path), metafunc.definition.originalname))
    metafunc.parametrize(("claim", "claim_source"), params)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A claims test of a family no selected pair has is deselected, not reported as an empty skip."""
    empty = _state(config).empty_families
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
        marks.append(pytest.mark.xfail(
            strict=True, raises=ClaimNotHeld,
            reason=(f"does not generalise to {claim.pair}: this suite measured {fmt(claim.recorded, ratio=claim.is_ratio)} "
                    f"where the report claims {fmt(claim.value, ratio=claim.is_ratio)} ({claim.band_text()})"),
        ))
    if source == AUTHOR_FILES and claim.author_files is not None and claim.author_files.contradicted:
        marks.append(pytest.mark.xfail(
            strict=True, raises=ClaimNotHeld,
            reason=f"the author's own files contradict the claim: {claim.author_files.contradicted}",
        ))
    return marks


class _Aggregator:
    """Registered per session: collects verdicts from reports and writes the report (controller only)."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.regenerated: list[str] | None = None
        self.report_dir: Path | None = None
        self.report_error: str | None = None
        self.audit_lines: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """On the controller this sees every worker's reports, with their user properties."""
        for name, value in getattr(report, "user_properties", ()):
            if name == CLAIM_PROPERTY:
                self.state.verdicts[report.nodeid] = json.loads(value)
            elif name == AUTHOR_FILES_PROPERTY:
                info = json.loads(value)
                self.state.author_files.setdefault(info["pair"], info)
            elif name == PAIR_PROPERTY:
                info = json.loads(value)
                old = self.state.pairs.get(info["pair"])
                if old is None or (info.get("available") and not old.get("available")):
                    self.state.pairs[info["pair"]] = info

    def verdicts(self) -> list[dict[str, Any]]:
        from drope_check.report.build import sort_verdicts

        return sort_verdicts(self.state.verdicts.values())

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        config = session.config
        if _is_worker(config) or not self.state.verdicts:
            return
        verdicts = self.verdicts()
        if self.state.regen:
            self.regenerated = _write_regen(self.state, verdicts)
        out = config.getoption("drope_claims_report")
        audit_pairs = config.getoption("drope_audit_pairs") or []
        if config.getoption("drope_audit") or audit_pairs:
            from drope_check.audit.run import audit_session

            judged = sorted({v["pair"] for v in verdicts})
            chosen = [p for p in judged if p in audit_pairs] if audit_pairs else judged
            options = _measure_options(config)
            device = getattr(options, "device", None)
            self.audit_lines = audit_session(config, self.state, chosen, out, options,
                                             lambda pair: _pair_available(pair, device))
            if any(line.startswith("audit failed") for line in self.audit_lines):
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if out:
            from drope_check.report.build import ReportWriteError, build_report, plot_marks, write_report

            pairs = sorted({v["pair"] for v in verdicts})
            infos = {
                p: self.state.pairs.get(p, {"pair": p, "available": False, "reason": "no information recorded"})
                for p in pairs
            }
            marks = {p: plot_marks(self.state.claim_set(p)) for p in pairs}
            doc = build_report(verdicts, infos, marks, author_files=self.state.author_files)
            report_dir = _claims_report_dir(config)
            try:
                write_report(doc, report_dir)
                self.report_dir = report_dir
            except ReportWriteError as exc:  # e.g. a full disk: one sentence, and no half-written report
                self.report_error = f"--claims-report: {exc}"
                session.exitstatus = pytest.ExitCode.USAGE_ERROR

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if _is_worker(config) or not self.state.verdicts:
            return
        from drope_check.report.build import terminal_lines

        writer = getattr(terminalreporter, "_tw", None)
        width = writer.fullwidth if writer is not None else 120
        terminalreporter.section("drope_check claims")
        from drope_check.report.build import unchecked_pair_lines

        for line in terminal_lines(self.verdicts(), width=width):
            terminalreporter.write_line(line)
        available = {p for p, info in self.state.pairs.items() if info.get("available")}
        for line in unchecked_pair_lines(self.verdicts(), available):
            terminalreporter.write_line(line, red=True, bold=True)
        if self.regenerated is not None:
            terminalreporter.write_line(
                f"--regen-expected: rewrote {len(self.regenerated)} measured value(s): "
                f"{', '.join(self.regenerated) or 'none'}"
            )
        for line in self.audit_lines:
            terminalreporter.write_line(line)
        from drope_check.report.build import provenance_notes

        for pair, info in sorted(self.state.pairs.items()):
            for note in provenance_notes(info):
                terminalreporter.write_line(f"pair {pair}: {note}", yellow=True)
        if self.report_dir is not None:
            terminalreporter.write_line(f"claims report: {self.report_dir / 'claims-report.md'}")
        if self.report_error is not None:
            terminalreporter.write_line(self.report_error, red=True, bold=True)


def _write_regen(state: _State, verdicts: list[dict[str, Any]]) -> list[str]:
    changed: list[str] = []
    for pair, updates in sorted(updates_from_verdicts(verdicts).items()):
        changed += regen_expected(state.claim_set(pair).path, updates)
    return changed


# ----------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def drope_measure_options(request: pytest.FixtureRequest) -> Any:
    """Options passed to ``measure_pair``: a ``drope_check.measurements.measure.MeasureOptions`` built from
    ``--drope-device`` / ``--drope-dtype`` / ``--drope-quantization`` / ``--drope-wikitext`` /
    ``--drope-device-map`` / ``--drope-offload-folder``, or None
    (the engine's defaults) when none is given. A conftest may override this fixture."""
    return _measure_options(request.config)


def _measure_options(config: pytest.Config) -> Any:
    chosen = {
        "device": config.getoption("drope_device"),
        "dtype": config.getoption("drope_dtype"),
        "quantization": config.getoption("drope_quantization"),
        "wikitext": config.getoption("drope_wikitext"),
        "allow_incomplete_weights": config.getoption("drope_allow_incomplete_weights", None) or None,
        "device_map": config.getoption("drope_device_map"),
        "offload_folder": config.getoption("drope_offload_folder"),
    }
    chosen = {k: v for k, v in chosen.items() if v is not None}
    if not chosen:
        return None
    measure = importlib.import_module("drope_check.measurements.measure")
    return measure.MeasureOptions(**chosen)


@pytest.fixture(scope="session")
def claim_pairs(request: pytest.FixtureRequest) -> list[str]:
    """The pairs this run judges (``--pair``, the pairs of ``--measurements``, or every claim file):
    a test that loads a pair's models itself asks this first, so ``--pair gemma3-270m`` never loads
    SmolLM2."""
    return list(_state(request.config).selected_pairs())


@pytest.fixture(scope="session")
def pair_measurements(request: pytest.FixtureRequest, drope_measure_options: Any) -> Callable[[str], dict[str, Any]]:
    """``pair_measurements(pair) -> dict``: the measurements of a pair, measured once per session
    (or read from ``--measurements``). Raises :class:`PairUnavailable` when its models are not
    available here and :class:`MeasurementFailed` when measuring failed."""
    state = _state(request.config)

    def get(pair: str) -> dict[str, Any]:
        return state.measurements(pair, drope_measure_options)

    return get


def _record(record_property: Callable[[str, Any], None], verdict: Verdict) -> None:
    record_property(CLAIM_PROPERTY, json.dumps(verdict.to_dict(), sort_keys=True))


def _record_pair(state: _State, record_property: Callable[[str, Any], None], pair: str, data: Any,
                 available: bool, reason: str) -> None:
    if pair in state.recorded_pairs:
        return
    from drope_check.report.build import pair_info

    state.recorded_pairs.add(pair)
    info = pair_info(pair, data, state.claim_set(pair), available=available, reason=reason,
                     origin=state.origins.get(pair, ""))
    record_property(PAIR_PROPERTY, json.dumps(info, sort_keys=True))


@pytest.fixture
def claim_source() -> str:
    """The evidence source a claims test judges (parametrized by this plugin; ``suite`` otherwise)."""
    return SUITE


def _record_author_files(state: _State, record_property: Callable[[str, Any], None], claim: Claim,
                         path: Path, data: Any) -> None:
    if claim.pair in state.recorded_author_files:
        return
    from drope_check.report.build import pair_info

    state.recorded_author_files.add(claim.pair)
    era = (data.get("upstream") or {}).get("era", "?")
    info = pair_info(claim.pair, data, state.claim_set(claim.pair),
                     origin=f"the report author's committed result files (era {era}) from {path}")
    info["upstream"] = data.get("upstream")
    info.pop("created", None)  # the import's wall-clock time: serial and xdist runs must write the same report
    record_property(AUTHOR_FILES_PROPERTY, json.dumps(info, sort_keys=True))


def _author_files_claim_verdict(state: _State, claim: Claim, record_property: Callable[[str, Any], None]) -> Verdict:
    """The verdict of ``claim`` against the author's files; no copy found is a skip (an error under
    ``--strict-claims``), a copy that cannot be imported an error."""
    try:
        path, data = state.upstream()
    except AuthorFilesUnavailable as exc:
        verdict = author_files_skip(claim, str(exc))
        if state.strict:
            verdict = author_files_skip(claim, f"--strict: this claim was not evaluated: {exc}", outcome="error")
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
    state = _state(request.config)
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
