"""The report author's committed result files as an evidence source (``author-files``).

Every claim with a ``[claim.evidence."author-files"]`` table (:mod:`drope_check.claims.evidence_spec`) is
judged against the author's own numbers on any machine: the ``report`` era of
``drope-check import-upstream`` (:mod:`drope_check.sources.upstream`), imported once per process from

1. ``--upstream PATH`` or ``DROPE_CHECK_UPSTREAM`` (a git clone of the upstream repository or a
   ``<commit>/<path>`` folder), else
2. ``shared/data/upstream-results`` in the folder above the repository or any folder above that
   (this workplace's shipped copy; ``.ci/run`` runs from a clone with ``../shared`` beside it).

What a verdict of this source promises:

* A value is judged only when its ``field_provenance`` protocol (name and text set) is the one the
  claim's table names as the protocol the report's value came from
  (:func:`drope_check.claims.protocol_identity.field_identity_mismatch`); otherwise the claim is skipped
  naming both. The 5-prompt 3332.6 is never judged against the WikiText-lines 12766.
* A path the author's files do not hold is a skip ("not in the author's files"), never an error of
  the claim: upstream did not measure everything the suite does.
* A prose-only claim (no committed file holds the number) is the outcome ``prose-only``: a finding,
  never a pass, whose reason names each nearest committed number with its commit and protocol, and
  then, dated and marked as such, the numbers of runs first committed after the report
  (``prose_only.later``): later evidence, never the source of the report's number.
* A value of a run made after the report judges a claim only as evidence against it (``contradicted``),
  and its verdict says that the run is later than the report.
* A claim the author's own files contradict (``contradicted``) is a strict expected failure: it
  turns red if the files ever support it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from drope_check.claims.bands import fmt
from drope_check.claims.claim_file import Claim
from drope_check.claims.evidence_spec import AUTHOR_FILES
from drope_check.claims.metric_paths import MetricPathError, parse_path, resolve
from drope_check.claims.protocol_identity import field_identity_mismatch
from drope_check.claims.verdicts import Verdict, evaluate, skipped_verdict

__all__ = [
    "ENV_VAR",
    "ERA",
    "SHARED_COPY",
    "AuthorFilesBroken",
    "AuthorFilesUnavailable",
    "author_files_measurements",
    "author_files_skip",
    "author_files_verdict",
    "is_author_files_import",
    "locate_upstream",
]

ENV_VAR = "DROPE_CHECK_UPSTREAM"
#: Where the shipped copy lies, relative to a folder above the repository.
SHARED_COPY = Path("shared") / "data" / "upstream-results"
#: The era the claims are judged against: the commits the report quotes.
ERA = "report"


class AuthorFilesUnavailable(Exception):
    """No copy of the author's files was found; ``str()`` says where the search looked and how to point at one."""


class AuthorFilesBroken(Exception):
    """A copy was found (or given) but cannot be imported; ``str()`` is the importer's sentence."""


def locate_upstream(given: str | None, roots: Sequence[Path]) -> Path:
    """The folder (or clone) of the author's files.

    ``given``: ``--upstream`` or, when that is None, ``$DROPE_CHECK_UPSTREAM``; it must exist.
    Otherwise the first ``<ancestor>/shared/data/upstream-results`` over the ancestors of each of
    ``roots`` (the repository root first). Raises :class:`AuthorFilesUnavailable` (nothing found)
    or :class:`AuthorFilesBroken` (``given`` is not a folder).
    """
    if given is None:
        given = os.environ.get(ENV_VAR) or None
        origin = ENV_VAR
    else:
        origin = "--upstream"
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise AuthorFilesBroken(
                f"{origin} {given}: not a folder (give a git clone of the upstream repository "
                "or a <commit>/<path> folder such as shared/data/upstream-results)"
            )
        return path.resolve()
    looked: list[str] = []
    for root in roots:
        for ancestor in Path(root).resolve().parents:
            candidate = ancestor / SHARED_COPY
            if str(candidate) in looked:
                continue
            looked.append(str(candidate))
            if candidate.is_dir():
                return candidate
    raise AuthorFilesUnavailable(
        f"no copy of the report author's result files found (looked in {', '.join(looked) or 'nowhere'}); "
        f"point at one with --upstream PATH or {ENV_VAR}=PATH (a git clone of DavidDemitriAfrica/drope-activations "
        "or a <commit>/<path> folder)"
    )


