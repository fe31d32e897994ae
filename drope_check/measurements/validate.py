"""Reading and validating a measurements JSON (``docs/measurements-schema.md``): one validator for all.

``drope-check judge``, ``pytest --measurements`` and the plugin's own measurements all pass
through :func:`validate_measurements` (files first through :func:`load_measurements`), so a file
that would give a wrong verdict is refused before any claim is judged:

* file level: the file exists and is JSON (no ``NaN`` / ``Infinity``: not JSON, and the suite never
  writes them), a top-level object with ``schema_version`` 1, a string ``pair`` and a ``models``
  object holding ``rope`` and ``drope`` objects with a known ``variant``;
* shapes: every ``layers.*`` array is a flat list of ``n_layers`` numbers, every ``heads.*`` array
  ``n_layers`` lists of ``n_heads`` numbers; no nested arrays where a number belongs;
* consistency: scalars that summarise an array agree with it to :data:`CONSISTENCY_RTOL`
  (``peak_bos_norm`` = max ``bos_norm`` at ``peak_bos_norm_layer``, ``sink_rate_average`` = mean
  ``sink_rate``, ``min_entropy`` = min ``entropy``, the spike layers = their rule on ``bos_ratio``
  / ``bos_norm``, ...).

Every field the schema marks optional may be absent (a source that did not measure it: claims
reading it are reported as not measured, never as a malformed file). Each problem is one
:class:`MeasurementsFileError` naming the file, the JSON path and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drope_check.numbers import is_number

__all__ = [
    "CONSISTENCY_RTOL",
    "OPTIONAL_FIELDS",
    "SCHEMA_VERSION",
    "VARIANTS",
    "MeasurementsFileError",
    "load_measurements",
    "rule_at",
    "validate_measurements",
]

SCHEMA_VERSION = 1
#: The variant each side may be: the RoPE side is ``rope``; the DroPE side ``drope`` (recalibrated)
#: or ``nope-zeroshot`` (RoPE weights with an identity rotation, not recalibrated).
VARIANTS: dict[str, tuple[str, ...]] = {"rope": ("rope",), "drope": ("drope", "nope-zeroshot")}
#: Relative tolerance (plus :data:`CONSISTENCY_ATOL` absolute) for a scalar against the array it
#: summarises. The engine computes both from the same float64 values, so they agree to rounding
#: (~1e-15); 1e-6 also admits a file whose numbers were rounded to 7 significant digits.
CONSISTENCY_RTOL = 1e-6
CONSISTENCY_ATOL = 1e-9


#: Fields of a model object the schema marks optional (docs/measurements-schema.md): a source that
#: did not measure one leaves it out, and a claim reading it is skipped as "not measured by this
#: source" (an error only for a name that is not in the schema: a typo in a claim file).
OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "model": ("role", "provenance", "n_layers", "n_heads", "layers", "heads", "scalars", "perplexity", "interventions"),
    "layers": ("bos_norm", "bos_ratio", "queipo_c", "queipo_alpha", "entropy", "entropy_normalized", "anisotropy",
               "sink_rate", "sink_rate_excl_self", "bos_mlp_write_norm", "mean_token_norm"),
    "provenance": ("pad_to", "method"),
    "heads": ("sink_score", "sink_score_excl_self", "sink_score_per_sequence", "sink_score_excl_self_per_sequence"),
    "scalars": ("embedding_bos_norm", "sink_rate_average", "sink_rate_average_excl_self",
                "bos_spike_layer_argmax_ratio", "bos_spike_layer_max_write", "max_bos_ratio", "peak_bos_norm",
                "peak_bos_norm_layer", "min_entropy", "min_entropy_layer", "min_entropy_normalized",
                "min_entropy_normalized_layer", "ppl_baseline", "eager_fp16_nonfinite_layers",
                "eager_fp16_first_nonfinite_layer", "eager_fp16_nonfinite_attention_heads"),
    "perplexity": ("lines", "prompts", "sliding"),
    "interventions": ("bos_mlp_ablation:argmax-ratio", "bos_mlp_ablation:max-write", "qk_disruption:report",
                      "qk_disruption:jin"),
    "intervention": ("ppl", "baseline_ppl", "ratio"),
}


#: ``heads`` fields holding one ``[layer][head]`` grid per sequence (drope_check.engine.sink_stats).
PER_SEQUENCE_SUFFIX = "_per_sequence"


def is_optional_field(name: str) -> bool:
    """Whether ``name`` is a field the schema allows a source to leave out."""
    return any(name in names for names in OPTIONAL_FIELDS.values())


class MeasurementsFileError(ValueError):
    """A measurements file is unreadable or malformed: one sentence naming file, JSON path and expectation."""

    def __init__(self, origin: str, json_path: str | None, message: str) -> None:
        self.origin = origin
        self.json_path = json_path
        where = f"{origin}: {json_path}" if json_path else origin
        super().__init__(f"{where}: {message}")


class _NonFinite:
    """Placeholder for a JSON NaN / Infinity / -Infinity constant, found and refused after parsing."""

    def __init__(self, text: str) -> None:
        self.text = text


def _json_path(parts: list[Any]) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if str(p).isidentifier() else f"[{json.dumps(p)}]")
    return out


def parse_measurements_json(text: str, origin: str) -> Any:
    """``json.loads`` refusing NaN / Infinity / -Infinity and integers too large for a float, with the
    JSON path of the first one."""
    try:
        data = json.loads(text, parse_constant=_NonFinite)
    except json.JSONDecodeError as exc:
        raise MeasurementsFileError(
            origin, None, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}; truncated?)"
        ) from None
    except ValueError as exc:  # Python refuses to read an integer of more than 4300 digits
        raise MeasurementsFileError(origin, None, f"holds a number no float can hold ({exc}): expected finite numbers") from None
    found = _find_unrepresentable(data, [])
    if found is not None:
        raise MeasurementsFileError(origin, *found)
    return data


def load_measurements(path: str | Path) -> dict[str, Any]:
    """Read, parse and validate a measurements file; raise :class:`MeasurementsFileError` on any problem."""
    file = Path(path)
    origin = str(file)
    if not file.exists():
        raise MeasurementsFileError(origin, None, "no such file: expected a measurements JSON from `drope-check measure`")
    if file.is_dir():
        raise MeasurementsFileError(origin, None, "is a folder: expected a measurements JSON file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MeasurementsFileError(origin, None, f"cannot be read ({exc}): expected a UTF-8 JSON file") from None
    data = parse_measurements_json(text, origin)
    validate_measurements(data, origin)
    return data


# ----------------------------------------------------------------------------------------------
# field rules: what each field may hold


#: Slack above 1 for a fraction computed in floating point (a rate, ``queipo_alpha``, ``anisotropy``,
#: a normalised entropy) and below 0 for an entropy: rounding can put an exact 1 (or 0) a few ulps
#: past it; anything more is refused.
FRACTION_SLACK = 1e-9


def _shown(value: Any) -> str:
    """A value as an error quotes it: its repr, shortened; containers by their JSON type."""
    if isinstance(value, Mapping):
        return "a JSON object" if value else "an empty object"
    if isinstance(value, list):
        return "a JSON list" if value else "an empty list"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Number:
    """A JSON number (never a boolean) in ``[lo, hi]`` (``lo_open``: ``lo`` excluded), an integer
    when ``integer``, ``null`` when ``nullable``. ``layer``: also below the model's ``n_layers``."""

    what: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    integer: bool = False
    nullable: bool = False
    layer: bool = False

    def problem(self, value: Any, ctx: Mapping[str, Any]) -> str | None:
        if value is None:
            return None if self.nullable else f"is null: expected {self.what}"
        if not is_number(value) or (self.integer and not isinstance(value, int)):
            return f"is {_shown(value)}: expected {self.what}"
        if (self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo))) or (
            self.hi is not None and value > self.hi
        ):
            return f"is {_shown(value)}: expected {self.what}"
        n_layers = ctx.get("n_layers")
        if self.layer and n_layers is not None and value >= n_layers:
            return f"is {_shown(value)}: expected a layer index in 0..{n_layers - 1} (n_layers = {n_layers})"
        return None


