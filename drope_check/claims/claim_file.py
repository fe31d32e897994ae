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


Bands: :mod:`drope_check.claims.bands`. Metric paths: :mod:`drope_check.claims.metric_paths`.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drope_check.claims.bands import BAND_KINDS, ONE_SIDED_OPS, Band
from drope_check.claims.evidence_spec import AuthorFilesEvidence, parse_evidence
from drope_check.claims.metric_paths import MetricPath, MetricPathError, parse_path
from drope_check.claims.protocol_identity import validate_recorded_identity
from drope_check.measurements.validate import VARIANTS, validate_measurements
from drope_check.numbers import flatten, is_number

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "AUTHOR_FILES_ONLY_FAMILIES",
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
MODELS: tuple[str, ...] = ("rope", "drope", "pair")
FAMILIES: tuple[str, ...] = ("perplexity", "intervention", "sink", "phase", "method")
#: Families judged on the author's files only: a Methods statement is about the author's code, which
#: no measurement of the models can speak to.
AUTHOR_FILES_ONLY_FAMILIES: tuple[str, ...] = ("method",)
STATUSES: tuple[str, ...] = ("claim", "artefact", "golden", "does-not-generalise", "skip")
#: Statuses whose value is the report's (never rewritten by --regen-expected).
REPORT_STATUSES: tuple[str, ...] = ("claim", "artefact")
PROVENANCE_SOURCES: tuple[str, ...] = ("results-json", "prose-only", "derived", "suite-measured")
COMBINE: tuple[str, ...] = ("ratio", "difference")

_ID_RE = re.compile(r"^[a-z0-9_]+$")
_CLAIM_KEYS = frozenset({
    "id", "model", "family", "sentence", "metric", "combine", "value", "status", "rationale", "band",
    "provenance", "measured_how", "measured", "pending", "skip_reason", "plot", "texts_sha256", "protocol",
    "evidence", "artefact",
})
_BAND_KEYS: dict[str, frozenset[str]] = {
    "absolute": frozenset({"tol"}),
    "relative": frozenset({"rel"}),
    "log_ratio": frozenset({"factor"}),
    "one_sided": frozenset({"op", "bound"}),
    "exact": frozenset(),
    "range": frozenset({"lo", "hi"}),
    "ordering": frozenset({"op", "factor"}),
    "each": frozenset({"ops", "bounds"}),
    "equals": frozenset(),
}
_PAIR_KEYS = frozenset({"name", "description", "drope_variant", "run_hint", "report", "models"})
#: A status-"skip" claim whose skip_reason contains this is about a recalibrated DroPE model, which
#: a pair without one cannot test; ``--strict`` exempts exactly these skips.
RECALIBRATED_SKIP = "about a recalibrated DroPE model"
_PROVENANCE_KEYS = frozenset({"source", "text_set", "notes", "results_value"})
_PLOT_KEYS = frozenset({"series", "layer"})
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
    author_files: AuthorFilesEvidence | None = None  # [claim.evidence."author-files"] (drope_check.claims.evidence_spec)
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


def _is_text(x: Any) -> bool:
    return isinstance(x, str) and bool(x.strip())


def _is_value(x: Any) -> bool:
    """A finite number or a non-empty flat-or-nested list of them (TOML can spell nan and inf)."""
    if isinstance(x, list):
        return bool(x) and all(_is_value(v) for v in x)
    return is_number(x) and math.isfinite(x)


