"""The claim file ``expected/<pair>.toml``: :class:`Claim`, :class:`ClaimSet`, loading and validation.

A *claim* is one number (or one comparison) the report states, together with how far a faithful
re-measurement may land from it and why. This module reads and validates claim files and checks
that a measurements dict belongs to a claim file (pair, schema, variant); it never judges a value
(:mod:`drope_check.claims.verdicts`) and never writes a file (:mod:`drope_check.claims.regen`).

Claim file (``expected/<pair>.toml``)
-------------------------------------
::

    schema_version = 1

    [pair]
    name = "llama2-7b"              # must equal the file name's stem
    description = "..."
    drope_variant = "drope"         # the DroPE-side variant the claims assume ("drope" | "nope-zeroshot")
    run_hint = "HF_TOKEN=... pytest claims/ --pair llama2-7b --require-models   (CUDA GPU, 24 GB)"
    models = { rope = "meta-llama/Llama-2-7b-hf", drope = "SakanaAI/Llama-2-7b-hf-DroPE" }  # optional:
                                    # provenance.model_id of each side; other models need --as-pair

    [[claim]]
    id = "sink_rate_average"        # [a-z0-9_]+; (id, model) is unique within a file
    model = "rope"                  # "rope" | "drope" | "pair" (a comparison of the two models)
    family = "sink"                 # "perplexity" | "intervention" | "sink" | "phase" | "method" (which test
                                    # module; "method": a Methods statement, judged on the author's files only)
    sentence = "Both RoPE (97.8%) and DroPE (95.6%) have nearly identical attention sink rates."
    metric = "rope:scalars.sink_rate_average"   # a path; a list of paths for model = "pair"
    combine = "ratio"               # pair claims only, optional: "ratio" (a / b) or "difference" (a - b)
    value = 0.978                   # the report's value (or, for status "golden", the suite's golden)
    status = "claim"                # "claim" | "artefact" | "golden" | "does-not-generalise" | "skip"
    rationale = "why the band is this wide"      # required, non-empty
    band = { kind = "absolute", tol = 0.03 }
    provenance = { source = "results-json", text_set = "5 hand-written prompts", notes = "..." }
    # status-dependent keys:
    measured_how = "..."            # golden (once measured) and does-not-generalise: how/where/settings
    measured = 5.2                  # does-not-generalise: the value this suite measured on this pair
    pending = true                  # golden / does-not-generalise not measured yet -> skipped, never passed
    skip_reason = "..."             # status "skip": required
    artefact = "..."                # status "artefact": required; the report's value comes from <this cause>
                                    # (an artefact of upstream's choices): failing it on a faithful measurement
                                    # is the finding (a non-strict xfail), passing it "holds without the artefact"
    plot = { series = "bos_norm", layer = 23 }   # optional: mark this value on a per-layer plot
    [claim.evidence."author-files"]  # optional: judge it against the author's files too
                                    # (drope_check.claims.evidence_spec; then test ids name the source)
    texts_sha256 = "..."            # golden / does-not-generalise: the text set it was measured on
    protocol = { text_set = "lines", ... }  # golden / does-not-generalise: its protocol identity
                                    # (drope_check.claims.protocol_identity); written by --regen-expected


What each key of a ``[[claim]]`` may hold, and the error naming it otherwise: the field table of
:mod:`drope_check.claims.claim_fields`. Bands: :mod:`drope_check.claims.bands`. Metric paths: :mod:`drope_check.claims.metric_paths`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drope_check.claims.bands import Band
from drope_check.claims.claim_fields import (
    AUTHOR_FILES_ONLY_FAMILIES,
    COMBINE,
    FAMILIES,
    MODELS,
    PROVENANCE_SOURCES,
    REPORT_STATUSES,
    STATUSES,
    parse_claim_fields,
    require_str,
)
from drope_check.claims.evidence_spec import AuthorFilesEvidence
from drope_check.claims.metric_paths import MetricPath, parse_path
from drope_check.measurements.validate import VARIANTS, validate_measurements

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "AUTHOR_FILES_ONLY_FAMILIES",
    "COMBINE",
    "FAMILIES",
    "MODELS",
    "REPORT_STATUSES",
    "PROVENANCE_SOURCES",
    "SCHEMA_VERSION",
    "STATUSES",
    "Claim",
    "ClaimSet",
    "ClaimsFileError",
    "MeasurementsMismatch",
    "available_pairs",
    "check_measurements",
    "default_expected_dir",
    "load_claims",
]

SCHEMA_VERSION = 1
_PAIR_KEYS = frozenset({"name", "description", "drope_variant", "run_hint", "report", "models"})
#: A status-"skip" claim whose skip_reason contains this is about a recalibrated DroPE model, which
#: a pair without one cannot test; ``--strict`` exempts exactly these skips.
RECALIBRATED_SKIP = "about a recalibrated DroPE model"
_VARIANTS = VARIANTS["drope"]


class ClaimsFileError(ValueError):
    """A claim file is malformed. The message names the file, the claim id and the key."""

    def __init__(self, file: str | Path, claim_id: str | None, key: str | None, message: str) -> None:
        self.file = str(file)
        self.claim_id = claim_id
        self.key = key
        where = self.file
        if claim_id is not None:
            where += f": claim {claim_id!r}"
        if key is not None:
            where += f": key {key!r}"
        super().__init__(f"{where}: {message}")


class MeasurementsMismatch(ValueError):
    """The measurements belong to another pair, DroPE variant or model than the claim file assumes;
    ``json_path`` is the field of the file that says so."""

    def __init__(self, message: str, json_path: str | None = None) -> None:
        super().__init__(message)
        self.json_path = json_path


# ----------------------------------------------------------------------------------------------
# claims


@dataclass(frozen=True)
class Claim:
    """One claim of the report (or one golden of this suite) for one pair and one model."""

    pair: str
    id: str
    model: str
    family: str
    sentence: str
    metrics: tuple[str, ...]
    combine: str | None
    value: Any
    status: str
    rationale: str
    band: Band | None
    provenance: Mapping[str, Any]
    measured_how: str | None = None
    recorded: Any = None  # "measured" in the file: the suite's value for does-not-generalise claims
    pending: bool = False
    skip_reason: str | None = None
    plot: Mapping[str, Any] | None = None
    texts_sha256: str | None = None  # the text set a golden / does-not-generalise value was measured on
    protocol: Mapping[str, Any] | None = None  # its protocol identity (drope_check.claims.protocol_identity)
    source_file: str = ""
    order: int = 0  # position in the claim file (the report keeps the file's order)
    author_files: AuthorFilesEvidence | None = (
        None  # [claim.evidence."author-files"] (drope_check.claims.evidence_spec)
    )
    artefact: str | None = None  # status "artefact": the cause the report's value comes from

    @property
    def reads_text(self) -> bool:
        """Whether the claim's paths read facts written as text (an ``equals`` band), not numbers."""
        return self.band is not None and self.band.kind == "equals"

    @property
    def has_suite_test(self) -> bool:
        """Whether this suite's measurement can judge the claim (not a Methods statement)."""
        return self.family not in AUTHOR_FILES_ONLY_FAMILIES

    @property
    def sources(self) -> tuple[str, ...]:
        """The evidence sources with a test of their own: ``("suite",)``, plus ``"author-files"``
        when the claim has an author-files table that is not ``suite_only``; a Methods statement
        (family ``method``) has only ``("author-files",)``."""
        if not self.has_suite_test:
            return ("author-files",)
        if self.author_files is not None and self.author_files.has_test:
            return ("author-files", "suite")
        return ("suite",)

    def source_key(self, source: str) -> str:
        """The test id of the claim under ``source``: :attr:`key` for this suite's measurement
        (``sink_rate_average[llama2-7b:rope]``), the key with the source named for any other
        (``sink_rate_average[llama2-7b:rope:author-files]``)."""
        if source == "suite":
            return self.key
        return f"{self.id}[{self.pair}:{self.model}:{source}]"

    @property
    def skip_is_recalibrated_only(self) -> bool:
        """A status-skip claim about a recalibrated DroPE model (the one skip ``--strict`` allows)."""
        return self.status == "skip" and RECALIBRATED_SKIP in (self.skip_reason or "")

    @property
    def key(self) -> str:
        """The test id: ``sink_rate_average[llama2-7b:rope]``."""
        return f"{self.id}[{self.pair}:{self.model}]"

    @property
    def is_ratio(self) -> bool:
        """Whether the claim's value is a ratio (written ``1.00x``): ``combine = "ratio"``, or every
        metric path reads a ``.ratio`` field."""
        if self.combine is not None:
            return self.combine == "ratio"
        return bool(self.metrics) and all(m.is_ratio for m in self.parsed_metrics)

    @property
    def suite_only_reason(self) -> str | None:
        """Why the author's files cannot judge this claim (``suite_only`` in its evidence table), else None."""
        if self.author_files is not None and self.author_files.kind == "suite-only":
            return self.author_files.reason
        return None

    @property
    def parsed_metrics(self) -> tuple[MetricPath, ...]:
        return tuple(parse_path(m) for m in self.metrics)

    def band_text(self) -> str:
        if self.band is None:
            return "-"
        names = [_short_path(m) for m in self.metrics]
        text = self.band.describe(self.value, names)
        if self.combine == "ratio":
            return f"m = {names[0]} / {names[1]}; {text}"
        if self.combine == "difference":
            return f"m = {names[0]} - {names[1]}; {text}"
        return text

    def regen_command(self) -> str:
        return f"pytest claims/ --pair {self.pair} --regen-expected"

    def rerun_command(self, source: str | None = None) -> str:
        """The command that reruns this claim (under ``source``, for a claim with several)."""
        only = ""
        if source is not None and self.author_files is not None and self.author_files.has_test:
            only = " and not author-files" if source == "suite" else f" and {source}"
        return f'pytest claims/ --pair {self.pair} -k "{self.id} and {self.pair} and {self.model}{only}"'