@dataclass(frozen=True)
class Text:
    """A JSON string, non-empty unless ``empty`` (``null`` when ``nullable``)."""

    what: str = "a non-empty string"
    nullable: bool = False
    empty: bool = False

    def problem(self, value: Any, ctx: Mapping[str, Any]) -> str | None:
        if value is None and self.nullable:
            return None
        if not isinstance(value, str) or not (value or self.empty):
            return f"is {_shown(value)}: expected {self.what}" + (" or null" if self.nullable else "")
        return None


@dataclass(frozen=True)
class Flag:
    """A JSON boolean (never 0 / 1)."""

    what: str = "true or false"

    def problem(self, value: Any, ctx: Mapping[str, Any]) -> str | None:
        return None if isinstance(value, bool) else f"is {_shown(value)}: expected {self.what}"


@dataclass(frozen=True)
class Null:
    """JSON ``null`` only (one arm of an :class:`Either`)."""

    what: str = "null"

    def problem(self, value: Any, ctx: Mapping[str, Any]) -> str | None:
        return None if value is None else f"is {_shown(value)}: expected {self.what}"


@dataclass(frozen=True)
class Either:
    """Any one of ``rules`` (e.g. a string or an object of strings)."""

    rules: tuple[Any, ...]
    what: str

    def problem(self, value: Any, ctx: Mapping[str, Any]) -> str | None:
        if any(_first_problem(value, rule, [], ctx) is None for rule in self.rules):
            return None
        return f"is {_shown(value)}: expected {self.what}"