def _req_str(table: Mapping[str, Any], key: str, err: Any, allow_empty: bool = False) -> str:
    if key not in table:
        raise err(key, "is required")
    value = table[key]
    if not isinstance(value, str):
        raise err(key, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise err(key, "must not be empty")
    return value


def _validate_band(raw: Any, err: Any, n_metrics: int, value: Any, combine: str | None, model: str) -> Band:
    if not isinstance(raw, Mapping):
        raise err("band", "must be a table, e.g. band = { kind = \"absolute\", tol = 0.03 }")
    kind = raw.get("kind")
    if kind not in BAND_KINDS:
        raise err("band.kind", f"must be one of {', '.join(BAND_KINDS)}, got {kind!r}")
    allowed = _BAND_KEYS[kind]
    for key in raw:
        if key != "kind" and key not in allowed:
            raise err(f"band.{key}", f"is not a parameter of a {kind!r} band (allowed: {', '.join(sorted(allowed)) or 'none'})")
    params = {k: v for k, v in raw.items() if k != "kind"}
    combined = model != "pair" or combine is not None
    if kind == "equals":
        if combine is not None:
            raise err("combine", "an 'equals' band compares text: it combines nothing")
        return Band(kind, params)

    def need_number(key: str, check: Any = None, what: str = "") -> None:
        if key not in params:
            raise err(f"band.{key}", f"is required for a {kind!r} band")
        if not is_number(params[key]) or not math.isfinite(params[key]):
            raise err(f"band.{key}", "must be a finite number")
        if check is not None and not check(params[key]):
            raise err(f"band.{key}", what)

    if kind in ("ordering", "each"):
        if model != "pair" or combine is not None:
            raise err("band.kind", f"a {kind!r} band compares several metrics: needs model = \"pair\" and no combine")
        if kind == "ordering":
            if n_metrics != 2:
                raise err("metric", "an 'ordering' band needs exactly two metric paths")
            if params.get("op") not in ONE_SIDED_OPS:
                raise err("band.op", f"must be one of {', '.join(ONE_SIDED_OPS)}")
            if "factor" in params:
                need_number("factor", lambda f: f > 0, "must be > 0")
        else:
            ops, bounds = params.get("ops"), params.get("bounds")
            if not isinstance(ops, list) or not all(o in ONE_SIDED_OPS for o in ops):
                raise err("band.ops", f"must be a list of {', '.join(ONE_SIDED_OPS)}")
            if not isinstance(bounds, list) or not all(is_number(b) for b in bounds):
                raise err("band.bounds", "must be a list of numbers")
            if not (len(ops) == len(bounds) == n_metrics):
                raise err("band.ops", f"ops ({len(ops)}), bounds ({len(bounds)}) and metric ({n_metrics}) must have the same length")
        return Band(kind, params)
    if not combined:
        raise err("combine", f"a pair claim with a {kind!r} band needs combine = \"ratio\" or \"difference\"")
    if kind == "absolute":
        need_number("tol", lambda t: t > 0, "must be > 0")
    elif kind == "relative":
        need_number("rel", lambda t: t > 0, "must be > 0")
        if value is not None and any(v == 0 for v in flatten(value)):
            raise err("value", "a relative band needs a non-zero value")
    elif kind == "log_ratio":
        need_number("factor", lambda f: f > 1, "must be > 1")
        if value is not None and any(v <= 0 for v in flatten(value)):
            raise err("value", "a log_ratio band needs a positive value")
    elif kind == "one_sided":
        if params.get("op") not in ONE_SIDED_OPS:
            raise err("band.op", f"must be one of {', '.join(ONE_SIDED_OPS)}")
        need_number("bound")
    elif kind == "exact":
        if value is not None and not all(float(v).is_integer() for v in flatten(value)):
            raise err("value", "an 'exact' band needs integer value(s) (layer indices)")
    elif kind == "range":
        need_number("lo")
        need_number("hi")
        if params["lo"] > params["hi"]:
            raise err("band.lo", f"lo ({params['lo']}) is above hi ({params['hi']})")
    return Band(kind, params)


def _parse_claim(raw: Any, index: int, pair: str, file: str) -> Claim:
    if not isinstance(raw, Mapping):
        raise ClaimsFileError(file, f"#{index}", None, "each [[claim]] must be a table")
    cid = raw.get("id")
    shown = cid if isinstance(cid, str) and cid else f"#{index} (no id)"

    def err(key: str, message: str) -> ClaimsFileError:
        return ClaimsFileError(file, shown, key, message)

    if not isinstance(cid, str) or not _ID_RE.match(cid):
        raise err("id", "is required and must match [a-z0-9_]+")
    for key in raw:
        if key not in _CLAIM_KEYS:
            raise err(key, f"is not a claim key (allowed: {', '.join(sorted(_CLAIM_KEYS))})")
    model = raw.get("model")
    if model not in MODELS:
        raise err("model", f"must be one of {', '.join(MODELS)}, got {model!r}")
    shown = f"{cid}[{pair}:{model}]"
    family = raw.get("family")
    if family not in FAMILIES:
        raise err("family", f"must be one of {', '.join(FAMILIES)}, got {family!r}")
    status = raw.get("status")
    if status not in STATUSES:
        raise err("status", f"must be one of {', '.join(STATUSES)}, got {status!r}")
    sentence = _req_str(raw, "sentence", err)
    rationale = _req_str(raw, "rationale", err)

    prov_raw = raw.get("provenance")
    if not isinstance(prov_raw, Mapping):
        raise err("provenance", "is required: a table with source, text_set (and optional notes)")
    for key in prov_raw:
        if key not in _PROVENANCE_KEYS:
            raise err(f"provenance.{key}", f"is not a provenance key (allowed: {', '.join(sorted(_PROVENANCE_KEYS))})")
    source = prov_raw.get("source")
    if source not in PROVENANCE_SOURCES:
        raise err("provenance.source", f"must be one of {', '.join(PROVENANCE_SOURCES)}, got {source!r}")
    _req_str(prov_raw, "text_set", lambda k, m: err(f"provenance.{k}", m))
    if "notes" in prov_raw and not isinstance(prov_raw["notes"], str):
        raise err("provenance.notes", "must be a string")
    if "results_value" in prov_raw and not _is_value(prov_raw["results_value"]):
        raise err("provenance.results_value", "must be a number or a list of numbers")

    pending = raw.get("pending", False)
    if not isinstance(pending, bool):
        raise err("pending", "must be true or false")
    if pending and status not in ("golden", "does-not-generalise"):
        raise err("pending", "only a 'golden' or 'does-not-generalise' claim can be pending")

    skip_reason = raw.get("skip_reason")
    if status == "skip":
        skip_reason = _req_str(raw, "skip_reason", err)
    elif skip_reason is not None:
        raise err("skip_reason", "is only allowed with status = \"skip\"")

    metric_raw = raw.get("metric")
    metrics: tuple[str, ...] = ()
    if metric_raw is None:
        if status != "skip":
            raise err("metric", "is required")
    else:
        metric_list = [metric_raw] if isinstance(metric_raw, str) else metric_raw
        if not isinstance(metric_list, list) or not metric_list or not all(isinstance(m, str) for m in metric_list):
            raise err("metric", "must be a path string or a list of path strings")
        for m in metric_list:
            try:
                parsed = parse_path(m)
            except MetricPathError as exc:
                raise err("metric", exc.detail + f" (in {m!r})") from None
            negative = [step for step in parsed.steps if step[0] in ("index", "slice")
                        and any(isinstance(i, int) and i < 0 for i in step[1:])]
            if negative:
                raise err("metric", f"{m!r} counts from the end ([-1], [2:-1]): write explicit layer indices, so "
                          "that a measurement with another number of layers is an error, not another layer")
            if model != "pair" and parsed.root not in (model, "root"):
                raise err("metric", f"a {model!r} claim must read a {model}: path, got {m!r}")
        if model == "pair" and len(metric_list) < 2:
            raise err("metric", "a pair claim needs a list of at least two paths")
        if model != "pair" and len(metric_list) != 1:
            raise err("metric", f"a {model!r} claim reads exactly one path")
        metrics = tuple(metric_list)

    combine = raw.get("combine")
    if combine is not None:
        if model != "pair":
            raise err("combine", "is only for model = \"pair\" claims")
        if combine not in COMBINE:
            raise err("combine", f"must be one of {', '.join(COMBINE)}, got {combine!r}")
        if len(metrics) != 2:
            raise err("combine", "combines exactly two paths")

    value = raw.get("value")
    text_band = isinstance(raw.get("band"), Mapping) and raw["band"].get("kind") == "equals"
    if text_band:
        if not _is_text(value):
            raise err("value", "an 'equals' band compares text: the value must be a non-empty string")
    elif value is not None and not _is_value(value):
        raise err("value", "must be a number or a non-empty list of numbers")
    if status == "golden" and not pending and value is None:
        raise err("value", "a golden needs a value, or pending = true until it is measured")
    if status in (*REPORT_STATUSES, "does-not-generalise") and value is None:
        raise err("value", f"is required for status {status!r} (the report's value)")
    artefact = raw.get("artefact")
    if status == "artefact":
        artefact = _req_str(raw, "artefact", err)
    elif artefact is not None:
        raise err("artefact", "is only allowed with status = \"artefact\" (the cause the report's value comes from)")

    band = None
    if "band" in raw:
        band = _validate_band(raw["band"], err, len(metrics), value, combine, model)
    elif status != "skip":
        raise err("band", "is required")
    if band is not None and band.kind == "exact" and value is None and not pending:
        raise err("value", "an 'exact' band needs a value")

    measured_how = raw.get("measured_how")
    if measured_how is not None and (not isinstance(measured_how, str) or not measured_how.strip()):
        raise err("measured_how", "must be a non-empty string")
    recorded = raw.get("measured")
    if status == "golden" and not pending and measured_how is None:
        raise err("measured_how", "a measured golden must say how, where and with what settings it was measured")
    if status == "does-not-generalise" and not pending:
        if recorded is None or not _is_value(recorded):
            raise err("measured", "a does-not-generalise claim records the value this suite measured (or pending = true)")
        if measured_how is None:
            raise err("measured_how", "a does-not-generalise claim must say how, where and with what settings it was measured")
    if recorded is not None and status != "does-not-generalise":
        raise err("measured", "is only for status = \"does-not-generalise\" (a golden keeps its value in 'value')")
    if status == "golden" and source != "suite-measured":
        raise err("provenance.source", "a golden's value is measured by this suite: source = \"suite-measured\"")

    texts_sha256 = raw.get("texts_sha256")
    if texts_sha256 is not None and (not isinstance(texts_sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", texts_sha256)):
        raise err("texts_sha256", "must be the 64-hex-digit sha256 of the text set (measurements texts.sha256)")
    if texts_sha256 is not None and status not in ("golden", "does-not-generalise"):
        raise err("texts_sha256", "is only recorded for suite-measured values (golden / does-not-generalise)")

    protocol = raw.get("protocol")
    if protocol is not None:
        if status not in ("golden", "does-not-generalise"):
            raise err("protocol", "is only recorded for suite-measured values (golden / does-not-generalise)")
        problem = validate_recorded_identity(protocol, metrics)
        if problem is not None:
            raise err("protocol", problem)

    plot = raw.get("plot")
    if plot is not None:
        if not isinstance(plot, Mapping) or set(plot) - _PLOT_KEYS or "series" not in plot:
            raise err("plot", "must be a table { series = \"bos_norm\", layer = 23 }")
        if not isinstance(plot["series"], str) or ("layer" in plot and not isinstance(plot["layer"], int)):
            raise err("plot", "series must be a string and layer an integer")

    author_files = parse_evidence(raw.get("evidence"), err, model, status, metrics)
    if family in AUTHOR_FILES_ONLY_FAMILIES:
        if author_files is None or not author_files.has_test:
            raise err("evidence", f"a {family!r} claim is judged on the author's files only: it needs a "
                      "[claim.evidence.\"author-files\"] table that is not suite_only")
        if status not in REPORT_STATUSES:
            raise err("status", f"a {family!r} claim states what the report's author did: status \"claim\"")

    return Claim(
        pair=pair, id=cid, model=model, family=family, sentence=sentence, metrics=metrics, combine=combine,
        value=value, status=status, rationale=rationale, band=band, provenance=dict(prov_raw),
        measured_how=measured_how, recorded=recorded, pending=pending, skip_reason=skip_reason,
        plot=dict(plot) if plot is not None else None, texts_sha256=texts_sha256,
        protocol=dict(protocol) if protocol is not None else None, source_file=file, order=index,
        author_files=author_files, artefact=artefact,
    )


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
            raise ClaimsFileError(file, None, key, "unknown top-level key (allowed: schema_version, pair, claim)")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ClaimsFileError(file, None, "schema_version", f"must be {SCHEMA_VERSION}")
    head = data.get("pair")
    if not isinstance(head, Mapping):
        raise ClaimsFileError(file, None, "pair", "a [pair] table is required")
    for key in head:
        if key not in _PAIR_KEYS:
            raise ClaimsFileError(file, None, f"pair.{key}", f"unknown key (allowed: {', '.join(sorted(_PAIR_KEYS))})")

    def head_err(key: str, message: str) -> ClaimsFileError:
        return ClaimsFileError(file, None, f"pair.{key}", message)

    name = _req_str(head, "name", head_err)
    if name != pair:
        raise head_err("name", f"is {name!r} but the file is named for {pair!r}")
    variant = _req_str(head, "drope_variant", head_err)
    if variant not in _VARIANTS:
        raise head_err("drope_variant", f"must be one of {', '.join(_VARIANTS)}")
    run_hint = _req_str(head, "run_hint", head_err)
    model_ids = head.get("models", {})
    if not isinstance(model_ids, Mapping) or set(model_ids) - {"rope", "drope"} or not all(
        isinstance(v, str) and v for v in model_ids.values()
    ):
        raise head_err("models", "must be a table { rope = \"<model id>\", drope = \"<model id>\" }")
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
        pair=pair, path=file, description=str(head.get("description", "")), drope_variant=variant,
        run_hint=run_hint, report=str(head.get("report", "")), claims=tuple(claims), model_ids=dict(model_ids),
    )


def measured_model_ids(measurements: Mapping[str, Any]) -> dict[str, str]:
    """role -> ``provenance.model_id`` of each measured model (``"?"`` where the file does not say)."""
    out = {}
    for role, model in (measurements.get("models") or {}).items():
        prov = model.get("provenance") if isinstance(model, Mapping) else None
        ident = prov.get("model_id") if isinstance(prov, Mapping) else None
        out[role] = str(ident) if ident else "?"
    return out


def check_measurements(claim_set: ClaimSet, measurements: Mapping[str, Any], origin: str = "measurements",
                       as_pair: bool = False) -> None:
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
        raise MeasurementsMismatch(f"{origin}: $.pair: the file measures pair {got!r}, but the claims are for "
                                   f"{claim_set.pair!r}", "$.pair")
    drope = measurements["models"]["drope"]
    if drope.get("variant") != claim_set.drope_variant:
        raise MeasurementsMismatch(
            f"{origin}: $.models.drope.variant: the DroPE side is variant {drope.get('variant')!r}, but {claim_set.path} "
            f"assumes {claim_set.drope_variant!r}", "$.models.drope.variant"
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
                "the measured models)", where
            )