@functools.lru_cache(maxsize=4)
def author_files_measurements(source: str) -> dict[str, Any]:
    """The validated measurements of the author's files at ``source`` (era ``report``), imported
    once per process (each xdist worker imports its own copy: the import is deterministic)."""
    from drope_check.measurements.validate import MeasurementsFileError, validate_measurements
    from drope_check.sources.table import UpstreamImportError
    from drope_check.sources.upstream import import_upstream

    try:
        data = import_upstream(source, ERA)
        validate_measurements(data, f"the author's files at {source}")
    except (UpstreamImportError, MeasurementsFileError) as exc:
        raise AuthorFilesBroken(f"the author's files at {source} cannot be imported: {exc}") from None
    return data


def is_author_files_import(measurements: Mapping[str, Any]) -> bool:
    """Whether a measurements dict was written by ``drope-check import-upstream``."""
    return isinstance(measurements.get("upstream"), Mapping) and any(
        isinstance(m, Mapping) and "field_provenance" in m
        for m in (measurements.get("models") or {}).values()
    )


@functools.lru_cache(maxsize=1)
def _protocols() -> dict[str, dict[str, Any]]:
    from drope_check.sources.table import load_sources

    return {name: dict(p) for name, p in load_sources()["protocols"].items()}


def _expected_identity(name: str) -> dict[str, Any] | None:
    protocol = _protocols().get(name)
    if protocol is None:
        return None
    return {"protocol": name, "text_set": protocol.get("text_set")}