@dataclass(frozen=True)
class Obj:
    """A JSON object: ``fields`` checked where present (``required`` ones must be), any other key
    checked against ``other`` (None: anything). ``nonempty``: an empty object is refused (a
    container written only when something was measured: leave it out instead)."""

    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    required: tuple[str, ...] = ()
    other: Any = None
    nonempty: bool = False
    what: str = "an object"


@dataclass(frozen=True)
class ListOf:
    """A JSON list of ``item`` (``nonempty``: at least one; ``length``: exactly that many)."""

    item: Any
    nonempty: bool = True
    length: int | None = None
    what: str = "a list"


_ANY = None  # a field whose content no reader interprets

COUNT = Number("a positive integer", lo=1, integer=True)
COUNT0 = Number("an integer >= 0", lo=0, integer=True)
LAYER = Number("a layer index (an integer >= 0)", lo=0, integer=True, layer=True)
NONNEG = Number("a number >= 0", lo=0)
NORM = Number("a norm (a number >= 0)", lo=0)
RATE = Number("a rate in [0, 1]", lo=0, hi=1 + FRACTION_SLACK)
FRACTION = Number("a fraction in [0, 1]", lo=0, hi=1 + FRACTION_SLACK)
PPL = Number("a perplexity (a number >= 1)", lo=1)
#: Shannon entropy in nats: >= 0, with the same rounding slack (a rank-1 residual's p_1 can round to 1 + 2e-16).
ENTROPY = Number("an entropy in nats (a number >= 0)", lo=-FRACTION_SLACK)
RATIO = Number("a perplexity ratio (a number > 0)", lo=0, lo_open=True)
TEXT = Text()
TEXT_OR_NULL = Text(nullable=True)
FLAG = Flag()
STRINGS = Obj(other=TEXT, what="an object of strings")

#: ``layers.<series>``: one value per layer, each in its range (a series not listed: any number).
LAYER_SERIES: dict[str, Number] = {
    "bos_norm": NORM, "bos_ratio": NONNEG, "queipo_c": NONNEG, "queipo_alpha": FRACTION, "entropy": ENTROPY,
    "entropy_normalized": FRACTION, "anisotropy": FRACTION, "sink_rate": RATE, "sink_rate_excl_self": RATE,
    "attention_nan_heads": COUNT0, "bos_mlp_write_norm": NORM, "mean_token_norm": NORM,
}
#: ``heads.*``: sink scores in [0, 1]; ``null`` marks a head whose fp16-eager attention overflowed.
SINK_SCORE = Number("a sink score in [0, 1] (or null: an overflowed fp16-eager head)", lo=0, hi=1 + FRACTION_SLACK,
                    nullable=True)
#: ``scalars.<name>`` (``null``: not measured; a scalar not listed: any number).
SCALARS: dict[str, Number] = {
    "embedding_bos_norm": NORM, "sink_rate_average": RATE, "sink_rate_average_excl_self": RATE,
    "attention_nan_heads": COUNT0, "bos_spike_layer_argmax_ratio": LAYER, "bos_spike_layer_max_write": LAYER,
    "max_bos_ratio": NONNEG, "peak_bos_norm": NORM, "peak_bos_norm_layer": LAYER, "min_entropy": ENTROPY,
    "min_entropy_layer": LAYER, "min_entropy_normalized": FRACTION, "min_entropy_normalized_layer": LAYER,
    "ppl_baseline": PPL,
    # the eager-fp16 probe (drope_check.engine.eager_probe) or the author's files' count of non-finite layers
    "eager_fp16_nonfinite_layers": COUNT0, "eager_fp16_first_nonfinite_layer": LAYER,
    "eager_fp16_nonfinite_attention_heads": COUNT0,
}
ANY_NUMBER = Number("a number")

