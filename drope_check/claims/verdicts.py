"""Verdicts: one claim judged against one measurements dict.

Verdict outcomes
----------------
``pass`` / ``fail`` (status claim or golden), ``xfail`` (does-not-generalise and still does not
hold), ``xpass`` (does-not-generalise but now holds: a strict xfail, so the test fails),
``artefact`` (status artefact and outside its band: the report's value is explained as an artefact of
upstream's choices, and a faithful measurement not reproducing it is the finding; a non-strict
xfail; inside its band it is a ``pass`` that says it holds without the artefact),
``skip`` (status skip, pending goldens, unavailable pairs, another text set), ``error`` (a path that
is not in the measurements, or measurements that do not belong to this file), ``regenerated``
(under ``--regen-expected``, :mod:`drope_check.claims.regen`), ``prose-only`` (the author's files hold no
number for the claim: a finding, never a pass; :mod:`drope_check.sources.author_files`).

Every verdict names its evidence ``source``: ``suite`` (this suite's measurement, or a file given
to ``judge``) or ``author-files`` (the report author's committed files), and for the latter the
commit(s) and protocol(s) the value came from.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drope_check.claims.bands import BandResult, fmt, index_ranges
from drope_check.claims.claim_file import Claim, measured_model_ids
from drope_check.claims.metric_paths import MetricPathError, resolve
from drope_check.claims.protocol_identity import identity_mismatch
from drope_check.measurements.validate import is_optional_field
from drope_check.numbers import is_number

__all__ = [
    "Verdict",
    "evaluate",
    "evaluate_all",
    "outside_layers_text",
    "pending_reason",
    "protocol_mismatch",
    "strict_verdict",
    "skipped_verdict",
    "text_set_mismatch",
    "value_text",
    "verdict_for",
]

# ----------------------------------------------------------------------------------------------
# verdicts


@dataclass
class Verdict:
    """The outcome of one claim against one set of measurements; everything a report needs."""

    key: str
    pair: str
    id: str
    model: str
    family: str
    status: str
    sentence: str
    metrics: list[str]
    measured: Any
    expected: Any
    band: str
    passed: bool | None
    outcome: str  # pass | fail | artefact | xfail | xpass | skip | error | regenerated | prose-only
    margin: float | None
    margin_text: str
    rationale: str
    provenance: dict[str, Any]
    reason: str = ""
    measured_how: str | None = None
    recorded: Any = None
    command: str = ""
    order: int = 0
    texts_sha256: str | None = None  # under --regen-expected: the text set the value was measured on
    protocol_identity: dict[str, Any] | None = (
        None  # under --regen-expected: the protocol it was measured under
    )
    measured_models: str | None = None  # under --as-pair: the models actually measured, named on every line
    source: str = "suite"  # the evidence source: "suite" or "author-files" (drope_check.claims.evidence_spec)
    source_commit: str | None = None  # author-files: the commit(s) the value was read at (", "-joined)
    source_protocol: str | None = None  # author-files: the protocol(s) of the value (labels, "; "-joined)
    nearest: list[dict[str, Any]] | None = (
        None  # prose-only: the nearest committed numbers {path, value, commit, protocol}
    )
    ratio: bool = False  # the claim's value is a ratio: written 1.00x (Claim.is_ratio, value_text)
    suite_only: str | None = None  # why the author's files cannot judge the claim (evidence suite_only)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["margin"] = _json_float(self.margin)
        out["measured"] = _json_value(self.measured)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})

    def failure_message(self) -> str:
        """What a failing claim prints: measured / expected / band / margin / why / how to rerun."""
        lines = [
            f"claim {self.key} does not hold"
            if self.outcome != "xpass"
            else f"claim {self.key} was recorded as not generalising, but now holds",
            f"  report says : {self.sentence}",
            f"  measured    : {value_text(self, 'measured')}   ({', '.join(self.metrics)})",
            f"  expected    : {value_text(self, 'expected')}   (status {self.status})",
            f"  band        : {self.band}",
            f"  margin      : {self.margin_text}",
            f"  rationale   : {self.rationale}",
            f"  provenance  : {_provenance_text(self.provenance)}",
        ]
        if self.measured_models:
            lines.append(
                f"  measured on : {self.measured_models} (--as-pair: not the models the claim is about)"
            )
        if self.source != "suite":
            lines.append(
                f"  source      : {self.source} @{self.source_commit or '?'} ({self.source_protocol or '?'})"
            )
        if self.reason:
            lines.append(f"  note        : {self.reason}")
        lines.append(f"  command     : {self.command}")
        return "\n".join(lines)


def value_text(v: Verdict | Mapping[str, Any], key: str) -> str:
    """A value of a verdict (``measured``, ``expected``, ``recorded``) as every report line writes it:
    :func:`~drope_check.claims.bands.fmt`, a ratio claim's values as ratios (``1.00x``, not ``1``)."""
    data = v.__dict__ if isinstance(v, Verdict) else v
    return fmt(data.get(key), ratio=bool(data.get("ratio")))


