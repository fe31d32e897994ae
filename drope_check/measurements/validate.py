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

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from drope_check.engine import metric_table
from drope_check.measurements.rules import (
    ANY_NUMBER,
    LAYER_SERIES,
    MODEL,
    PER_SEQUENCE_SUFFIX,
    SINK_SCORE,
    TOP_LEVEL,
    Number,
    first_problem,
    shown_value,
)
from drope_check.numbers import is_number

__all__ = [
    "CONSISTENCY_RTOL",
    "OPTIONAL_FIELDS",
    "SCHEMA_VERSION",
    "VARIANTS",
    "MeasurementsFileError",
    "load_measurements",
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
    "model": (
        "role",
        "provenance",
        "n_layers",
        "n_heads",
        "layers",
        "heads",
        "scalars",
        "perplexity",
        "interventions",
    ),
    "layers": metric_table.names("series", optional=True),
    "provenance": ("pad_to", "method"),
    "heads": metric_table.names("heads", optional=True),
    "scalars": metric_table.names("scalar", optional=True),
    "perplexity": ("lines", "prompts", "sliding"),
    "interventions": (
        "bos_mlp_ablation:argmax-ratio",
        "bos_mlp_ablation:max-write",
        "qk_disruption:report",
        "qk_disruption:jin",
    ),
    "intervention": ("ppl", "baseline_ppl", "ratio"),
}


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
        out += (
            f"[{p}]" if isinstance(p, int) else (f".{p}" if str(p).isidentifier() else f"[{json.dumps(p)}]")
        )
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
        raise MeasurementsFileError(
            origin, None, f"holds a number no float can hold ({exc}): expected finite numbers"
        ) from None
    found = _find_unrepresentable(data, [])
    if found is not None:
        raise MeasurementsFileError(origin, *found)
    return data


def load_measurements(path: str | Path) -> dict[str, Any]:
    """Read, parse and validate a measurements file; raise :class:`MeasurementsFileError` on any problem."""
    file = Path(path)
    origin = str(file)
    if not file.exists():
        raise MeasurementsFileError(
            origin, None, "no such file: expected a measurements JSON from `drope-check measure`"
        )
    if file.is_dir():
        raise MeasurementsFileError(origin, None, "is a folder: expected a measurements JSON file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MeasurementsFileError(
            origin, None, f"cannot be read ({exc}): expected a UTF-8 JSON file"
        ) from None
    data = parse_measurements_json(text, origin)
    validate_measurements(data, origin)
    return data


# ----------------------------------------------------------------------------------------------
# field rules: what each field may hold


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
        return _json_path(
            parts
        ), f"is {node.text}, which is not JSON and never a measurement: expected a finite number"
    if isinstance(node, float) and not math.isfinite(node):
        return _json_path(parts), f"is {node!r}: expected a finite number"
    if isinstance(node, int) and not isinstance(node, bool) and not _fits_a_float(node):
        return _json_path(parts), (
            f"is an integer of {len(str(abs(node)))} digits, too large for a float "
            "(and for any measurement): expected a finite number"
        )
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
        found = first_problem(value, rule, parts, ctx)
        if found:
            raise err(_json_path(found[0]), found[1])

    found = _find_unrepresentable(data, [])
    if found:
        raise err(*found)
    if not isinstance(data, Mapping):
        raise err(
            "$", f"is a JSON {type(data).__name__}: expected an object with schema_version, pair and models"
        )
    if "schema_version" not in data:
        raise err("$.schema_version", f"is missing: expected {SCHEMA_VERSION}")
    if data["schema_version"] != SCHEMA_VERSION or isinstance(data["schema_version"], bool):
        raise err(
            "$.schema_version",
            f"is {data['schema_version']!r}: this suite reads schema_version {SCHEMA_VERSION}",
        )
    if not isinstance(data.get("pair"), str) or not data["pair"]:
        raise err("$.pair", f'is {data.get("pair")!r}: expected the pair\'s registry name or "custom"')
    check({k: v for k, v in data.items() if k != "models"}, TOP_LEVEL, [], {})
    _check_protocol(data.get("protocol"), "$.protocol", err)
    models = data.get("models")
    if not isinstance(models, Mapping):
        shown = "missing" if models is None else f"a JSON {type(models).__name__}"
        raise err("$.models", f'is {shown}: expected an object {{"rope": {{...}}, "drope": {{...}}}}')
    for role in VARIANTS:
        if role not in models:
            raise err(
                f"$.models.{role}",
                "is missing: expected the measurements of both the rope and the drope model",
            )
    for role, model in models.items():
        if role not in VARIANTS:
            raise err(f"$.models.{role}", f"is not a model role: expected only {', '.join(VARIANTS)}")
        _validate_model(model, role, err, check)
    imports = [role for role, model in models.items() if "field_provenance" in model]
    if imports and not isinstance(data.get("upstream"), Mapping):
        raise err(
            "$.upstream",
            f"is missing: models.{imports[0]}.field_provenance marks a file of `drope-check "
            "import-upstream`, which names the author's repository, era and files in an upstream object",
        )