def _short_path(path: str) -> str:
    """``drope:interventions.qk_disruption:report.ratio`` -> ``drope ...qk_disruption:report.ratio``."""
    root, _, rest = path.partition(":")
    parts = rest.split(".")
    tail = ".".join(parts[-2:]) if len(parts) > 2 else rest
    return f"{root}:{tail}"


@dataclass(frozen=True)
class ClaimSet:
    """The parsed contents of one ``expected/<pair>.toml``."""

    pair: str
    path: str
    description: str
    drope_variant: str
    run_hint: str
    report: str
    claims: tuple[Claim, ...]
    model_ids: Mapping[str, str] = field(default_factory=dict)  # role -> the model id the claims are about

    def by_family(self, family: str) -> list[Claim]:
        return [c for c in self.claims if c.family == family]

    def get(self, claim_id: str, model: str) -> Claim:
        for claim in self.claims:
            if claim.id == claim_id and claim.model == model:
                return claim
        raise KeyError(f"{self.path}: no claim {claim_id!r} for model {model!r}")


def default_expected_dir() -> Path:
    """``expected/`` next to the package (the repository's, for an editable install)."""
    return Path(__file__).resolve().parents[2] / "expected"


def available_pairs(expected_dir: str | Path | None = None) -> list[str]:
    """Pairs with a claim file, sorted by name."""
    folder = Path(expected_dir) if expected_dir is not None else default_expected_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def _parse_claim(raw: Any, index: int, pair: str, file: str) -> Claim:
    """The ``index``-th ``[[claim]]`` of ``file``, read by the field table of :mod:`drope_check.claims.claim_fields`;
    raises :class:`ClaimsFileError` naming the file, the claim and the key."""
    fields = parse_claim_fields(
        raw, index, pair, lambda shown, key, message: ClaimsFileError(file, shown, key, message)
    )
    return Claim(pair=pair, source_file=file, order=index, **fields)