def _provenance_text(prov: Mapping[str, Any]) -> str:
    text = f"{prov.get('source', '?')}; text set: {prov.get('text_set', '?')}"
    if "results_value" in prov:
        text += f"; upstream results file: {fmt(prov['results_value'])}"
    if prov.get("notes"):
        text += f"; {prov['notes']}"
    return text


def _json_float(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def _json_value(x: Any) -> Any:
    if isinstance(x, list):
        return [_json_value(v) for v in x]
    return _json_float(x)


def claim_value(claim: Claim, measurements: Mapping[str, Any]) -> Any:
    """The value a claim compares: its metric path's value, a pair's two values, or their combination
    (ratio / difference); raises :class:`MetricPathError` for a path that does not hold what it needs."""
    values = [resolve(measurements, path, claim.key, text=claim.reads_text) for path in claim.metrics]
    if claim.model != "pair":
        return values[0]
    if claim.combine is None:
        if claim.reads_text:
            return values  # facts written as text, each compared with the claim's value
        for path, v in zip(claim.metrics, values, strict=True):
            if not is_number(v):
                raise MetricPathError(path, "a pair comparison needs a scalar here, got a list", claim.key)
        return values
    a, b = values
    if not (is_number(a) and is_number(b)):
        raise MetricPathError(claim.metrics[0], "combine needs two scalars", claim.key)
    if claim.combine == "ratio":
        if b == 0:
            return math.inf if a > 0 else (math.nan if a == 0 else -math.inf)
        return a / b
    return a - b


def base_verdict(claim: Claim, **kw: Any) -> Verdict:
    """A verdict carrying everything the claim says about itself; ``kw`` sets the outcome's fields."""
    fields: dict[str, Any] = dict(
        key=claim.source_key("suite"),
        pair=claim.pair,
        id=claim.id,
        model=claim.model,
        family=claim.family,
        status=claim.status,
        sentence=claim.sentence,
        metrics=list(claim.metrics),
        measured=None,
        expected=claim.value,
        band=claim.band_text(),
        passed=None,
        outcome="skip",
        margin=None,
        margin_text="",
        rationale=claim.rationale,
        provenance=dict(claim.provenance),
        measured_how=claim.measured_how,
        recorded=claim.recorded,
        command=claim.rerun_command("suite"),
        order=claim.order,
        ratio=claim.is_ratio,
        suite_only=claim.suite_only_reason,
    )
    fields.update(kw)
    return Verdict(**fields)


def skipped_verdict(claim: Claim, reason: str, outcome: str = "skip") -> Verdict:
    """A verdict for a claim that was not evaluated (unavailable pair, pending golden, status skip)."""
    return base_verdict(claim, outcome=outcome, reason=reason)


def pending_reason(claim: Claim) -> str | None:
    """Why this claim is not evaluated at all, or None when it is."""
    if claim.status == "skip":
        return claim.skip_reason
    if claim.pending and claim.status == "golden":
        return f"golden not yet measured — run {claim.regen_command()}"
    if claim.pending:
        return (
            f"the value this suite measures on {claim.pair} is not recorded yet — run {claim.regen_command()}"
        )
    return None


def text_set_mismatch(claim: Claim, measurements: Mapping[str, Any]) -> str | None:
    """Why a suite-measured value cannot be compared with these measurements, or None.

    A golden measured on WikiText-2 says nothing about a run on another text set (the gensim
    fallback, say): such a claim is skipped with both text sets named, never failed or passed.
    """
    if claim.texts_sha256 is None:
        return None
    texts = measurements.get("texts") or {}
    got = texts.get("sha256")
    if got == claim.texts_sha256:
        return None
    return (
        f"{claim.key} was measured on text set sha256 {claim.texts_sha256[:12]}, this run used "
        f"{str(got)[:12]} ({texts.get('name', '?')} from {texts.get('source', '?')}); provide the same texts "
        f"(WikiText-2: --drope-wikitext PATH or DROPE_CHECK_WIKITEXT) or, if intended, {claim.regen_command()}"
    )


def protocol_mismatch(claim: Claim, measurements: Mapping[str, Any]) -> str | None:
    """Why a suite-measured value cannot be compared with measurements made under another protocol, or None.

    The claim's recorded ``protocol`` identity (:mod:`drope_check.claims.protocol_identity`) must agree
    with the measurements' on every field that changes the value; otherwise the claim is skipped
    with both named, never failed or passed.
    """
    if claim.protocol is None:
        return None
    diffs = identity_mismatch(claim.protocol, measurements, claim.model, claim.metrics)
    if not diffs:
        return None
    shown = "; ".join(f"{key} {recorded!r} there, {measured!r} here" for key, recorded, measured in diffs)
    return (
        f"{claim.key} was measured under another protocol than this run ({shown}); measure with the recorded "
        f"protocol or, if the change is intended, {claim.regen_command()}"
    )


def _series_start(claim: Claim) -> tuple[int, str] | None:
    """The index of a claim's first measured value in its series and what the series counts
    (``layers``), when the claim reads one series element by element: one path ending in a list
    field (``rope:layers.sink_rate``) or a slice of one (``[2:31]``); otherwise None."""
    if claim.model == "pair" or len(claim.metrics) != 1:
        return None
    steps = claim.parsed_metrics[0].steps
    if steps and steps[-1][0] == "slice":
        start, steps = steps[-1][1] or 0, steps[:-1]
    else:
        start = 0
    if any(step[0] != "key" for step in steps):
        return None
    return start, "layers" if steps and steps[0] == ("key", "layers") else "elements"


def outside_layers_text(claim: Claim, measured: Any, result: BandResult) -> str:
    """For a failed band over a series (a per-layer slice): every layer outside the band, compactly,
    the layers judged and the worst one, e.g. ``"; outside at layers 2-5, 9 (of 0-29), worst at
    layer 4"``; ``""`` for a passed band, a scalar, or a failure not judged layer by layer (a
    non-finite value, a length mismatch)."""
    if result.passed or not result.outside or not isinstance(measured, list) or len(measured) < 2:
        return ""
    if any(isinstance(v, (list, tuple)) for v in measured):
        return ""
    where = _series_start(claim)
    if where is None:
        return ""
    start, what = where
    one = what[:-1]
    outside = [start + i for i in result.outside]
    named = f"{what} {index_ranges(outside)}" if len(outside) > 1 else f"{one} {outside[0]}"
    text = f"; outside at {named} (of {start}-{start + len(measured) - 1})"
    if result.worst_at is not None and len(outside) > 1:
        text += f", worst at {one} {start + result.worst_at}"
    return text


def evaluate(claim: Claim, measurements: Mapping[str, Any]) -> Verdict:
    """Judge one claim against one measurements dict.

    Raises :class:`MetricPathError` when a path is missing; :func:`verdict_for` turns that into an
    ``error`` verdict instead. A skipped or pending claim gives a ``skip`` verdict without reading
    the measurements: a golden that was never measured can never pass.
    """
    why = (
        pending_reason(claim)
        or text_set_mismatch(claim, measurements)
        or protocol_mismatch(claim, measurements)
    )
    if why is not None:
        return skipped_verdict(claim, why)
    assert claim.band is not None
    measured = claim_value(claim, measurements)
    result = claim.band.check(measured, claim.value)
    verdict = base_verdict(
        claim,
        measured=measured,
        passed=result.passed,
        margin=result.margin,
        margin_text=result.margin_text + outside_layers_text(claim, measured, result),
    )
    if claim.status == "does-not-generalise":
        if result.passed:
            verdict.outcome = "xpass"
            verdict.reason = (
                f"recorded as not generalising to {claim.pair} (suite measured {value_text(verdict, 'recorded')}), but "
                f'it now holds with {value_text(verdict, "measured")}: change its status to "claim" in '
                f"{Path(claim.source_file).name}"
            )
        else:
            verdict.outcome = "xfail"
            verdict.reason = (
                f"does not generalise to {claim.pair}: the suite measured {value_text(verdict, 'measured')} "
                f"(recorded {value_text(verdict, 'recorded')}) where the report claims {value_text(verdict, 'expected')}"
            )
    else:
        verdict.outcome = "pass" if result.passed else "fail"
        if claim.status == "artefact":
            if result.passed:
                verdict.reason = (
                    f"holds without the artefact: {Path(claim.source_file).name} explains the report's "
                    f"value as coming from {claim.artefact}, yet this measurement reproduces it"
                )
            else:
                verdict.outcome = "artefact"
                verdict.reason = f"artefact: the report's value comes from {claim.artefact}"
        if claim.status == "golden":
            verdict.command = (
                f"{claim.rerun_command('suite')}   # if the change is intended: {claim.regen_command()}"
            )
        else:
            verdict.command = (
                f"{claim.rerun_command('suite')}   # a report-derived value is never regenerated; "
                f"a band change needs a new rationale in {Path(claim.source_file).name}"
            )
    return verdict


def verdict_for(claim: Claim, measurements: Mapping[str, Any], as_pair: bool = False) -> Verdict:
    """Like :func:`evaluate`, but a missing path becomes an ``error`` verdict naming claim and path,
    or a ``skip`` ("not measured by this source") when the missing key is one the schema marks
    optional (:data:`~drope_check.measurements.validate.OPTIONAL_FIELDS`).

    ``as_pair``: the measurements are of other models than the claim's (``--as-pair``); the
    verdict names them (:func:`measured_models_text`).
    """
    try:
        verdict = evaluate(claim, measurements)
    except MetricPathError as exc:
        if exc.missing_key is not None and is_optional_field(exc.missing_key):
            verdict = skipped_verdict(claim, f"not measured by this source: {exc}")
        else:
            verdict = base_verdict(claim, outcome="error", reason=str(exc))
    if as_pair:
        verdict.measured_models = measured_models_text(measurements)
    return verdict


def measured_models_text(measurements: Mapping[str, Any]) -> str:
    """``rope=<model id>, drope=<model id>`` of the measured models."""
    return ", ".join(
        f"{role}={ident}" for role, ident in sorted(measured_model_ids(measurements).items(), reverse=True)
    )


def strict_verdict(claim: Claim, verdict: Verdict) -> Verdict:
    """Under ``--strict``: a claim of an available pair that was skipped is an ``error``, unless it
    is a status-skip claim about a recalibrated DroPE model (:attr:`Claim.skip_is_recalibrated_only`).

    Call it only for pairs whose measurements exist (an unavailable pair is ``--require-models``'s job).
    """
    if verdict.outcome != "skip" or claim.skip_is_recalibrated_only:
        return verdict
    verdict.outcome = "error"
    verdict.reason = f"--strict: this claim was not evaluated: {verdict.reason}"
    return verdict


def evaluate_all(claims: Iterable[Claim], measurements: Mapping[str, Any]) -> list[Verdict]:
    return [verdict_for(c, measurements) for c in claims]