#: ``protocol`` (the engine's :class:`~drope_check.engine.protocol.Protocol`, or a source's own record):
#: the fields the protocol identity of a verdict reads (:mod:`drope_check.claims.protocol_identity`).
PROTOCOL = Obj({
    "name": TEXT, "text_set": TEXT, "n_texts": COUNT, "min_chars": COUNT0, "max_tokens": COUNT,
    "batch_size": COUNT, "pad_to": Number("a length (a positive integer) or null", lo=1, integer=True, nullable=True),
    "padding_in_stats": FLAG, "attention_source": TEXT, "stats_dtype": TEXT,
    "sink_tau": Number("a threshold in (0, 1)", lo=0, lo_open=True, hi=1), "sink_strict": FLAG,
    "sink_self_term": FLAG, "sink_t0": TEXT, "padding": TEXT, "spike_rule": TEXT,
    "prompt_tokens": Either((Null(), ListOf(COUNT, length=2)),
                            "null or [lo, hi] (two positive integers)"),
}, nonempty=True, what="the protocol object")
TEXTS = Obj({
    "name": TEXT, "source": TEXT, "selection": TEXT, "n_texts": Number("a positive integer or null", lo=1, integer=True,
                                                                      nullable=True),
    "sha256": TEXT_OR_NULL, "file_sha256": TEXT_OR_NULL, "n_tokens": Obj(other=COUNT, what="an object of token counts"),
}, nonempty=True, what="the texts object")
#: ``environment``: what the report prints is a string (``cpu_count`` a count); the rest any JSON.
ENVIRONMENT = Obj({key: TEXT for key in ("python", "torch", "transformers", "platform", "device", "cpu", "gpu",
                                         "gpu_capability")} | {"cpu_count": Number("an integer >= 1 or null", lo=1,
                                                                                    integer=True, nullable=True)},
                  what="the environment object")
#: A perplexity record (``perplexity.<protocol>``, and each intervention's ``perplexity``).
PERPLEXITY = Obj({
    "protocol": TEXT, "formula": Text(what="a string", empty=True), "ppl": PPL, "nll_sum": NONNEG, "n_predicted": COUNT,
    "mean_nll": NONNEG, "n_sequences": COUNT,
    "per_sequence": ListOf(ListOf(NONNEG, length=2, what="[NLL sum, predicted tokens]"), what="a non-empty list"),
}, required=("ppl",), what="a perplexity object")
#: ``interventions.<name>``: the claims read ``ppl`` and ``ratio`` (``ppl / baseline_ppl``).
INTERVENTION = Obj({
    "intervention": TEXT, "kind": TEXT, "rule": TEXT_OR_NULL, "spike_rule": TEXT_OR_NULL,
    "layer": Number("a layer index or null", lo=0, integer=True, nullable=True, layer=True), "protocol": TEXT,
    "ppl": PPL, "baseline_ppl": PPL, "ratio": RATIO, "n_sequences": COUNT, "n_predicted": COUNT,
    "perplexity": PERPLEXITY, "record": Obj(what="an object"),
}, nonempty=True, what="an intervention object")
#: ``provenance``: what the claims, the report and the model-id check read.
PROVENANCE = Obj({
    "model_id": TEXT, "revision": TEXT_OR_NULL, "variant": TEXT,
    "weights_sha256": Either((TEXT_OR_NULL, STRINGS), "a sha256 string, an object of them, or null"),
    "dtype": TEXT, "attention_path": TEXT, "attention_type": TEXT, "device": TEXT, "quantization": TEXT_OR_NULL,
    "n_sequences": COUNT, "n_tokens": COUNT, "pad_to": COUNT0, "bos_token": TEXT, "bos_token_id": COUNT0,
    "pad_token_id": COUNT0, "seconds": NONNEG, "licence": TEXT, "weights_loaded_from": TEXT, "loader": TEXT,
    "softmax_scale": Number("a positive number or null", lo=0, lo_open=True, nullable=True),
    "qk_norm_weights": STRINGS, "attention_stats_precision": TEXT, "source": TEXT,
    "method": STRINGS,  # author-files imports: facts about the author's code (the Methods claims read them)
    "incomplete_weights": Obj(other=ListOf(TEXT, what="a non-empty list of tensor names"), nonempty=True,
                              what="an object of tensor-name lists"),
    "positions_beyond_training": Obj({"longest_sequence": COUNT, "max_position_embeddings": COUNT},
                                     required=("longest_sequence", "max_position_embeddings")),
}, nonempty=True, what="the provenance object")
#: ``field_provenance.<field>`` of an ``import-upstream`` file: the protocol the author-files
#: verdicts compare (:func:`drope_check.claims.protocol_identity.field_identity`) and the commit they name.
FIELD_PROVENANCE = Obj(other=Obj({
    "repository": TEXT, "commit": TEXT_OR_NULL, "file": TEXT, "json_path": TEXT_OR_NULL,
    "protocol": Obj({"name": TEXT, "label": TEXT, "text_set": TEXT}, required=("name",), what="a protocol object"),
    "derived": FLAG, "rule": TEXT, "inputs": ListOf(TEXT), "note": TEXT,
}, required=("protocol",), what="a field-provenance object"), nonempty=True, what="an object of field provenances")
#: The top level, ``models`` apart (checked per model: its rules need the model's ``n_layers``).
TOP_LEVEL = Obj({
    "tool": Obj({"name": TEXT, "version": TEXT}, what="the tool object"), "created": TEXT, "pair_description": TEXT,
    "protocol": PROTOCOL, "texts": TEXTS, "environment": ENVIRONMENT, "options": Obj(what="an object"),
    "upstream": Obj({"repository": TEXT, "era": TEXT, "source": TEXT, "files_sha256": STRINGS}, nonempty=True,
                    what="the upstream object"),
})
#: A model object's fields other than ``layers`` / ``heads`` (shapes: checked against n_layers / n_heads).
MODEL = Obj({
    "role": TEXT, "provenance": PROVENANCE, "protocol": PROTOCOL, "field_provenance": FIELD_PROVENANCE,
    "scalars": Obj(SCALARS, other=Number("a number (or null: not measured)", nullable=True), nonempty=True,
                   what="an object of numbers"),
    "perplexity": Obj(other=PERPLEXITY, nonempty=True, what="an object of perplexity objects"),
    "interventions": Obj(other=INTERVENTION, nonempty=True, what="an object of interventions"),
})


