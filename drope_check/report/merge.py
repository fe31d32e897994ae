"""Judge several measurements files into ONE claims report (``drope-check judge A.json B.json ... --report-dir D``).

Why: measuring is split across machines (a CI matrix job per pair, or per pair x variant, each writing
its measurements file as an artifact; or ``import-upstream`` on one machine and a GPU measurement on
another), and a reviewer wants one report. Each file is judged exactly as a single file is (the same
validator, the same claim file, the same verdict functions); only the report is shared.

What a file claims: for each model it holds, the identity ``(pair, source, variant, role, model id)``:

* ``source``: ``author-files`` for a file written by ``drope-check import-upstream``, else ``suite``;
* ``variant``: the audit variant an audit measurements file was made under (``variant.name``), the 4-bit
  load of a quantized measurement (``4bit-nf4``, ``4bit-nf4-double``, ``4bit-fp4``), else ``suite``.

Two files claiming one identity must agree: every number within :data:`MERGE_RTOL` relative (plus
:data:`MERGE_ATOL`; the validator's own consistency tolerance: a rerun of the same job on the same kind of
machine agrees, a different protocol, text set, dtype or model does not), every other value equal; the
second is then a duplicate (both named in the report). Files that disagree are refused naming both,
the model and the first JSON path where they differ. Variants of one pair each get their own column: the
first (``suite`` if present) under the pair's name, the others as ``<pair>@<variant>``. Every error is one
sentence naming the file (``drope-check judge`` exits 2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drope_check.claims.claim_file import ClaimSet, MeasurementsMismatch, check_measurements, load_claims
from drope_check.claims.evidence_spec import AUTHOR_FILES, SUITE
from drope_check.claims.verdicts import Verdict, strict_verdict, verdict_for
from drope_check.measurements.validate import CONSISTENCY_ATOL, CONSISTENCY_RTOL, load_measurements
from drope_check.report.build import build_report, pair_info, plot_marks
from drope_check.report.write import write_report
from drope_check.sources.author_files import author_files_verdict, is_author_files_import

__all__ = [
    "MERGE_ATOL",
    "MERGE_RTOL",
    "MeasurementsConflict",
    "first_difference",
    "judge_file",
    "judge_files",
    "measurement_variant",
]

MERGE_RTOL = CONSISTENCY_RTOL
MERGE_ATOL = CONSISTENCY_ATOL
#: Provenance fields that say which model was measured and how it was loaded: compared between two files
#: claiming the same identity (the rest, such as the device, seconds or library versions, may differ).
IDENTITY_PROVENANCE = (
    "model_id",
    "revision",
    "weights_sha256",
    "dtype",
    "quantization",
    "attention_type",
    "softmax_scale",
)


class MeasurementsConflict(MeasurementsMismatch):
    """Two measurements files claim the same pair, source, variant and model but disagree, or a file's pair
    cannot be told; the message names the file(s)."""


@dataclass(frozen=True)
class _Input:
    """One measurements file, validated against its pair's claim file."""

    path: Path
    measurements: dict[str, Any]
    claim_set: ClaimSet
    source: str
    variant: str

    @property
    def pair(self) -> str:
        return self.claim_set.pair


def measurement_variant(measurements: Mapping[str, Any]) -> str:
    """The variant a measurements file was made under: an audit file's ``variant.name``, ``4bit-<type>`` for a
    4-bit load (from the models' provenance), else ``suite``."""
    audit_variant = measurements.get("variant")
    if isinstance(audit_variant, Mapping) and isinstance(audit_variant.get("name"), str):
        return audit_variant["name"]
    for model in (measurements.get("models") or {}).values():
        quantization = (
            ((model or {}).get("provenance") or {}).get("quantization")
            if isinstance(model, Mapping)
            else None
        )
        if isinstance(quantization, str) and quantization:
            return f"4bit-{quantization}"
    return "suite"