def load_claims(pair: str, expected_dir: str | Path | None = None) -> ClaimSet:
    """Load and validate ``<expected_dir>/<pair>.toml``; raise :class:`ClaimsFileError` if malformed."""
    folder = Path(expected_dir) if expected_dir is not None else default_expected_dir()
    path = folder / f"{pair}.toml"
    file = str(path)
    if not path.is_file():
        have = ", ".join(available_pairs(folder)) or "none"
        raise ClaimsFileError(file, None, None, f"no claim file for pair {pair!r} (claim files here: {have})")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ClaimsFileError(file, None, None, f"invalid TOML: {exc}") from None
    for key in data:
        if key not in ("schema_version", "pair", "claim"):
            raise ClaimsFileError(
                file, None, key, "unknown top-level key (allowed: schema_version, pair, claim)"
            )
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ClaimsFileError(file, None, "schema_version", f"must be {SCHEMA_VERSION}")
    head = data.get("pair")
    if not isinstance(head, Mapping):
        raise ClaimsFileError(file, None, "pair", "a [pair] table is required")
    for key in head:
        if key not in _PAIR_KEYS:
            raise ClaimsFileError(
                file, None, f"pair.{key}", f"unknown key (allowed: {', '.join(sorted(_PAIR_KEYS))})"
            )

    def head_err(key: str, message: str) -> ClaimsFileError:
        return ClaimsFileError(file, None, f"pair.{key}", message)

    name = require_str(head, "name", head_err)
    if name != pair:
        raise head_err("name", f"is {name!r} but the file is named for {pair!r}")
    variant = require_str(head, "drope_variant", head_err)
    if variant not in _VARIANTS:
        raise head_err("drope_variant", f"must be one of {', '.join(_VARIANTS)}")
    run_hint = require_str(head, "run_hint", head_err)
    model_ids = head.get("models", {})
    if (
        not isinstance(model_ids, Mapping)
        or set(model_ids) - {"rope", "drope"}
        or not all(isinstance(v, str) and v for v in model_ids.values())
    ):
        raise head_err("models", 'must be a table { rope = "<model id>", drope = "<model id>" }')
    raw_claims = data.get("claim")
    if not isinstance(raw_claims, list) or not raw_claims:
        raise ClaimsFileError(file, None, "claim", "at least one [[claim]] is required")
    claims = [_parse_claim(raw, i, pair, file) for i, raw in enumerate(raw_claims)]
    seen: set[tuple[str, str]] = set()
    for claim in claims:
        if (claim.id, claim.model) in seen:
            raise ClaimsFileError(file, claim.key, "id", "duplicate (id, model)")
        seen.add((claim.id, claim.model))
    return ClaimSet(
        pair=pair,
        path=file,
        description=str(head.get("description", "")),
        drope_variant=variant,
        run_hint=run_hint,
        report=str(head.get("report", "")),
        claims=tuple(claims),
        model_ids=dict(model_ids),
    )


