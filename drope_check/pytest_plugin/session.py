"""The plugin's session state: options, the selected pairs, their claim sets and measurements (measured once per session, or read from files), and the verdicts gathered."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from drope_check.claims.claim_file import (
    ClaimSet,
    MeasurementsMismatch,
    available_pairs,
    check_measurements,
    load_claims,
)
from drope_check.measurements.validate import MeasurementsFileError, load_measurements
from drope_check.sources.author_files import (
    AuthorFilesBroken,
    AuthorFilesUnavailable,
    author_files_measurements,
    locate_upstream,
)

CLAIM_PROPERTY = "drope_claim"
PAIR_PROPERTY = "drope_pair"
AUTHOR_FILES_PROPERTY = "drope_author_files"


class PairUnavailable(Exception):
    """The models of a pair cannot be loaded here; ``str()`` is the skip reason."""


class MeasurementFailed(Exception):
    """Measuring (or reading the measurements of) a pair failed; every claim of the pair errors."""


@dataclass
class SessionState:
    config: pytest.Config
    expected_dir: Path
    claim_sets: dict[str, ClaimSet] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # pair -> dict | Exception
    origins: dict[str, str] = field(default_factory=dict)
    recorded_pairs: set[str] = field(default_factory=set)
    recorded_author_files: set[str] = field(default_factory=set)
    author_files: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # pair -> info of the author's files (controller)
    _upstream: Any = (
        None  # the author's files: (path, measurements) or the exception that explains their absence
    )
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)  # nodeid -> verdict dict
    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)  # pair -> info (controller)
    _selected: list[str] | None = None
    _files: dict[str, Path] | None = None
    empty_families: set[tuple[str, str]] = field(default_factory=set)  # claims tests with no claim to judge
    working_pairs: list[str] | None = (
        None  # pairs measured here or judged from a file (controller, xdist runs)
    )
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
        return locate_upstream(
            self.config.getoption("drope_upstream"), [Path(str(self.config.rootpath)), package_repo]
        )

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
                    raise pytest.UsageError(
                        f"--measurements {raw}: no 'pair' in the file; name it with --pair"
                    )
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
        audit's rule, :func:`drope_check.audit.cells.needed_interventions`); every one under
        ``--regen-expected``, which may fill pending goldens that read any of them."""
        if self.regen:
            return "all"
        from drope_check.audit.cells import needed_interventions
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
        ok, reason = pair_available_here(pair, getattr(options, "device", None))
        if not ok:
            raise PairUnavailable(
                f"pair {pair} is not available here: {reason}. To run its claims: {claim_set.run_hint}"
            )
        try:
            measure = importlib.import_module("drope_check.measurements.measure")
            data = measure.measure_pair(
                pair, protocol=None, interventions=self.interventions_needed(pair), options=options
            )
            check_measurements(claim_set, data, origin=f"measure_pair({pair!r})", as_pair=self.as_pair)
        except Exception as exc:  # any failure of a model that should load is an error, never a skip
            raise MeasurementFailed(f"pair {pair}: measuring failed: {type(exc).__name__}: {exc}") from exc
        self.origins[pair] = f"measured in this session by measure_pair({pair!r})"
        return data


def pair_available_here(pair: str, device: str | None = None) -> tuple[bool, str]:
    """``drope_check.models.availability.pair_available`` (on ``device``, the one ``--drope-device`` names), never raising."""
    try:
        registry = importlib.import_module("drope_check.models.pairs").PAIRS
        availability = importlib.import_module("drope_check.models.availability")
    except Exception as exc:  # the engine may be missing or broken; say so instead of crashing collection
        return False, f"drope_check.models cannot be imported ({type(exc).__name__}: {exc})"
    if pair not in registry:
        return (
            False,
            f"pair {pair!r} is not registered in drope_check.models.pairs.PAIRS ({', '.join(sorted(registry))})",
        )
    try:
        ok, reason = availability.pair_available(pair, device=device)
    except Exception as exc:
        return False, f"pair_available({pair!r}) raised {type(exc).__name__}: {exc}"
    return bool(ok), str(reason)


STATE_KEY = pytest.StashKey[SessionState]()


def session_state(config: pytest.Config) -> SessionState:
    return config.stash[STATE_KEY]


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def claims_report_dir(config: pytest.Config) -> Path | None:
    """``--claims-report DIR`` resolved against the directory pytest was invoked in."""
    out = config.getoption("drope_claims_report", None)
    if not out:
        return None
    report_dir = Path(out)
    return report_dir if report_dir.is_absolute() else Path(str(config.invocation_params.dir)) / report_dir


def measure_options(config: pytest.Config) -> Any:
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