def first_difference(a: Any, b: Any, path: str = "$") -> str | None:
    """The JSON path of the first place where ``a`` and ``b`` differ (numbers beyond :data:`MERGE_RTOL`
    relative plus :data:`MERGE_ATOL`, anything else by equality) with both values, or ``None``."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{path}.{key} is in only one of them"
            found = first_difference(a[key], b[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path} has {len(a)} vs {len(b)} entries"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    if numbers:
        fa, fb = float(a), float(b)
        if math.isfinite(fa) and math.isfinite(fb):
            same = abs(fa - fb) <= MERGE_ATOL + MERGE_RTOL * max(abs(fa), abs(fb))
        else:
            same = fa == fb or (math.isnan(fa) and math.isnan(fb))
        return None if same else f"{path} is {a!r} vs {b!r}"
    return None if a == b else f"{path} is {a!r} vs {b!r}"


def _comparable(measurements: Mapping[str, Any], role: str) -> dict[str, Any]:
    """What two files claiming one model must agree on: its measured values, its identity provenance, and the
    run's protocol and text set."""
    model = measurements["models"][role]
    prov = model.get("provenance") or {}
    return {
        "model": {k: v for k, v in model.items() if k != "provenance"},
        "identity": {k: prov.get(k) for k in IDENTITY_PROVENANCE},
        "protocol": measurements.get("protocol"),
        "texts_sha256": (measurements.get("texts") or {}).get("sha256"),
    }


def _read(
    path: Path,
    pair: str | None,
    expected_dir: str | Path | None,
    as_pair: bool,
    claim_sets: dict[str, ClaimSet],
) -> _Input:
    measurements = load_measurements(path)
    name = pair or measurements.get("pair")
    if not isinstance(name, str) or name == "custom":
        raise MeasurementsConflict(
            f"{path} measures a custom pair, so which claims judge it is not known: judge it alone with --pair NAME"
        )
    if name not in claim_sets:
        claim_sets[name] = load_claims(name, expected_dir)
    check_measurements(claim_sets[name], measurements, origin=str(path), as_pair=as_pair)
    source = AUTHOR_FILES if is_author_files_import(measurements) else SUITE
    variant = AUTHOR_FILES if source == AUTHOR_FILES else measurement_variant(measurements)
    return _Input(path, measurements, claim_sets[name], source, variant)


def _check_agreement(first: _Input, other: _Input) -> None:
    for role in sorted(set(first.measurements["models"]) & set(other.measurements["models"])):
        found = first_difference(_comparable(first.measurements, role), _comparable(other.measurements, role))
        if found:
            model_id = (first.measurements["models"][role].get("provenance") or {}).get("model_id", "?")
            raise MeasurementsConflict(
                f"{other.path} and {first.path} both hold pair {first.pair}'s {role} model ({model_id}, source "
                f"{first.source}, variant {first.variant}) but disagree: {found}; judge them into separate report "
                "folders, or give only one"
            )


def _verdicts(item: _Input, as_pair: bool, strict: bool) -> list[Verdict]:
    claim_set, measurements = item.claim_set, item.measurements
    if item.source == AUTHOR_FILES:  # judged as the author-files source: per-field protocol identity
        claims = [
            c for c in claim_set.claims if c.author_files is None or c.author_files.has_test
        ]  # not suite_only
        verdicts = [author_files_verdict(claim, measurements) for claim in claims]
    else:  # a Methods statement has no suite test: only the author's files judge it
        claims = [c for c in claim_set.claims if c.has_suite_test]
        verdicts = [verdict_for(claim, measurements, as_pair=as_pair) for claim in claims]
    if strict:
        verdicts = [strict_verdict(claim, v) for claim, v in zip(claims, verdicts, strict=True)]
    return verdicts


def _relabel(verdict: Verdict, label: str) -> Verdict:
    """A verdict of a pair's further variant, shown in a column of its own (``<pair>@<variant>``)."""
    return dataclasses.replace(
        verdict, pair=label, key=verdict.key.replace(f"[{verdict.pair}:", f"[{label}:", 1)
    )


