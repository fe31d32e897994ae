"""The measurements file's field rules: what each field may hold (number ranges, texts, flags, objects,
lists), one table per part of the file, and the first problem of a value against its rule."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from drope_check.engine.metric_table import METRICS
from drope_check.numbers import is_number

#: ``heads`` fields holding one ``[layer][head]`` grid per sequence (drope_check.engine.sink_stats).
PER_SEQUENCE_SUFFIX = "_per_sequence"


#: Slack above 1 for a fraction computed in floating point (a rate, ``queipo_alpha``, ``anisotropy``,
#: a normalised entropy) and below 0 for an entropy: rounding can put an exact 1 (or 0) a few ulps
#: past it; anything more is refused.
FRACTION_SLACK = 1e-9


def shown_value(value: Any) -> str:
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
            return f"is {shown_value(value)}: expected {self.what}"
        if (self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo))) or (
            self.hi is not None and value > self.hi
        ):
            return f"is {shown_value(value)}: expected {self.what}"
        n_layers = ctx.get("n_layers")
        if self.layer and n_layers is not None and value >= n_layers:
            return f"is {shown_value(value)}: expected a layer index in 0..{n_layers - 1} (n_layers = {n_layers})"
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
            return f"is {shown_value(value)}: expected {self.what}" + (" or null" if self.nullable else "")
        return None


@dataclass(frozen=True)
class Flag:
    """A JSON boolean (never 0 / 1)."""

    what: str = "true or false"

    def problem(self, value: Any, ctx: Mapping[str, Any]) -> str | None:
        return None if isinstance(value, bool) else f"is {shown_value(value)}: expected {self.what}"


@dataclass(frozen=True)
class Null:
    """JSON ``null`` only (one arm of an :class:`Either`)."""

    what: str = "null"

    def problem(self, value: Any, ctx: Mapping[str, Any]) -> str | None:
        return None if value is None else f"is {shown_value(value)}: expected {self.what}"


@dataclass(frozen=True)
class Either:
    """Any one of ``rules`` (e.g. a string or an object of strings)."""

    rules: tuple[Any, ...]
    what: str

    def problem(self, value: Any, ctx: Mapping[str, Any]) -> str | None:
        if any(first_problem(value, rule, [], ctx) is None for rule in self.rules):
            return None
        return f"is {shown_value(value)}: expected {self.what}"


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

#: ``heads.*``: sink scores in [0, 1]; ``null`` marks a head whose fp16-eager attention overflowed.
SINK_SCORE = Number(
    "a sink score in [0, 1] (or null: an overflowed fp16-eager head)",
    lo=0,
    hi=1 + FRACTION_SLACK,
    nullable=True,
)
#: The rule of each range of :mod:`drope_check.engine.metric_table`.
RANGES: dict[str, Number] = {
    "norm": NORM,
    "nonneg": NONNEG,
    "fraction": FRACTION,
    "rate": RATE,
    "entropy": ENTROPY,
    "count0": COUNT0,
    "layer": LAYER,
    "ppl": PPL,
    "sink_score": SINK_SCORE,
}
#: ``layers.<series>``: one value per layer, each in its range (a series not listed: any number).
LAYER_SERIES: dict[str, Number] = {m.name: RANGES[m.range] for m in METRICS if m.kind == "series"}
#: ``scalars.<name>`` (``null``: not measured; a scalar not listed: any number).
SCALARS: dict[str, Number] = {m.name: RANGES[m.range] for m in METRICS if m.kind == "scalar"}
ANY_NUMBER = Number("a number")

#: ``protocol`` (the engine's :class:`~drope_check.engine.protocol.Protocol`, or a source's own record):
#: the fields the protocol identity of a verdict reads (:mod:`drope_check.claims.protocol_identity`).
PROTOCOL = Obj(
    {
        "name": TEXT,
        "text_set": TEXT,
        "n_texts": COUNT,
        "min_chars": COUNT0,
        "max_tokens": COUNT,
        "batch_size": COUNT,
        "pad_to": Number("a length (a positive integer) or null", lo=1, integer=True, nullable=True),
        "padding_in_stats": FLAG,
        "attention_source": TEXT,
        "stats_dtype": TEXT,
        "sink_tau": Number("a threshold in (0, 1)", lo=0, lo_open=True, hi=1),
        "sink_strict": FLAG,
        "sink_self_term": FLAG,
        "sink_t0": TEXT,
        "padding": TEXT,
        "spike_rule": TEXT,
        "prompt_tokens": Either(
            (Null(), ListOf(COUNT, length=2)), "null or [lo, hi] (two positive integers)"
        ),
    },
    nonempty=True,
    what="the protocol object",
)
TEXTS = Obj(
    {
        "name": TEXT,
        "source": TEXT,
        "selection": TEXT,
        "n_texts": Number("a positive integer or null", lo=1, integer=True, nullable=True),
        "sha256": TEXT_OR_NULL,
        "file_sha256": TEXT_OR_NULL,
        "n_tokens": Obj(other=COUNT, what="an object of token counts"),
    },
    nonempty=True,
    what="the texts object",
)
#: ``environment``: what the report prints is a string (``cpu_count`` a count); the rest any JSON.
ENVIRONMENT = Obj(
    {
        key: TEXT
        for key in ("python", "torch", "transformers", "platform", "device", "cpu", "gpu", "gpu_capability")
    }
    | {"cpu_count": Number("an integer >= 1 or null", lo=1, integer=True, nullable=True)},
    what="the environment object",
)
#: A perplexity record (``perplexity.<protocol>``, and each intervention's ``perplexity``).
PERPLEXITY = Obj(
    {
        "protocol": TEXT,
        "formula": Text(what="a string", empty=True),
        "ppl": PPL,
        "nll_sum": NONNEG,
        "n_predicted": COUNT,
        "mean_nll": NONNEG,
        "n_sequences": COUNT,
        "per_sequence": ListOf(
            ListOf(NONNEG, length=2, what="[NLL sum, predicted tokens]"), what="a non-empty list"
        ),
    },
    required=("ppl",),
    what="a perplexity object",
)
#: ``interventions.<name>``: the claims read ``ppl`` and ``ratio`` (``ppl / baseline_ppl``).
INTERVENTION = Obj(
    {
        "intervention": TEXT,
        "kind": TEXT,
        "rule": TEXT_OR_NULL,
        "spike_rule": TEXT_OR_NULL,
        "layer": Number("a layer index or null", lo=0, integer=True, nullable=True, layer=True),
        "protocol": TEXT,
        "ppl": PPL,
        "baseline_ppl": PPL,
        "ratio": RATIO,
        "n_sequences": COUNT,
        "n_predicted": COUNT,
        "perplexity": PERPLEXITY,
        "record": Obj(what="an object"),
    },
    nonempty=True,
    what="an intervention object",
)
#: ``provenance``: what the claims, the report and the model-id check read.
PROVENANCE = Obj(
    {
        "model_id": TEXT,
        "revision": TEXT_OR_NULL,
        "variant": TEXT,
        "weights_sha256": Either((TEXT_OR_NULL, STRINGS), "a sha256 string, an object of them, or null"),
        "dtype": TEXT,
        "attention_path": TEXT,
        "attention_type": TEXT,
        "device": TEXT,
        "quantization": TEXT_OR_NULL,
        "n_sequences": COUNT,
        "n_tokens": COUNT,
        "pad_to": COUNT0,
        "bos_token": TEXT,
        "bos_token_id": COUNT0,
        "pad_token_id": COUNT0,
        "seconds": NONNEG,
        "licence": TEXT,
        "weights_loaded_from": TEXT,
        "loader": TEXT,
        "softmax_scale": Number("a positive number or null", lo=0, lo_open=True, nullable=True),
        "qk_norm_weights": STRINGS,
        "attention_stats_precision": TEXT,
        "source": TEXT,
        "method": STRINGS,  # author-files imports: facts about the author's code (the Methods claims read them)
        "incomplete_weights": Obj(
            other=ListOf(TEXT, what="a non-empty list of tensor names"),
            nonempty=True,
            what="an object of tensor-name lists",
        ),
        "positions_beyond_training": Obj(
            {"longest_sequence": COUNT, "max_position_embeddings": COUNT},
            required=("longest_sequence", "max_position_embeddings"),
        ),
    },
    nonempty=True,
    what="the provenance object",
)
#: ``field_provenance.<field>`` of an ``import-upstream`` file: the protocol the author-files
#: verdicts compare (:func:`drope_check.claims.protocol_identity.field_identity`) and the commit they name.
FIELD_PROVENANCE = Obj(
    other=Obj(
        {
            "repository": TEXT,
            "commit": TEXT_OR_NULL,
            "file": TEXT,
            "json_path": TEXT_OR_NULL,
            "protocol": Obj(
                {"name": TEXT, "label": TEXT, "text_set": TEXT}, required=("name",), what="a protocol object"
            ),
            "derived": FLAG,
            "rule": TEXT,
            "inputs": ListOf(TEXT),
            "note": TEXT,
        },
        required=("protocol",),
        what="a field-provenance object",
    ),
    nonempty=True,
    what="an object of field provenances",
)
#: The top level, ``models`` apart (checked per model: its rules need the model's ``n_layers``).
TOP_LEVEL = Obj(
    {
        "tool": Obj({"name": TEXT, "version": TEXT}, what="the tool object"),
        "created": TEXT,
        "pair_description": TEXT,
        "protocol": PROTOCOL,
        "texts": TEXTS,
        "environment": ENVIRONMENT,
        "options": Obj(what="an object"),
        "upstream": Obj(
            {"repository": TEXT, "era": TEXT, "source": TEXT, "files_sha256": STRINGS},
            nonempty=True,
            what="the upstream object",
        ),
    }
)
#: A model object's fields other than ``layers`` / ``heads`` (shapes: checked against n_layers / n_heads).
MODEL = Obj(
    {
        "role": TEXT,
        "provenance": PROVENANCE,
        "protocol": PROTOCOL,
        "field_provenance": FIELD_PROVENANCE,
        "scalars": Obj(
            SCALARS,
            other=Number("a number (or null: not measured)", nullable=True),
            nonempty=True,
            what="an object of numbers",
        ),
        "perplexity": Obj(other=PERPLEXITY, nonempty=True, what="an object of perplexity objects"),
        "interventions": Obj(other=INTERVENTION, nonempty=True, what="an object of interventions"),
    }
)


def first_problem(
    value: Any, rule: Any, parts: list[Any], ctx: Mapping[str, Any]
) -> tuple[list[Any], str] | None:
    """The JSON path (as parts) and the problem of the first place where ``value`` breaks ``rule``."""
    if rule is None:
        return None
    if isinstance(rule, Obj):
        if not isinstance(value, Mapping):
            return parts, f"is {shown_value(value)}: expected {rule.what}"
        if rule.nonempty and not value:
            return (
                parts,
                f"is an empty object: expected {rule.what}; leave the key out when nothing was measured",
            )
        for key in rule.required:
            if key not in value:
                return parts + [key], f"is missing: {rule.what} needs {', '.join(rule.required)}"
        for key, item in value.items():
            found = first_problem(item, rule.fields.get(key, rule.other), parts + [key], ctx)
            if found:
                return found
        return None
    if isinstance(rule, ListOf):
        if not isinstance(value, list):
            return parts, f"is {shown_value(value)}: expected {rule.what}"
        if rule.nonempty and not value:
            return parts, f"is an empty list: expected {rule.what}"
        if rule.length is not None and len(value) != rule.length:
            return parts, f"has {len(value)} items: expected {rule.length} ({rule.what})"
        for i, item in enumerate(value):
            found = first_problem(item, rule.item, parts + [i], ctx)
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
            return (
                SINK_SCORE
                if (len(parts) == 6 and not str(parts[3]).endswith(PER_SEQUENCE_SUFFIX)) or len(parts) == 7
                else None
            )
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