def _first_problem(value: Any, rule: Any, parts: list[Any], ctx: Mapping[str, Any]) -> tuple[list[Any], str] | None:
    """The JSON path (as parts) and the problem of the first place where ``value`` breaks ``rule``."""
    if rule is None:
        return None
    if isinstance(rule, Obj):
        if not isinstance(value, Mapping):
            return parts, f"is {_shown(value)}: expected {rule.what}"
        if rule.nonempty and not value:
            return parts, f"is an empty object: expected {rule.what}; leave the key out when nothing was measured"
        for key in rule.required:
            if key not in value:
                return parts + [key], f"is missing: {rule.what} needs {', '.join(rule.required)}"
        for key, item in value.items():
            found = _first_problem(item, rule.fields.get(key, rule.other), parts + [key], ctx)
            if found:
                return found
        return None
    if isinstance(rule, ListOf):
        if not isinstance(value, list):
            return parts, f"is {_shown(value)}: expected {rule.what}"
        if rule.nonempty and not value:
            return parts, f"is an empty list: expected {rule.what}"
        if rule.length is not None and len(value) != rule.length:
            return parts, f"has {len(value)} items: expected {rule.length} ({rule.what})"
        for i, item in enumerate(value):
            found = _first_problem(item, rule.item, parts + [i], ctx)
            if found:
                return found
        return None
    message = rule.problem(value, ctx)
    return (parts, message) if message else None


def rule_at(parts: Sequence[Any], data: Mapping[str, Any] | None = None) -> Any:
    """The rule (:class:`Number`, :class:`Text`, :class:`Flag`, ...) a field at the JSON path ``parts``
    must follow, or None where the schema leaves it open. For tests that generate out-of-range values."""
    parts = list(parts)
    if len(parts) >= 2 and parts[0] == "models":
        if len(parts) >= 4 and parts[2] == "layers":
            return LAYER_SERIES.get(parts[3], ANY_NUMBER) if len(parts) == 5 else None
        if len(parts) >= 4 and parts[2] == "heads":
            return SINK_SCORE if (len(parts) == 6 and not str(parts[3]).endswith(PER_SEQUENCE_SUFFIX)) or len(parts) == 7 else None
        if len(parts) == 3 and parts[2] in ("n_layers", "n_heads"):
            return COUNT
        rule: Any = MODEL
        rest = parts[2:]
    else:
        rule, rest = TOP_LEVEL, parts
    for part in rest:
        if isinstance(rule, Obj) and isinstance(part, str):
            rule = rule.fields.get(part, rule.other)
        elif isinstance(rule, ListOf) and isinstance(part, int):
            rule = rule.item
        else:
            return None
    return rule