def measured_model_ids(measurements: Mapping[str, Any]) -> dict[str, str]:
    """role -> ``provenance.model_id`` of each measured model (``"?"`` where the file does not say)."""
    out = {}
    for role, model in (measurements.get("models") or {}).items():
        prov = model.get("provenance") if isinstance(model, Mapping) else None
        ident = prov.get("model_id") if isinstance(prov, Mapping) else None
        out[role] = str(ident) if ident else "?"
    return out


def check_measurements(
    claim_set: ClaimSet, measurements: Mapping[str, Any], origin: str = "measurements", as_pair: bool = False
) -> None:
    """Refuse measurements that are malformed, or of another pair, DroPE variant or model.

    The file is validated first (:func:`drope_check.measurements.validate.validate_measurements`:
    raises :class:`~drope_check.measurements.validate.MeasurementsFileError`). Then a file of another
    pair, variant, or whose model ids are not the claim file's ``[pair] models`` raises
    :class:`MeasurementsMismatch`; ``as_pair`` accepts other model ids (a ``custom`` measurement
    judged as if it were this pair: every verdict then names the measured models).
    """
    validate_measurements(measurements, origin)
    got = measurements.get("pair")
    if got not in (claim_set.pair, "custom"):
        raise MeasurementsMismatch(
            f"{origin}: $.pair: the file measures pair {got!r}, but the claims are for {claim_set.pair!r}",
            "$.pair",
        )
    drope = measurements["models"]["drope"]
    if drope.get("variant") != claim_set.drope_variant:
        raise MeasurementsMismatch(
            f"{origin}: $.models.drope.variant: the DroPE side is variant {drope.get('variant')!r}, but {claim_set.path} "
            f"assumes {claim_set.drope_variant!r}",
            "$.models.drope.variant",
        )
    if as_pair:
        return
    ids = measured_model_ids(measurements)
    for role in ("rope", "drope"):
        want = claim_set.model_ids.get(role)
        if want is None:
            continue
        if ids.get(role) != want:
            where = f"$.models.{role}.provenance.model_id"
            raise MeasurementsMismatch(
                f"{origin}: {where}: the {role} model is {ids.get(role)!r}, but the claims of pair {claim_set.pair!r} are "
                f"about {want!r}; to judge other models against them anyway, pass --as-pair (every verdict then names "
                "the measured models)",
                where,
            )