def _validate_model(
    model: Any,
    role: str,
    err: Callable[[str | None, str], MeasurementsFileError],
    check: Callable[[Any, Any, list[Any], Mapping[str, Any]], None],
) -> None:
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
        raise err(f"{at}.layers", f"is {shown_value(layers)}: expected an object of per-layer arrays")
    if layers is not None and not layers:
        raise err(
            f"{at}.layers",
            "is an empty object: expected per-layer arrays (leave the key out when none was measured)",
        )
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
        raise err(f"{at}.heads", f"is {shown_value(heads)}: expected an object of per-layer, per-head arrays")
    if heads is not None and not heads:
        raise err(
            f"{at}.heads",
            "is an empty object: expected per-head arrays (leave the key out when none was measured)",
        )
    for key, value in (heads or {}).items():
        where = f"{at}.heads.{key}"
        if key.endswith(PER_SEQUENCE_SUFFIX):  # [sequence][layer][head] (drope_check.engine.sink_stats)
            if not isinstance(value, list) or not value:
                raise err(where, "expected a non-empty list (sequences) of [layer][head] grids")
            for n, grid in enumerate(value):
                _head_grid(grid, f"{where}[{n}]", n_layers, n_heads, err)
        else:
            _head_grid(value, where, n_layers, n_heads, err)

    ctx = {
        "n_layers": n_layers if n_layers is not None else (next(iter(lengths.values())) if lengths else None)
    }
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
        raise err(
            f"{at}.pad_to",
            f"is {protocol['pad_to']}: expected a length >= max_tokens ({max_tokens}), or null",
        )
    cut = protocol.get("prompt_tokens")
    if isinstance(cut, list) and not cut[0] <= cut[1] < max_tokens:
        raise err(
            f"{at}.prompt_tokens", f"is {cut}: expected [lo, hi] with lo <= hi < max_tokens ({max_tokens})"
        )


def _optional_count(
    model: Mapping[str, Any], key: str, at: str, err: Callable[..., MeasurementsFileError]
) -> int | None:
    if model.get(key) is None:
        return None
    value = model[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise err(f"{at}.{key}", f"is {value!r}: expected a positive integer")
    return value


def _flat_numbers(
    series: Any,
    where: str,
    err: Callable[..., MeasurementsFileError],
    allow_null: bool = False,
    rule: Number = ANY_NUMBER,
) -> None:
    if not isinstance(series, list) or not series:
        raise err(where, "expected a non-empty list of numbers")
    for i, value in enumerate(series):
        if isinstance(value, list):
            raise err(f"{where}[{i}]", "is a nested list: expected a number (one per layer)")
        if not (is_number(value) or (allow_null and value is None)):
            raise err(
                f"{where}[{i}]", f"is {value!r}: expected a number" + (" or null" if allow_null else "")
            )
        message = rule.problem(value, {}) if value is not None else None
        if message:
            raise err(f"{where}[{i}]", message)


def _head_grid(
    grid: Any,
    where: str,
    n_layers: int | None,
    n_heads: int | None,
    err: Callable[..., MeasurementsFileError],
) -> None:
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


def _check_consistency(
    layers: Mapping[str, Any], scalars: Mapping[str, Any], at: str, err: Callable[..., MeasurementsFileError]
) -> None:
    """Scalars that summarise a per-layer array must agree with it (see :data:`CONSISTENCY_RTOL`)."""
    tol = f"(tolerance {CONSISTENCY_RTOL:g} relative)"

    def have(*keys: str) -> bool:
        return all(scalars.get(k) is not None for k in keys)

    def value_rule(scalar: str, series: str, fn: Callable[[list[float]], float], what: str) -> None:
        if have(scalar) and series in layers:
            want = fn(layers[series])
            if not _close(float(scalars[scalar]), want):
                raise err(
                    f"{at}.scalars.{scalar}",
                    f"is {scalars[scalar]!r}: expected the {what} of layers.{series}, {want!r} {tol}",
                )

    def layer_rule(scalar: str, series: str, chosen: Callable[[list[float]], float], what: str) -> None:
        """``scalar`` is a layer index whose ``series`` value must equal ``chosen(series)`` (ties allowed)."""
        if not (have(scalar) and series in layers):
            return
        values, layer = layers[series], scalars[scalar]
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < len(values):
            raise err(
                f"{at}.scalars.{scalar}", f"is {layer!r}: expected a layer index in 0..{len(values) - 1}"
            )
        want = chosen(values)
        if not _close(float(values[layer]), want):
            raise err(
                f"{at}.scalars.{scalar}",
                f"is layer {layer} ({series} {values[layer]!r}): expected the layer of "
                f"the {what} of layers.{series} ({want!r}, layer {_argmax(values) if what == 'maximum' else values.index(min(values))})",
            )

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
            raise err(
                f"{at}.scalars.bos_spike_layer_max_write",
                f"is {layer!r}: expected a layer index in 0..{len(writes) - 1}",
            )
        if not _close(writes[layer], max(writes)):
            raise err(
                f"{at}.scalars.bos_spike_layer_max_write",
                f"is layer {layer}: expected the layer of the largest BOS-norm increase "
                f"(bos_norm[l] - bos_norm[l-1], embedding_bos_norm before layer 0), layer {_argmax(writes)} {tol}",
            )