def judge_files(
    paths: Sequence[str | Path],
    pair: str | None = None,
    report_dir: str | Path | None = None,
    expected_dir: str | Path | None = None,
    plots: bool = True,
    as_pair: bool = False,
    strict: bool = False,
) -> list[Verdict]:
    """Judge measurements files (one per pair, or per pair x variant) against their pairs' claim files and,
    when ``report_dir`` is given, write ONE claims report for all of them.

    ``pair`` judges every file against that pair's claims (needed for a ``custom`` measurement); without it
    each file names its pair. Raises what a single file raises
    (:class:`~drope_check.measurements.validate.MeasurementsFileError`,
    :class:`~drope_check.claims.claim_file.MeasurementsMismatch`, :class:`~drope_check.claims.claim_file.ClaimsFileError`),
    each naming the file, and :class:`MeasurementsConflict` for two files claiming one model that disagree.
    """
    if not paths:
        raise ValueError("judge_files needs at least one measurements file")
    claim_sets: dict[str, ClaimSet] = {}
    groups: dict[tuple[str, str, str], list[_Input]] = {}
    for path in paths:
        item = _read(Path(path), pair, expected_dir, as_pair, claim_sets)
        group = groups.setdefault((item.pair, item.source, item.variant), [])
        if group:
            _check_agreement(group[0], item)
        group.append(item)
    # per pair: the suite's variants, "suite" first; the first keeps the pair's name, the others get their own column
    suite_variants: dict[str, list[str]] = {}
    for name, source, variant in groups:
        if source == SUITE:
            suite_variants.setdefault(name, []).append(variant)
    for variants in suite_variants.values():
        variants.sort(key=lambda v: (v != "suite", v))
    verdicts: list[Verdict] = []
    infos: dict[str, dict[str, Any]] = {}
    author_infos: dict[str, dict[str, Any]] = {}
    marks: dict[str, list[dict[str, Any]]] = {}
    for (name, source, variant), items in groups.items():
        first = items[0]
        origin = first.path.name + "".join(f" (same as {i.path.name})" for i in items[1:])
        info = pair_info(name, first.measurements, first.claim_set, origin=origin)
        judged = _verdicts(first, as_pair, strict)
        if source == AUTHOR_FILES and name in suite_variants:  # beside this pair's own measurement
            info["upstream"] = first.measurements.get("upstream")
            author_infos[name] = info
            label = name
        else:
            label = (
                name if source == AUTHOR_FILES or variant == suite_variants[name][0] else f"{name}@{variant}"
            )
            if label != name:
                judged = [_relabel(v, label) for v in judged]
                info["variant"] = variant
            infos[label] = info
        marks[label] = plot_marks(first.claim_set)
        verdicts += judged
    if report_dir is not None:
        write_report(build_report(verdicts, infos, marks, author_files=author_infos), report_dir, plots=plots)
    return verdicts


def judge_file(
    measurements_path: str | Path,
    pair: str,
    report_dir: str | Path | None = None,
    expected_dir: str | Path | None = None,
    plots: bool = True,
    as_pair: bool = False,
    strict: bool = False,
) -> list[Verdict]:
    """Judge a measurements JSON made elsewhere against ``expected/<pair>.toml``.

    Returns one :class:`Verdict` per claim (skips included) and, when ``report_dir`` is given, writes
    the same ``claims-report.md`` / ``.json`` / plots as ``pytest claims/ --claims-report``. Raises
    :class:`~drope_check.measurements.validate.MeasurementsFileError` for a malformed file and
    :class:`~drope_check.claims.claim_file.MeasurementsMismatch` for measurements of another pair, variant
    or (without ``as_pair``) other models. A file written by ``drope-check import-upstream`` is judged
    as the ``author-files`` source (:func:`drope_check.sources.author_files.author_files_verdict`): each value
    only under the protocol the report's value came from. ``strict``: see :func:`~drope_check.claims.verdicts.strict_verdict`.
    """
    # one flow for one file and for several
    return judge_files(
        [measurements_path], pair, report_dir, expected_dir, plots=plots, as_pair=as_pair, strict=strict
    )
