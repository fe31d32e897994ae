"""The report's claims as data: a facade over the modules that do each job.

Imports flow one way:
:mod:`drope_check.claims.bands` (Band, BandResult, edge slack, number formatting; pure)
<- :mod:`drope_check.claims.metric_paths` (parse, resolve, errors)
<- :mod:`drope_check.claims.claim_file` (Claim, ClaimSet, loading and validation, checking a measurements file)
<- :mod:`drope_check.claims.verdicts` (Verdict, evaluate, pending / mismatch reasons)
<- :mod:`drope_check.claims.regen` (``--regen-expected``, the only writer of ``expected/``).

Existing code and tests import these names from ``drope_check.claims.api``; new code should import
from the module that owns the job.
"""

from __future__ import annotations

from drope_check.claims.bands import BAND_KINDS, EDGE_SLACK, ONE_SIDED_OPS, Band, BandResult, fmt
from drope_check.claims.claim_file import (
    COMBINE,
    FAMILIES,
    MODELS,
    PROVENANCE_SOURCES,
    SCHEMA_VERSION,
    STATUSES,
    Claim,
    ClaimSet,
    ClaimsFileError,
    MeasurementsMismatch,
    available_pairs,
    check_measurements,
    default_expected_dir,
    load_claims,
)
from drope_check.claims.metric_paths import PATH_ROOTS, MetricPath, MetricPathError, parse_path, resolve
from drope_check.claims.regen import measured_how_text, regen_expected, regen_verdict, toml_value
from drope_check.claims.verdicts import (
    Verdict,
    evaluate,
    evaluate_all,
    pending_reason,
    skipped_verdict,
    text_set_mismatch,
    verdict_for,
)

__all__ = [
    "BAND_KINDS",
    "COMBINE",
    "EDGE_SLACK",
    "FAMILIES",
    "MODELS",
    "ONE_SIDED_OPS",
    "PATH_ROOTS",
    "PROVENANCE_SOURCES",
    "SCHEMA_VERSION",
    "STATUSES",
    "Band",
    "BandResult",
    "Claim",
    "ClaimSet",
    "ClaimsFileError",
    "MeasurementsMismatch",
    "MetricPath",
    "MetricPathError",
    "Verdict",
    "available_pairs",
    "check_measurements",
    "default_expected_dir",
    "evaluate",
    "evaluate_all",
    "fmt",
    "load_claims",
    "measured_how_text",
    "parse_path",
    "pending_reason",
    "regen_expected",
    "regen_verdict",
    "resolve",
    "skipped_verdict",
    "text_set_mismatch",
    "toml_value",
    "verdict_for",
]