# ----------------------------------------------------------------------------------------------
# validation


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= CONSISTENCY_ATOL + CONSISTENCY_RTOL * max(abs(a), abs(b))


def _fits_a_float(value: int) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _find_unrepresentable(node: Any, parts: list[Any]) -> tuple[str, str] | None:
    """The JSON path and the problem of the first value that is no finite float: a JSON ``NaN`` /
    ``Infinity`` constant (or a float one in a dict), or an integer too large for a float."""
    if isinstance(node, _NonFinite):
        return _json_path(parts), f"is {node.text}, which is not JSON and never a measurement: expected a finite number"
    if isinstance(node, float) and not math.isfinite(node):
        return _json_path(parts), f"is {node!r}: expected a finite number"
    if isinstance(node, int) and not isinstance(node, bool) and not _fits_a_float(node):
        return _json_path(parts), (f"is an integer of {len(str(abs(node)))} digits, too large for a float "
                                   "(and for any measurement): expected a finite number")
    if isinstance(node, dict):
        for key, value in node.items():
            found = _find_unrepresentable(value, parts + [key])
            if found:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found = _find_unrepresentable(value, parts + [i])
            if found:
                return found
    return None


def validate_measurements(data: Any, origin: str) -> None:
    """Refuse a measurements dict that is malformed or inconsistent (see the module docstring)."""

    def err(path: str | None, message: str) -> MeasurementsFileError:
        return MeasurementsFileError(origin, path, message)

    def check(value: Any, rule: Any, parts: list[Any], ctx: Mapping[str, Any]) -> None:
        found = _first_problem(value, rule, parts, ctx)
        if found:
            raise err(_json_path(found[0]), found[1])

    found = _find_unrepresentable(data, [])
    if found:
        raise err(*found)
    if not isinstance(data, Mapping):
        raise err("$", f"is a JSON {type(data).__name__}: expected an object with schema_version, pair and models")
    if "schema_version" not in data:
        raise err("$.schema_version", f"is missing: expected {SCHEMA_VERSION}")
    if data["schema_version"] != SCHEMA_VERSION or isinstance(data["schema_version"], bool):
        raise err("$.schema_version", f"is {data['schema_version']!r}: this suite reads schema_version {SCHEMA_VERSION}")
    if not isinstance(data.get("pair"), str) or not data["pair"]:
        raise err("$.pair", f"is {data.get('pair')!r}: expected the pair's registry name or \"custom\"")
    check({k: v for k, v in data.items() if k != "models"}, TOP_LEVEL, [], {})
    _check_protocol(data.get("protocol"), "$.protocol", err)
    models = data.get("models")
    if not isinstance(models, Mapping):
        shown = "missing" if models is None else f"a JSON {type(models).__name__}"
        raise err("$.models", f"is {shown}: expected an object {{\"rope\": {{...}}, \"drope\": {{...}}}}")
    for role in VARIANTS:
        if role not in models:
            raise err(f"$.models.{role}", "is missing: expected the measurements of both the rope and the drope model")
    for role, model in models.items():
        if role not in VARIANTS:
            raise err(f"$.models.{role}", f"is not a model role: expected only {', '.join(VARIANTS)}")
        _validate_model(model, role, err, check)
    imports = [role for role, model in models.items() if "field_provenance" in model]
    if imports and not isinstance(data.get("upstream"), Mapping):
        raise err("$.upstream", f"is missing: models.{imports[0]}.field_provenance marks a file of `drope-check "
                  "import-upstream`, which names the author's repository, era and files in an upstream object")


