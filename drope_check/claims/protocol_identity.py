"""Protocol identity: the measurement choices that change a number, as one comparable record.

A golden measured with sink tau 0.3 says nothing about a run with tau 0.9; a perplexity measured
on 20 texts of 512 tokens says nothing about one on 5 texts of 8192. Every suite-measured value in
``expected/<pair>.toml`` records the identity it was measured under (``protocol = {...}``), every
measurements file yields one (:func:`measurement_identity`), and a value is only judged against a
measurement whose identity agrees on every field that changes it (:func:`identity_mismatch`).

The fields (all TOML-writable scalars):

``text_set``            ``"lines"`` (upstream's WikiText-2 lines) or ``"concatenated"``; which texts
                        exactly is the separate ``texts_sha256``.
``n_texts``             sequences measured.
``max_tokens``          tokens per sequence, BOS included (a cap for ``lines``).
``padding``             ``"none"``, ``"right-pad to N, pads excluded from stats"`` or
                        ``"right-pad to N, pads in stats"`` (upstream's RoPE confound).
``dtype``               the model dtype (per model; ``"rope:X drope:Y"`` when a pair claim's models differ).
``attention_source``    ``"model"`` (post-rotary q/k the model attends with) or ``"projections"``.
``stats_dtype``         dtype of the attention-to-BOS computation (``auto``, ``float32``, ``float64``).
``sink_tau``            a head is a sink when its score is >= tau (> tau with ``sink_strict``).
``sink_strict``
``sink_t0``             whether a sink score counts the query at t = 0: ``"included"`` (what the
                        suite's ``sink_rate`` / ``sink_score`` / ``sink_rate_average`` hold) or
                        ``"excluded"`` (its ``*_excl_self`` fields always exclude it).

The last five only change attention-to-BOS numbers (sink scores and rates), so a claim whose
metric paths read none of those records and compares only the first five. A measurements file
that does not state a field gives :data:`UNKNOWN` for it, which never equals a recorded value: a
source that cannot say how it measured is not judged against a golden (the claim is skipped,
naming both). Named protocol variants build their ``protocol`` object with these keys and are
compared the same way.

A source whose values were made under several protocols (the author's committed files, imported by
``drope-check import-upstream``) records one per value in ``models.<m>.field_provenance``; each
value's identity is then :func:`field_identity` (:data:`FIELD_FIELDS`: the protocol's name in
``drope_check/sources/upstream_sources.toml`` and its text set), compared by :func:`field_identity_mismatch`
with the same rule (:data:`UNKNOWN` never matches).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from drope_check.claims.metric_paths import MetricPathError, parse_path
from drope_check.engine import metric_table
from drope_check.engine.metric_table import ATTENTION_METHOD_FACTS

__all__ = [
    "ALL_FIELDS",
    "ATTENTION_FIELDS",
    "FIELD_FIELDS",
    "UNKNOWN",
    "field_identity",
    "field_identity_mismatch",
    "identity_for_claim",
    "identity_mismatch",
    "is_attention_metric",
    "measurement_identity",
    "relevant_fields",
    "validate_recorded_identity",
]

#: Fields that change every measured number.
COMMON_FIELDS: tuple[str, ...] = ("text_set", "n_texts", "max_tokens", "padding", "dtype")
#: Fields that change only attention-to-BOS numbers (sink scores and rates).
ATTENTION_FIELDS: tuple[str, ...] = ("attention_source", "stats_dtype", "sink_tau", "sink_strict", "sink_t0")
ALL_FIELDS: tuple[str, ...] = COMMON_FIELDS + ATTENTION_FIELDS
#: The identity of one value of a source with per-field provenance: its named protocol and text set.
FIELD_FIELDS: tuple[str, ...] = ("protocol", "text_set")
#: The value of a field a measurements file does not state; it never matches a recorded value.
UNKNOWN = "unknown"


def is_attention_metric(path: str) -> bool:
    """Whether a metric path reads an attention-to-BOS number (a sink score, rate or its average: an
    ``attention`` metric of :mod:`drope_check.engine.metric_table`) or a fact about the author's sink rule
    (:data:`~drope_check.engine.metric_table.ATTENTION_METHOD_FACTS`). A path that does not parse reads none."""
    try:
        steps = [step[1] for step in parse_path(path).steps[:3] if step[0] == "key"]
    except MetricPathError:
        return False
    if len(steps) >= 2 and steps[0] in ("layers", "heads", "scalars"):
        found = metric_table.metric(steps[0], steps[1])
        return found is not None and found.attention
    return len(steps) >= 3 and steps[:2] == ["provenance", "method"] and steps[2] in ATTENTION_METHOD_FACTS


def relevant_fields(metrics: Iterable[str]) -> tuple[str, ...]:
    """The identity fields that change the value read by ``metrics`` (a claim's metric paths)."""
    return ALL_FIELDS if any(is_attention_metric(m) for m in metrics) else COMMON_FIELDS


def _padding(protocol: Mapping[str, Any]) -> str:
    if "padding" in protocol and isinstance(protocol["padding"], str):  # a source that states it directly
        return protocol["padding"]
    if "pad_to" not in protocol:
        return UNKNOWN
    pad_to = protocol["pad_to"]
    if pad_to is None:
        return "none"
    in_stats = protocol.get("padding_in_stats")
    if in_stats is None:
        return f"right-pad to {pad_to}, {UNKNOWN} whether pads are in the stats"
    return f"right-pad to {pad_to}, pads {'in' if in_stats else 'excluded from'} stats"


def _model_dtype(measurements: Mapping[str, Any], roles: Iterable[str]) -> str:
    models = measurements.get("models") if isinstance(measurements.get("models"), Mapping) else {}
    found: dict[str, str] = {}
    for role in roles:
        model = models.get(role) if isinstance(models, Mapping) else None
        prov = model.get("provenance") if isinstance(model, Mapping) else None
        dtype = prov.get("dtype") if isinstance(prov, Mapping) else None
        found[role] = str(dtype) if dtype is not None else UNKNOWN
    values = set(found.values())
    if len(values) == 1:
        return values.pop()
    return " ".join(f"{role}:{dtype}" for role, dtype in found.items())


def measurement_identity(
    measurements: Mapping[str, Any], roles: Iterable[str] = ("rope", "drope")
) -> dict[str, Any]:
    """The identity of a measurements file for the models ``roles`` (every field of :data:`ALL_FIELDS`).

    Read from ``measurements["protocol"]`` (the engine's :class:`~drope_check.engine.protocol.Protocol`
    as a dict, or a source's own record with the same keys) and each model's
    ``provenance.dtype``. A field not stated is :data:`UNKNOWN`.
    """
    protocol = measurements.get("protocol")
    protocol = protocol if isinstance(protocol, Mapping) else {}

    def get(key: str) -> Any:
        value = protocol.get(key, UNKNOWN)
        return UNKNOWN if value is None else value

    return {
        "text_set": get("text_set"),
        "n_texts": get("n_texts"),
        "max_tokens": _max_tokens(protocol, get("max_tokens")),
        "padding": _padding(protocol),
        "dtype": _model_dtype(measurements, roles),
        "attention_source": get("attention_source"),
        "stats_dtype": get("stats_dtype"),
        "sink_tau": get("sink_tau"),
        "sink_strict": get("sink_strict"),
        "sink_t0": _sink_t0(protocol),
    }


def _max_tokens(protocol: Mapping[str, Any], max_tokens: Any) -> Any:
    """``max_tokens``, or the short-prompt cut when ``Protocol.prompt_tokens`` shortened every sequence
    (the confound audit's ``short-prompts``): a different length, never equal to a recorded cap."""
    prompt_tokens = protocol.get("prompt_tokens")
    if prompt_tokens is None:
        return max_tokens
    lo, hi = prompt_tokens
    return f"short prompts: BOS + {lo}-{hi} tokens"


def _sink_t0(protocol: Mapping[str, Any]) -> str:
    """Whether the sink fields count the query at t = 0. The suite's ``sink_rate`` / ``sink_score`` /
    ``sink_rate_average`` include it unless ``Protocol.sink_self_term`` is false (the ``*_excl_self``
    fields never do); a source may state ``sink_t0`` itself."""
    if protocol.get("sink_self_term") is False:
        return "excluded"
    if "sink_t0" in protocol:
        return protocol["sink_t0"]
    return "included" if "sink_tau" in protocol else UNKNOWN


def identity_for_claim(measurements: Mapping[str, Any], model: str, metrics: Iterable[str]) -> dict[str, Any]:
    """The fields of :func:`measurement_identity` that change the value a claim reads (what regen records)."""
    metrics = list(metrics)
    roles = ("rope", "drope") if model == "pair" else (model,)
    full = measurement_identity(measurements, roles)
    return {k: full[k] for k in relevant_fields(metrics)}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def identity_mismatch(
    recorded: Mapping[str, Any], measurements: Mapping[str, Any], model: str, metrics: Iterable[str]
) -> list[tuple[str, Any, Any]]:
    """``(field, recorded, measured)`` for every relevant field on which the two identities differ.

    A field the record does not hold is not compared (:func:`validate_recorded_identity` makes
    sure a record holds every relevant field). :data:`UNKNOWN` on either side is a mismatch: a
    value measured under an unknown protocol, or a run that cannot say how it measured, is never
    compared.
    """
    return _differences(recorded, identity_for_claim(measurements, model, metrics))


def _differences(recorded: Mapping[str, Any], got: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, recorded, measured)`` for each field of ``got`` that ``recorded`` holds and that
    differs, :data:`UNKNOWN` on either side counting as a difference."""
    out = []
    for key, measured in got.items():
        if key not in recorded:
            continue
        if recorded[key] == UNKNOWN or measured == UNKNOWN or not _same(recorded[key], measured):
            out.append((key, recorded[key], measured))
    return out


def field_identity(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """The identity (:data:`FIELD_FIELDS`) of one value from its ``field_provenance`` entry.

    ``{"protocol": <name>, "text_set": <text>}`` read from ``provenance["protocol"]``; a value
    without provenance, or a provenance that does not state a field, gives :data:`UNKNOWN` there.
    """
    protocol = provenance.get("protocol") if isinstance(provenance, Mapping) else None
    protocol = protocol if isinstance(protocol, Mapping) else {}
    return {
        "protocol": protocol.get("name") or UNKNOWN,
        "text_set": protocol.get("text_set") or UNKNOWN,
    }


def field_identity_mismatch(
    expected: Mapping[str, Any], provenance: Mapping[str, Any] | None
) -> list[tuple[str, Any, Any]]:
    """``(field, expected, recorded)`` for every field of :data:`FIELD_FIELDS` on which the identity
    the claim's value came from (``expected``) and the value's own (:func:`field_identity`) differ."""
    return _differences(expected, field_identity(provenance))


def validate_recorded_identity(raw: Any, metrics: Iterable[str]) -> str | None:
    """Why ``raw`` (a claim's ``protocol`` table) is not a valid identity for ``metrics``, or None."""
    if not isinstance(raw, Mapping):
        return 'must be a table of protocol fields, e.g. { text_set = "lines", n_texts = 20, ... }'
    unknown = sorted(set(raw) - set(ALL_FIELDS))
    if unknown:
        return f"unknown field(s) {', '.join(unknown)} (allowed: {', '.join(ALL_FIELDS)})"
    missing = [k for k in relevant_fields(metrics) if k not in raw]
    if missing:
        return f"misses {', '.join(missing)}: record every field that changes this value"
    for key, value in raw.items():
        if isinstance(value, Mapping) or isinstance(value, list):
            return f"field {key} must be a string, number or boolean"
    return None
