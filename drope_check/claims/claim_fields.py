"""The keys of a ``[[claim]]`` table: one row per key, read in order by :func:`parse_claim_fields`.

:mod:`drope_check.claims.claim_file` reads the claim file; this module says what each key of a claim may
hold and, when it holds something else, the sentence that names the key. :data:`CLAIM_FIELDS` is
the table: each :class:`ClaimField` gives the TOML key, the :class:`~drope_check.claims.claim_file.Claim`
attribute it fills, its default when absent, and its check (a validator that returns the parsed
value or raises the error worded for that key). Rows run in the table's order, and a row may read
the rows above it (``pending`` reads ``status``; ``band`` reads ``metric``, ``value`` and
``combine``), so the first error of a claim is always the same one. Rows whose ``attr`` is None are
checks across keys (a golden's ``provenance.source``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from drope_check.claims.band_fields import validate_band
from drope_check.claims.bands import Band
from drope_check.claims.evidence_spec import parse_evidence
from drope_check.claims.metric_paths import MetricPathError, parse_path
from drope_check.claims.protocol_identity import validate_recorded_identity
from drope_check.numbers import is_number

__all__ = [
    "AUTHOR_FILES_ONLY_FAMILIES",
    "CLAIM_FIELDS",
    "CLAIM_KEYS",
    "COMBINE",
    "FAMILIES",
    "MODELS",
    "PROVENANCE_SOURCES",
    "REPORT_STATUSES",
    "STATUSES",
    "ClaimField",
    "parse_claim_fields",
]

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
#: Statuses whose value this suite measured (a text set and a protocol may be recorded with it).
_SUITE_MEASURED: tuple[str, ...] = ("golden", "does-not-generalise")

_ID_RE = re.compile(r"^[a-z0-9_]+$")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_PROVENANCE_KEYS = frozenset({"source", "text_set", "notes", "results_value"})
_PLOT_KEYS = frozenset({"series", "layer"})

# ----------------------------------------------------------------------------------------------
# value predicates and the band's parameters


def _is_text(x: Any) -> bool:
    return isinstance(x, str) and bool(x.strip())


def _is_value(x: Any) -> bool:
    """A finite number or a non-empty flat-or-nested list of them (TOML can spell nan and inf)."""
    if isinstance(x, list):
        return bool(x) and all(_is_value(v) for v in x)
    return is_number(x) and math.isfinite(x)


def require_str(table: Mapping[str, Any], key: str, err: Any, allow_empty: bool = False) -> str:
    if key not in table:
        raise err(key, "is required")
    value = table[key]
    if not isinstance(value, str):
        raise err(key, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise err(key, "must not be empty")
    return value


# ----------------------------------------------------------------------------------------------
# the table


class Draft:
    """A claim being read: its raw table, the values of the rows read so far (by ``Claim``
    attribute), and ``err`` naming the claim as far as it is known (``#3 (no id)``, the id, then
    ``id[pair:model]`` once the model is read)."""

    def __init__(
        self, raw: Mapping[str, Any], index: int, pair: str, error: Callable[[str, str, str], Exception]
    ) -> None:
        self.raw = raw
        self.index = index
        self.pair = pair
        self.values: dict[str, Any] = {}
        self._error = error

    @property
    def shown(self) -> str:
        cid = self.raw.get("id")
        if "model" in self.values:
            return f"{cid}[{self.pair}:{self.values['model']}]"
        return cid if isinstance(cid, str) and cid else f"#{self.index} (no id)"

    def err(self, key: str, message: str) -> Exception:
        return self._error(self.shown, key, message)

    def __getattr__(self, name: str) -> Any:  # the rows above: d.status, d.metrics, ...
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True)
class ClaimField:
    """One row of :data:`CLAIM_FIELDS`.

    ``key``: the TOML key, named by its errors. ``attr``: the ``Claim`` attribute the parsed value
    fills (None: a check across keys, filling nothing). ``default``: the raw value of an absent key.
    ``check(raw_value, draft)``: the parsed value, or raises ``draft.err(key, wording)``.
    """

    key: str
    attr: str | None
    check: Callable[[Any, Draft], Any]
    default: Any = None


def _one_of(key: str, choices: tuple[str, ...]) -> Callable[[Any, Draft], Any]:
    def check(value: Any, d: Draft) -> Any:
        if value not in choices:
            raise d.err(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _required_text(key: str) -> Callable[[Any, Draft], str]:
    return lambda _value, d: require_str(d.raw, key, d.err)


def _provenance(prov: Any, d: Draft) -> dict[str, Any]:
    if not isinstance(prov, Mapping):
        raise d.err("provenance", "is required: a table with source, text_set (and optional notes)")
    for key in prov:
        if key not in _PROVENANCE_KEYS:
            raise d.err(
                f"provenance.{key}",
                f"is not a provenance key (allowed: {', '.join(sorted(_PROVENANCE_KEYS))})",
            )
    _one_of("provenance.source", PROVENANCE_SOURCES)(prov.get("source"), d)
    require_str(prov, "text_set", lambda k, m: d.err(f"provenance.{k}", m))
    if "notes" in prov and not isinstance(prov["notes"], str):
        raise d.err("provenance.notes", "must be a string")
    if "results_value" in prov and not _is_value(prov["results_value"]):
        raise d.err("provenance.results_value", "must be a number or a list of numbers")
    return dict(prov)


def _pending(pending: Any, d: Draft) -> bool:
    if not isinstance(pending, bool):
        raise d.err("pending", "must be true or false")
    if pending and d.status not in _SUITE_MEASURED:
        raise d.err("pending", "only a 'golden' or 'does-not-generalise' claim can be pending")
    return pending


def _only_with_status(key: str, status: str, why: str = "") -> Callable[[Any, Draft], str | None]:
    """A text required with ``status`` and refused with any other."""

    def check(value: Any, d: Draft) -> str | None:
        if d.status == status:
            return require_str(d.raw, key, d.err)
        if value is not None:
            raise d.err(key, f'is only allowed with status = "{status}"{why}')
        return value

    return check


def _metric_path(m: str, d: Draft) -> None:
    try:
        parsed = parse_path(m)
    except MetricPathError as exc:
        raise d.err("metric", exc.detail + f" (in {m!r})") from None
    negative = [
        step
        for step in parsed.steps
        if step[0] in ("index", "slice") and any(isinstance(i, int) and i < 0 for i in step[1:])
    ]
    if negative:
        raise d.err(
            "metric",
            f"{m!r} counts from the end ([-1], [2:-1]): write explicit layer indices, so "
            "that a measurement with another number of layers is an error, not another layer",
        )
    if d.model != "pair" and parsed.root not in (d.model, "root"):
        raise d.err("metric", f"a {d.model!r} claim must read a {d.model}: path, got {m!r}")


def _metrics(metric: Any, d: Draft) -> tuple[str, ...]:
    if metric is None:
        if d.status != "skip":
            raise d.err("metric", "is required")
        return ()
    metric_list = [metric] if isinstance(metric, str) else metric
    if (
        not isinstance(metric_list, list)
        or not metric_list
        or not all(isinstance(m, str) for m in metric_list)
    ):
        raise d.err("metric", "must be a path string or a list of path strings")
    for m in metric_list:
        _metric_path(m, d)
    if d.model == "pair" and len(metric_list) < 2:
        raise d.err("metric", "a pair claim needs a list of at least two paths")
    if d.model != "pair" and len(metric_list) != 1:
        raise d.err("metric", f"a {d.model!r} claim reads exactly one path")
    return tuple(metric_list)


def _combine(combine: Any, d: Draft) -> str | None:
    if combine is None:
        return None
    if d.model != "pair":
        raise d.err("combine", 'is only for model = "pair" claims')
    _one_of("combine", COMBINE)(combine, d)
    if len(d.metrics) != 2:
        raise d.err("combine", "combines exactly two paths")
    return combine


def _value(value: Any, d: Draft) -> Any:
    band = d.raw.get("band")
    if isinstance(band, Mapping) and band.get("kind") == "equals":
        if not _is_text(value):
            raise d.err("value", "an 'equals' band compares text: the value must be a non-empty string")
    elif value is not None and not _is_value(value):
        raise d.err("value", "must be a number or a non-empty list of numbers")
    if d.status == "golden" and not d.pending and value is None:
        raise d.err("value", "a golden needs a value, or pending = true until it is measured")
    if d.status in (*REPORT_STATUSES, "does-not-generalise") and value is None:
        raise d.err("value", f"is required for status {d.status!r} (the report's value)")
    return value


def _band(band: Any, d: Draft) -> Band | None:
    if "band" not in d.raw:
        if d.status != "skip":
            raise d.err("band", "is required")
        return None
    parsed = validate_band(band, d.err, len(d.metrics), d.value, d.combine, d.model)
    if parsed.kind == "exact" and d.value is None and not d.pending:
        raise d.err("value", "an 'exact' band needs a value")
    return parsed


def _measured_how(how: Any, d: Draft) -> str | None:
    if how is not None and (not isinstance(how, str) or not how.strip()):
        raise d.err("measured_how", "must be a non-empty string")
    if d.status == "golden" and not d.pending and how is None:
        raise d.err(
            "measured_how", "a measured golden must say how, where and with what settings it was measured"
        )
    return how


def _measured(recorded: Any, d: Draft) -> Any:
    if d.status == "does-not-generalise" and not d.pending:
        if recorded is None or not _is_value(recorded):
            raise d.err(
                "measured",
                "a does-not-generalise claim records the value this suite measured (or pending = true)",
            )
        if d.measured_how is None:
            raise d.err(
                "measured_how",
                "a does-not-generalise claim must say how, where and with what settings it was measured",
            )
    if recorded is not None and d.status != "does-not-generalise":
        raise d.err(
            "measured", "is only for status = \"does-not-generalise\" (a golden keeps its value in 'value')"
        )
    return recorded


def _golden_source(_value: Any, d: Draft) -> None:
    if d.status == "golden" and d.provenance.get("source") != "suite-measured":
        raise d.err(
            "provenance.source", 'a golden\'s value is measured by this suite: source = "suite-measured"'
        )


def _texts_sha256(sha: Any, d: Draft) -> str | None:
    if sha is not None and (not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha)):
        raise d.err(
            "texts_sha256", "must be the 64-hex-digit sha256 of the text set (measurements texts.sha256)"
        )
    if sha is not None and d.status not in _SUITE_MEASURED:
        raise d.err(
            "texts_sha256", "is only recorded for suite-measured values (golden / does-not-generalise)"
        )
    return sha


def _protocol(protocol: Any, d: Draft) -> dict[str, Any] | None:
    if protocol is None:
        return None
    if d.status not in _SUITE_MEASURED:
        raise d.err("protocol", "is only recorded for suite-measured values (golden / does-not-generalise)")
    problem = validate_recorded_identity(protocol, d.metrics)
    if problem is not None:
        raise d.err("protocol", problem)
    return dict(protocol)


def _plot(plot: Any, d: Draft) -> dict[str, Any] | None:
    if plot is None:
        return None
    if not isinstance(plot, Mapping) or set(plot) - _PLOT_KEYS or "series" not in plot:
        raise d.err("plot", 'must be a table { series = "bos_norm", layer = 23 }')
    if not isinstance(plot["series"], str) or ("layer" in plot and not isinstance(plot["layer"], int)):
        raise d.err("plot", "series must be a string and layer an integer")
    return dict(plot)


def _evidence(evidence: Any, d: Draft) -> Any:
    author_files = parse_evidence(evidence, d.err, d.model, d.status, d.metrics)
    if d.family in AUTHOR_FILES_ONLY_FAMILIES:
        if author_files is None or not author_files.has_test:
            raise d.err(
                "evidence",
                f"a {d.family!r} claim is judged on the author's files only: it needs a "
                '[claim.evidence."author-files"] table that is not suite_only',
            )
        if d.status not in REPORT_STATUSES:
            raise d.err(
                "status", f'a {d.family!r} claim states what the report\'s author did: status "claim"'
            )
    return author_files


#: The keys of a claim, in the order they are read (a row reads the rows above it).
CLAIM_FIELDS: tuple[ClaimField, ...] = (
    ClaimField("model", "model", _one_of("model", MODELS)),
    ClaimField("family", "family", _one_of("family", FAMILIES)),
    ClaimField("status", "status", _one_of("status", STATUSES)),
    ClaimField("sentence", "sentence", _required_text("sentence")),
    ClaimField("rationale", "rationale", _required_text("rationale")),
    ClaimField("provenance", "provenance", _provenance),
    ClaimField("pending", "pending", _pending, default=False),
    ClaimField("skip_reason", "skip_reason", _only_with_status("skip_reason", "skip")),
    ClaimField("metric", "metrics", _metrics),
    ClaimField("combine", "combine", _combine),
    ClaimField("value", "value", _value),
    ClaimField(
        "artefact",
        "artefact",
        _only_with_status("artefact", "artefact", " (the cause the report's value comes from)"),
    ),
    ClaimField("band", "band", _band),
    ClaimField("measured_how", "measured_how", _measured_how),
    ClaimField("measured", "recorded", _measured),
    ClaimField("provenance.source", None, _golden_source),
    ClaimField("texts_sha256", "texts_sha256", _texts_sha256),
    ClaimField("protocol", "protocol", _protocol),
    ClaimField("plot", "plot", _plot),
    ClaimField("evidence", "author_files", _evidence),
)
#: Every key a ``[[claim]]`` table may hold.
CLAIM_KEYS = frozenset({"id"} | {f.key for f in CLAIM_FIELDS if f.attr is not None})


def parse_claim_fields(
    raw: Any, index: int, pair: str, error: Callable[[str, str | None, str], Exception]
) -> dict[str, Any]:
    """The ``Claim`` attributes of the ``index``-th ``[[claim]]`` table ``raw`` of ``pair``'s file,
    ``id`` included; raises ``error(shown, key, message)`` (``shown`` names the claim) at the first
    key that is wrong, in the order of :data:`CLAIM_FIELDS`."""
    if not isinstance(raw, Mapping):
        raise error(f"#{index}", None, "each [[claim]] must be a table")
    d = Draft(raw, index, pair, error)
    cid = raw.get("id")
    if not isinstance(cid, str) or not _ID_RE.match(cid):
        raise d.err("id", "is required and must match [a-z0-9_]+")
    for key in raw:
        if key not in CLAIM_KEYS:
            raise d.err(key, f"is not a claim key (allowed: {', '.join(sorted(CLAIM_KEYS))})")
    for row in CLAIM_FIELDS:
        value = row.check(raw.get(row.key, row.default), d)
        if row.attr is not None:
            d.values[row.attr] = value
    return {"id": cid, **d.values}