def _validate_model(model: Any, role: str, err: Callable[[str | None, str], MeasurementsFileError],
                    check: Callable[[Any, Any, list[Any], Mapping[str, Any]], None]) -> None:
    """One model object: its variant, the shapes of its per-layer and per-head arrays and their
    ranges, every other field against :data:`MODEL`, then the consistency of scalars with arrays."""
    at = f"$.models.{role}"
    if not isinstance(model, Mapping):
        raise err(at, f"is a JSON {type(model).__name__}: expected an object")
    variant = model.get("variant")
    if variant not in VARIANTS[role]:
        raise err(f"{at}.variant", f"is {variant!r}: expected {' or '.join(repr(v) for v in VARIANTS[role])}")
    n_layers = _optional_count(model, "n_layers", at, err)
    n_heads = _optional_count(model, "n_heads", at, err)

    layers = model.get("layers")
    if "layers" in model and not isinstance(layers, Mapping):
        raise err(f"{at}.layers", f"is {_shown(layers)}: expected an object of per-layer arrays")
    if layers is not None and not layers:
        raise err(f"{at}.layers", "is an empty object: expected per-layer arrays (leave the key out when none was measured)")
    layers = layers or {}
    lengths: dict[str, int] = {}
    for key, series in layers.items():
        where = f"{at}.layers.{key}"
        _flat_numbers(series, where, err, rule=LAYER_SERIES.get(key, ANY_NUMBER))
        lengths[key] = len(series)
        if n_layers is not None and len(series) != n_layers:
            raise err(where, f"has {len(series)} values: expected n_layers = {n_layers} (one per layer)")
    if n_layers is None and len(set(lengths.values())) > 1:
        raise err(f"{at}.layers", f"arrays of different lengths {lengths}: expected one value per layer each")

    heads = model.get("heads")
    if "heads" in model and not isinstance(heads, Mapping):
        raise err(f"{at}.heads", f"is {_shown(heads)}: expected an object of per-layer, per-head arrays")
    if heads is not None and not heads:
        raise err(f"{at}.heads", "is an empty object: expected per-head arrays (leave the key out when none was measured)")
    for key, value in (heads or {}).items():
        where = f"{at}.heads.{key}"
        if key.endswith(PER_SEQUENCE_SUFFIX):  # [sequence][layer][head] (drope_check.engine.sink_stats)
            if not isinstance(value, list) or not value:
                raise err(where, "expected a non-empty list (sequences) of [layer][head] grids")
            for n, grid in enumerate(value):
                _head_grid(grid, f"{where}[{n}]", n_layers, n_heads, err)
        else:
            _head_grid(value, where, n_layers, n_heads, err)

    ctx = {"n_layers": n_layers if n_layers is not None else (next(iter(lengths.values())) if lengths else None)}
    check({k: v for k, v in model.items() if k not in ("layers", "heads")}, MODEL, ["models", role], ctx)
    _check_protocol(model.get("protocol"), f"{at}.protocol", err)
    _check_consistency(layers, model.get("scalars") or {}, at, err)


def _check_protocol(protocol: Any, at: str, err: Callable[..., MeasurementsFileError]) -> None:
    """What :class:`~drope_check.engine.protocol.Protocol` itself requires of a protocol's lengths: padding to
    at least ``max_tokens``, a short-prompt cut ``1 <= lo <= hi < max_tokens``."""
    if not isinstance(protocol, Mapping) or not isinstance(protocol.get("max_tokens"), int):
        return
    max_tokens = protocol["max_tokens"]
    if isinstance(protocol.get("pad_to"), int) and protocol["pad_to"] < max_tokens:
        raise err(f"{at}.pad_to", f"is {protocol['pad_to']}: expected a length >= max_tokens ({max_tokens}), or null")
    cut = protocol.get("prompt_tokens")
    if isinstance(cut, list) and not cut[0] <= cut[1] < max_tokens:
        raise err(f"{at}.prompt_tokens", f"is {cut}: expected [lo, hi] with lo <= hi < max_tokens ({max_tokens})")