def _provenance(measurements: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    from drope_check.sources.field_provenance import field_provenance_for

    return field_provenance_for(measurements, path)


def _label(prov: Mapping[str, Any] | None) -> str:
    protocol = (prov or {}).get("protocol") or {}
    return str(protocol.get("label") or protocol.get("name") or "protocol not recorded")


def _short(commit: Any) -> str:
    return str(commit)[:7] if commit else "?"


def _joined(values: Sequence[str], sep: str) -> str:
    return sep.join(dict.fromkeys(v for v in values if v))


def _base(claim: Claim, verdict: Verdict, provs: Sequence[Mapping[str, Any] | None] = ()) -> Verdict:
    verdict.key = claim.source_key(AUTHOR_FILES)
    verdict.source = AUTHOR_FILES
    verdict.command = (
        f"{claim.rerun_command(AUTHOR_FILES)}   # the author's files: a report-derived value is never "
        f"regenerated; a band change needs a new rationale in {Path(claim.source_file).name}"
    )
    if provs:
        verdict.source_commit = _joined([str(p.get("commit")) for p in provs if p], ", ") or None
        verdict.source_protocol = _joined([_label(p) for p in provs], "; ") or None
    return verdict


def author_files_skip(claim: Claim, reason: str, outcome: str = "skip") -> Verdict:
    """A verdict of the author-files source that was not evaluated (no copy found, a broken copy)."""
    return _base(claim, skipped_verdict(claim, reason, outcome=outcome))


_skip = author_files_skip


def _after_report(prov: Mapping[str, Any] | None) -> str | None:
    """Why the run behind a field's provenance postdates the report, or None."""
    from drope_check.sources.table import run_after_report

    name = ((prov or {}).get("protocol") or {}).get("name")
    return run_after_report(str(name)) if name else None


def _nearest(
    claim: Claim, measurements: Mapping[str, Any], paths: Sequence[str], later: bool = False
) -> tuple[list[dict[str, Any]], str]:
    """The committed numbers at ``paths`` (with commit and protocol), and a sentence naming them; a
    number of a run made after the report is marked with its date wherever it is listed (``later``:
    the list is of such numbers)."""
    items: list[dict[str, Any]] = []
    texts: list[str] = []
    for path in paths:
        try:
            value = resolve(measurements, path, claim.key)
        except MetricPathError:
            items.append({"path": path, "value": None})
            texts.append(f"{path}: not in the author's files")
            continue
        prov = _provenance(measurements, path) or {}
        item = {"path": path, "value": value, "commit": prov.get("commit"), "protocol": _label(prov)}
        when = ""
        after = _after_report(prov) or ("made after the report" if later else None)
        if after:  # a later run is dated wherever it is listed
            item["later"] = after
            when = f"; {after}"
        items.append(item)
        texts.append(
            f"{fmt(value, ratio=parse_path(path).is_ratio)} = {path} ({_label(prov)} @{_short(prov.get('commit'))}{when})"
        )
    return items, "; ".join(texts)


def author_files_verdict(claim: Claim, measurements: Mapping[str, Any]) -> Verdict:
    """The verdict of ``claim`` against the author's files (an ``import-upstream`` measurements dict).

    Never raises for a claim: a missing path or another protocol is a ``skip``, an unknown protocol
    name in the claim file an ``error`` naming it.
    """
    evidence = claim.author_files
    if evidence is None:
        return _skip(
            claim,
            f"{Path(claim.source_file).name} does not say which of the author's protocols the "
            f'report\'s value came from: add [claim.evidence."author-files"] to {claim.key}',
        )
    if evidence.kind == "suite-only":
        return _skip(claim, f"the author's files cannot speak to this claim: {evidence.reason}")
    if evidence.kind == "prose-only":
        items, text = _nearest(claim, measurements, evidence.nearest)
        provs = [_provenance(measurements, i["path"]) for i in items if i["value"] is not None]
        reason = f"prose only: no committed result holds this number (the report says {fmt(claim.value, ratio=claim.is_ratio)}). Nearest: {text}"
        if evidence.later:
            later, later_text = _nearest(claim, measurements, evidence.later, later=True)
            items += later
            reason += f". Later evidence, not the source: {later_text}"
        if evidence.note:
            reason += f". {evidence.note}"
        verdict = _base(claim, skipped_verdict(claim, reason, outcome="prose-only"), provs)
        verdict.nearest = items
        return verdict
    # the author's files hold upstream's number, artefact and all: judged as a plain claim
    reading = dataclasses.replace(
        claim, metrics=evidence.metrics, status="claim" if claim.status == "artefact" else claim.status
    )
    provs = []
    for path, name in zip(evidence.metrics, evidence.protocols, strict=True):
        try:
            resolve(measurements, path, claim.key, text=claim.reads_text)
        except MetricPathError as exc:
            return _skip(claim, f"not in the author's files: {exc}")
        expected = _expected_identity(name)
        if expected is None:
            return _skip(
                claim,
                f"{Path(claim.source_file).name}: {claim.key}: evidence.author-files.protocol names "
                f"{name!r}, which drope_check/sources/upstream_sources.toml does not define "
                f"(known: {', '.join(sorted(_protocols()))})",
                outcome="error",
            )
        prov = _provenance(measurements, path)
        diffs = field_identity_mismatch(expected, prov)
        if diffs:
            shown = "; ".join(
                f"{key} {want!r} for the report's value, {got!r} in the file" for key, want, got in diffs
            )
            return _skip(
                claim,
                f"{path} in the author's files was made under another protocol than the report's value "
                f"({shown}); it is not judged against the claim",
            )
        provs.append(prov)
    try:
        judged = evaluate(reading, measurements)
    except MetricPathError as exc:  # e.g. a list where a pair comparison needs a scalar: a claim-file bug
        return _skip(claim, str(exc), outcome="error")
    verdict = _base(claim, judged, provs)
    verdict.status = claim.status
    notes = [evidence.note] if evidence.note else []
    later = [why for why in (_after_report(p) for p in provs) if why]
    if later:
        notes.insert(
            0,
            f"later evidence ({'; '.join(dict.fromkeys(later))}): it can contradict the claim, never be "
            "where its number came from",
        )
    if evidence.contradicted is not None:
        if verdict.outcome == "pass":
            verdict.outcome = "xpass"
            notes.insert(
                0,
                f"recorded as contradicted by the author's own files ({evidence.contradicted}), but it now "
                f"holds: remove 'contradicted' from {Path(claim.source_file).name}",
            )
        elif verdict.outcome == "fail":
            verdict.outcome = "xfail"
            notes.insert(0, f"the author's own files contradict the claim: {evidence.contradicted}")
    verdict.reason = " ".join(notes)
    return verdict