def _optional_count(model: Mapping[str, Any], key: str, at: str, err: Callable[..., MeasurementsFileError]) -> int | None:
    if model.get(key) is None:
        return None
    value = model[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise err(f"{at}.{key}", f"is {value!r}: expected a positive integer")
    return value


def _flat_numbers(series: Any, where: str, err: Callable[..., MeasurementsFileError], allow_null: bool = False,
                  rule: Number = ANY_NUMBER) -> None:
    if not isinstance(series, list) or not series:
        raise err(where, "expected a non-empty list of numbers")
    for i, value in enumerate(series):
        if isinstance(value, list):
            raise err(f"{where}[{i}]", "is a nested list: expected a number (one per layer)")
        if not (is_number(value) or (allow_null and value is None)):
            raise err(f"{where}[{i}]", f"is {value!r}: expected a number" + (" or null" if allow_null else ""))
        message = rule.problem(value, {}) if value is not None else None
        if message:
            raise err(f"{where}[{i}]", message)


def _head_grid(grid: Any, where: str, n_layers: int | None, n_heads: int | None,
               err: Callable[..., MeasurementsFileError]) -> None:
    """A ``[layer][head]`` grid of sink scores; ``null`` marks a head whose fp16-eager attention
    overflowed (``protocol.stats_dtype = "fp16-eager"``, docs/measurements-schema.md)."""
    if not isinstance(grid, list):
        raise err(where, "expected a list (layers) of lists (heads) of numbers")
    if not grid:
        raise err(where, "is an empty list: expected one row (of head scores) per layer")
    if n_layers is not None and len(grid) != n_layers:
        raise err(where, f"has {len(grid)} rows: expected n_layers = {n_layers}")
    for i, row in enumerate(grid):
        _flat_numbers(row, f"{where}[{i}]", err, allow_null=True, rule=SINK_SCORE)
        if n_heads is not None and len(row) != n_heads:
            raise err(f"{where}[{i}]", f"has {len(row)} values: expected n_heads = {n_heads}")


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _check_consistency(layers: Mapping[str, Any], scalars: Mapping[str, Any], at: str,
                       err: Callable[..., MeasurementsFileError]) -> None:
    """Scalars that summarise a per-layer array must agree with it (see :data:`CONSISTENCY_RTOL`)."""
    tol = f"(tolerance {CONSISTENCY_RTOL:g} relative)"

    def have(*keys: str) -> bool:
        return all(scalars.get(k) is not None for k in keys)

    def value_rule(scalar: str, series: str, fn: Callable[[list[float]], float], what: str) -> None:
        if have(scalar) and series in layers:
            want = fn(layers[series])
            if not _close(float(scalars[scalar]), want):
                raise err(f"{at}.scalars.{scalar}", f"is {scalars[scalar]!r}: expected the {what} of layers.{series}, "
                          f"{want!r} {tol}")

    def layer_rule(scalar: str, series: str, chosen: Callable[[list[float]], float], what: str) -> None:
        """``scalar`` is a layer index whose ``series`` value must equal ``chosen(series)`` (ties allowed)."""
        if not (have(scalar) and series in layers):
            return
        values, layer = layers[series], scalars[scalar]
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < len(values):
            raise err(f"{at}.scalars.{scalar}", f"is {layer!r}: expected a layer index in 0..{len(values) - 1}")
        want = chosen(values)
        if not _close(float(values[layer]), want):
            raise err(f"{at}.scalars.{scalar}", f"is layer {layer} ({series} {values[layer]!r}): expected the layer of "
                      f"the {what} of layers.{series} ({want!r}, layer {_argmax(values) if what == 'maximum' else values.index(min(values))})")

    def mean(v: list[float]) -> float:
        return math.fsum(v) / len(v)

    value_rule("peak_bos_norm", "bos_norm", max, "maximum")
    layer_rule("peak_bos_norm_layer", "bos_norm", max, "maximum")
    value_rule("max_bos_ratio", "bos_ratio", max, "maximum")
    layer_rule("bos_spike_layer_argmax_ratio", "bos_ratio", max, "maximum")
    value_rule("sink_rate_average", "sink_rate", mean, "mean")
    value_rule("sink_rate_average_excl_self", "sink_rate_excl_self", mean, "mean")
    value_rule("min_entropy", "entropy", min, "minimum")
    layer_rule("min_entropy_layer", "entropy", min, "minimum")
    value_rule("min_entropy_normalized", "entropy_normalized", min, "minimum")
    layer_rule("min_entropy_normalized_layer", "entropy_normalized", min, "minimum")
    # max-write spike: argmax over l of bos_norm[l] - bos_norm[l-1], bos_norm[-1] = embedding output
    if have("bos_spike_layer_max_write", "embedding_bos_norm") and "bos_norm" in layers:
        norms = [float(scalars["embedding_bos_norm"])] + [float(v) for v in layers["bos_norm"]]
        writes = [norms[i + 1] - norms[i] for i in range(len(norms) - 1)]
        layer = scalars["bos_spike_layer_max_write"]
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < len(writes):
            raise err(f"{at}.scalars.bos_spike_layer_max_write", f"is {layer!r}: expected a layer index in 0..{len(writes) - 1}")
        if not _close(writes[layer], max(writes)):
            raise err(f"{at}.scalars.bos_spike_layer_max_write",
                      f"is layer {layer}: expected the layer of the largest BOS-norm increase "
                      f"(bos_norm[l] - bos_norm[l-1], embedding_bos_norm before layer 0), layer {_argmax(writes)} {tol}")
