"""The report's claims as data: records loaded from ``expected/<pair>.toml``, bands, and verdicts.

A *claim* is one number (or one comparison) the report states, together with how far a faithful
re-measurement may land from it and why. This module knows nothing about models or pytest: it reads
claim files, resolves metric paths in a measurements dict (``docs/measurements-schema.md``) and
turns ``(claim, measurements)`` into a :class:`Verdict`.

Claim file (``expected/<pair>.toml``)
-------------------------------------
::

    schema_version = 1

    [pair]
    name = "llama2-7b"              # must equal the file name's stem
    description = "..."
    drope_variant = "drope"         # the DroPE-side variant the claims assume ("drope" | "nope-zeroshot")
    run_hint = "HF_TOKEN=... pytest claims/ --pair llama2-7b --require-models   (CUDA GPU, 24 GB)"

    [[claim]]
    id = "sink_rate_average"        # [a-z0-9_]+; (id, model) is unique within a file
    model = "rope"                  # "rope" | "drope" | "pair" (a comparison of the two models)
    family = "sink"                 # "perplexity" | "intervention" | "sink" | "phase" (which test module)
    sentence = "Both RoPE (97.8%) and DroPE (95.6%) have nearly identical attention sink rates."
    metric = "rope:scalars.sink_rate_average"   # a path; a list of paths for model = "pair"
    combine = "ratio"               # pair claims only, optional: "ratio" (a / b) or "difference" (a - b)
    value = 0.978                   # the report's value (or, for status "golden", the suite's golden)
    status = "claim"                # "claim" | "golden" | "does-not-generalise" | "skip"
    rationale = "why the band is this wide"      # required, non-empty
    band = { kind = "absolute", tol = 0.03 }
    provenance = { source = "results-json", text_set = "5 hand-written prompts", notes = "..." }
    # status-dependent keys:
    measured_how = "..."            # golden (once measured) and does-not-generalise: how/where/settings
    measured = 5.2                  # does-not-generalise: the value this suite measured on this pair
    pending = true                  # golden / does-not-generalise not measured yet -> skipped, never passed
    skip_reason = "..."             # status "skip": required
    plot = { series = "bos_norm", layer = 23 }   # optional: mark this value on a per-layer plot

Bands (``band.kind``)
---------------------
``absolute`` ``tol``: ``|m - v| <= tol``. ``relative`` ``rel``: ``|m - v| <= rel * |v|``.
``log_ratio`` ``factor`` (> 1): ``|ln(m / v)| <= ln(factor)``, for quantities spanning orders of
magnitude. ``one_sided`` ``op`` (``>=``, ``>``, ``<=``, ``<``) and ``bound``: ``m op bound``.
``exact``: ``m == v`` (layer indices). ``range`` ``lo``, ``hi``: every value of ``m`` (a scalar or a
per-layer slice) in ``[lo, hi]``. ``ordering`` ``op`` (+ optional ``factor``): two paths a, b with
``a op factor * b``. ``each`` ``ops``, ``bounds``: one one-sided bound per path, all must hold.
With a list ``value`` the ``absolute`` / ``relative`` / ``log_ratio`` / ``exact`` bands compare
element by element (a per-layer golden) and every element must pass.

Metric paths
------------
``<root>:<steps>`` where ``<root>`` is ``rope`` or ``drope`` (that model's object,
``measurements["models"][root]``) or ``root`` (the whole measurements object). Steps: ``name``
(a dict key; keys may contain ``:`` and ``-``, e.g. ``bos_mlp_ablation:argmax-ratio``), ``.name``,
``["any key"]`` (a key with dots or brackets), ``[i]`` (list index, negative from the end) and
``[a:b]`` (a Python half-open slice; either bound may be omitted or negative). Examples:
``rope:scalars.sink_rate_average``, ``drope:layers.sink_rate[1]``, ``rope:layers.sink_rate[2:-1]``
(layers 2 .. L-2: for a 32-layer model, 2-30), ``drope:interventions.bos_mlp_ablation:argmax-ratio.ratio``.

Verdict outcomes
----------------
``pass`` / ``fail`` (status claim or golden), ``xfail`` (does-not-generalise and still does not
hold), ``xpass`` (does-not-generalise but now holds: a strict xfail, so the test fails),
``skip`` (status skip, pending goldens, unavailable pairs), ``error`` (a path that is not in the
measurements, or measurements that do not belong to this file).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "BAND_KINDS",
    "FAMILIES",
    "MODELS",
    "PROVENANCE_SOURCES",
    "STATUSES",
    "Band",
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
    "fmt",
    "load_claims",
    "parse_path",
    "resolve",
    "verdict_for",
]

SCHEMA_VERSION = 1
MODELS: tuple[str, ...] = ("rope", "drope", "pair")
FAMILIES: tuple[str, ...] = ("perplexity", "intervention", "sink", "phase")
STATUSES: tuple[str, ...] = ("claim", "golden", "does-not-generalise", "skip")
PROVENANCE_SOURCES: tuple[str, ...] = ("results-json", "prose-only", "derived", "suite-measured")
BAND_KINDS: tuple[str, ...] = (
    "absolute", "relative", "log_ratio", "one_sided", "exact", "range", "ordering", "each",
)
ONE_SIDED_OPS: tuple[str, ...] = (">=", ">", "<=", "<")
COMBINE: tuple[str, ...] = ("ratio", "difference")
PATH_ROOTS: tuple[str, ...] = ("rope", "drope", "root")

_ID_RE = re.compile(r"^[a-z0-9_]+$")
_CLAIM_KEYS = frozenset({
    "id", "model", "family", "sentence", "metric", "combine", "value", "status", "rationale", "band",
    "provenance", "measured_how", "measured", "pending", "skip_reason", "plot", "texts_sha256",
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
}
_PAIR_KEYS = frozenset({"name", "description", "drope_variant", "run_hint", "report"})
_PROVENANCE_KEYS = frozenset({"source", "text_set", "notes", "results_value"})
_PLOT_KEYS = frozenset({"series", "layer"})
_VARIANTS = ("drope", "nope-zeroshot")


# ----------------------------------------------------------------------------------------------
# errors


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


class MetricPathError(LookupError):
    """A metric path is not in the measurements (or has a bad syntax); names the claim and the path."""

    def __init__(self, path: str, detail: str, claim: str | None = None) -> None:
        self.path = path
        self.detail = detail
        self.claim = claim
        prefix = f"claim {claim}: " if claim else ""
        super().__init__(f"{prefix}metric path {path!r}: {detail}")

    def __str__(self) -> str:  # LookupError would repr() a single argument
        return self.args[0]


class MeasurementsMismatch(ValueError):
    """The measurements belong to another pair or DroPE variant than the claim file assumes."""


# ----------------------------------------------------------------------------------------------
# metric paths


@dataclass(frozen=True)
class MetricPath:
    """A parsed metric path: the root and a tuple of steps ``("key", name)``, ``("index", i)``,
    ``("slice", start, stop)``."""

    text: str
    root: str
    steps: tuple[tuple[Any, ...], ...]

    @property
    def is_slice(self) -> bool:
        return any(step[0] == "slice" for step in self.steps)

    def layer_series(self) -> tuple[str, tuple[Any, ...]] | None:
        """``("sink_rate", step)`` when the path is ``layers.<series>[i]`` or ``layers.<series>[a:b]``."""
        if len(self.steps) == 3 and self.steps[0] == ("key", "layers") and self.steps[1][0] == "key":
            if self.steps[2][0] in ("index", "slice"):
                return self.steps[1][1], self.steps[2]
        return None


def _parse_int(text: str, path: str) -> int | None:
    text = text.strip()
    if text == "":
        return None
    if not re.fullmatch(r"[+-]?\d+", text):
        raise MetricPathError(path, f"{text!r} is not an integer index")
    return int(text)


def parse_path(path: str) -> MetricPath:
    """Parse ``<root>:<steps>`` (see the module docstring); raise :class:`MetricPathError` on bad syntax."""
    if not isinstance(path, str):
        raise MetricPathError(repr(path), "a metric path must be a string")
    root, sep, rest = path.partition(":")
    if not sep or root not in PATH_ROOTS:
        raise MetricPathError(path, f"must start with one of {', '.join(r + ':' for r in PATH_ROOTS)}")
    if not rest:
        raise MetricPathError(path, "nothing after the root")
    steps: list[tuple[Any, ...]] = []
    i, n = 0, len(rest)
    expect_key = True  # at the start and after "."
    while i < n:
        ch = rest[i]
        if ch == "[":
            if rest.startswith('["', i):
                end = rest.find('"]', i + 2)
                if end < 0:
                    raise MetricPathError(path, f'unterminated ["..."] at offset {i}')
                try:
                    key = json.loads(rest[i + 1 : end + 1])
                except json.JSONDecodeError as exc:
                    raise MetricPathError(path, f"bad quoted key at offset {i}: {exc}") from None
                steps.append(("key", key))
                i = end + 2
            else:
                end = rest.find("]", i)
                if end < 0:
                    raise MetricPathError(path, f"unterminated [ at offset {i}")
                inner = rest[i + 1 : end]
                if ":" in inner:
                    a, _, b = inner.partition(":")
                    steps.append(("slice", _parse_int(a, path), _parse_int(b, path)))
                else:
                    index = _parse_int(inner, path)
                    if index is None:
                        raise MetricPathError(path, f"empty [] at offset {i}")
                    steps.append(("index", index))
                i = end + 1
            expect_key = False
        elif ch == ".":
            if expect_key:
                raise MetricPathError(path, f"empty key at offset {i}")
            expect_key = True
            i += 1
        else:
            if not expect_key:
                raise MetricPathError(path, f"expected '.' or '[' at offset {i}")
            j = i
            while j < n and rest[j] not in ".[]" and not rest[j].isspace():
                j += 1
            if j == i:
                raise MetricPathError(path, f"unexpected {rest[i]!r} at offset {i}")
            steps.append(("key", rest[i:j]))
            i = j
            expect_key = False
    if expect_key:
        raise MetricPathError(path, "ends with '.'")
    return MetricPath(path, root, tuple(steps))


def _describe_step(step: tuple[Any, ...]) -> str:
    if step[0] == "key":
        return f".{step[1]}"
    if step[0] == "index":
        return f"[{step[1]}]"
    a = "" if step[1] is None else step[1]
    b = "" if step[2] is None else step[2]
    return f"[{a}:{b}]"


def resolve(measurements: Mapping[str, Any], path: str | MetricPath, claim: str | None = None) -> Any:
    """The value at ``path``: a number, or a list of numbers for a slice or a list-valued leaf.

    Raises :class:`MetricPathError` naming the claim, the path and the first step that is missing.
    """
    parsed = path if isinstance(path, MetricPath) else parse_path(path)
    if parsed.root == "root":
        node: Any = measurements
        where = "root:"
    else:
        models = measurements.get("models") if isinstance(measurements, Mapping) else None
        if not isinstance(models, Mapping) or parsed.root not in models:
            have = sorted(models) if isinstance(models, Mapping) else []
            raise MetricPathError(parsed.text, f"no model {parsed.root!r} in the measurements (have {have})", claim)
        node = models[parsed.root]
        where = f"{parsed.root}:"
    for step in parsed.steps:
        shown = where
        if step[0] == "key":
            if not isinstance(node, Mapping):
                raise MetricPathError(parsed.text, f"{shown} is a {type(node).__name__}, not an object", claim)
            if step[1] not in node:
                keys = sorted(map(str, node))
                more = "" if len(keys) <= 25 else f" (+{len(keys) - 25} more)"
                raise MetricPathError(
                    parsed.text, f"no key {step[1]!r} under {shown}; available: {', '.join(keys[:25])}{more}", claim
                )
            node = node[step[1]]
        else:
            if not isinstance(node, list):
                raise MetricPathError(parsed.text, f"{shown} is a {type(node).__name__}, not a list", claim)
            if step[0] == "index":
                if not -len(node) <= step[1] < len(node):
                    raise MetricPathError(parsed.text, f"index {step[1]} out of range for {shown} (length {len(node)})", claim)
                node = node[step[1]]
            else:
                node = node[step[1] : step[2]]
                if not node:
                    raise MetricPathError(parsed.text, f"slice {_describe_step(step)} of {shown} is empty", claim)
        shown_step = _describe_step(step)
        where += shown_step[1:] if where.endswith(":") and shown_step.startswith(".") else shown_step
    _check_numeric(node, parsed.text, claim)
    return node


def _check_numeric(node: Any, path: str, claim: str | None) -> None:
    if node is None:
        raise MetricPathError(path, "is null in the measurements (not measured?)", claim)
    if isinstance(node, bool) or not isinstance(node, (int, float, list)):
        raise MetricPathError(path, f"is a {type(node).__name__}, not a number or a list of numbers", claim)
    if isinstance(node, list):
        for item in node:
            _check_numeric(item, path, claim)


# ----------------------------------------------------------------------------------------------
# formatting


def fmt(x: Any, digits: int = 4) -> str:
    """A short human form of a number or list of numbers (lists of > 6 items are summarised)."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x == int(x) and abs(x) < 1e6:
            return str(int(x)) if abs(x) >= 1 or x == 0 else f"{x:.{digits}g}"
        return f"{x:.{digits}g}"
    if isinstance(x, (list, tuple)):
        flat = _flatten(x)
        if len(flat) > 6:
            return f"[{fmt(min(flat), digits)} .. {fmt(max(flat), digits)}] ({len(flat)} values)"
        return "[" + ", ".join(fmt(v, digits) for v in x) + "]"
    return str(x)


def _flatten(x: Any) -> list[float]:
    if isinstance(x, (list, tuple)):
        out: list[float] = []
        for item in x:
            out.extend(_flatten(item))
        return out
    return [float(x)]


def _op_holds(a: float, op: str, b: float) -> bool:
    return {">=": a >= b, ">": a > b, "<=": a <= b, "<": a < b}[op]


def _op_margin(a: float, op: str, b: float) -> float:
    """Signed distance by which ``a op b`` holds (positive) or fails (negative; 0 fails a strict op)."""
    return a - b if op in (">=", ">") else b - a


# ----------------------------------------------------------------------------------------------
# bands


@dataclass(frozen=True)
class BandResult:
    passed: bool
    margin: float | None  # positive: inside by that much; negative: outside by that much
    margin_text: str


@dataclass(frozen=True)
class Band:
    """A tolerance band; see the module docstring for each kind's parameters and meaning."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def describe(self, value: Any = None, names: Sequence[str] = ()) -> str:
        """The band as a sentence with its numeric interval, e.g. ``within x4 of 1249: [312.2, 4996]``."""
        p = self.params
        k = self.kind
        if k == "absolute":
            if isinstance(value, (int, float)):
                return f"|m - v| <= {fmt(p['tol'])}: [{fmt(value - p['tol'])}, {fmt(value + p['tol'])}]"
            return f"|m - v| <= {fmt(p['tol'])} (each element)"
        if k == "relative":
            pct = f"{p['rel'] * 100:.3g}%"
            if isinstance(value, (int, float)):
                lo, hi = value - abs(value) * p["rel"], value + abs(value) * p["rel"]
                return f"within {pct} of {fmt(value)}: [{fmt(lo)}, {fmt(hi)}]"
            return f"within {pct} of v (each element)"
        if k == "log_ratio":
            f = p["factor"]
            if isinstance(value, (int, float)) and value > 0:
                return f"within a factor {fmt(f)} of {fmt(value)}: [{fmt(value / f)}, {fmt(value * f)}]"
            return f"within a factor {fmt(f)} of v (each element)"
        if k == "one_sided":
            return f"m {p['op']} {fmt(p['bound'])}"
        if k == "exact":
            return f"m == {fmt(value)}"
        if k == "range":
            return f"every value in [{fmt(p['lo'])}, {fmt(p['hi'])}]"
        if k == "ordering":
            a, b = (list(names) + ["a", "b"])[:2]
            factor = p.get("factor", 1.0)
            rhs = b if factor == 1 else f"{fmt(factor)} * {b}"
            return f"{a} {p['op']} {rhs}"
        if k == "each":
            shown = list(names) or [f"m{i}" for i in range(len(p["ops"]))]
            return " and ".join(f"{n} {op} {fmt(b)}" for n, op, b in zip(shown, p["ops"], p["bounds"], strict=True))
        return k  # pragma: no cover - kinds are validated on load

    def check(self, measured: Any, value: Any) -> BandResult:
        """Whether ``measured`` lies in the band around ``value``, and by how much (see :class:`BandResult`)."""
        result = self._check(measured, value)
        if result.passed and result.margin is not None and result.margin < 0:  # inside by float slack only
            return BandResult(True, 0.0, result.margin_text.replace(f"by {fmt(abs(result.margin))}", "by 0", 1))
        return result

    def _check(self, measured: Any, value: Any) -> BandResult:
        k, p = self.kind, self.params
        if k in ("ordering", "each"):
            values = [float(v) for v in measured]
            if any(math.isnan(v) for v in values):
                return BandResult(False, None, "a measured value is NaN")
            if k == "ordering":
                a, b = values[0], values[1] * float(p.get("factor", 1.0))
                margin = _op_margin(a, p["op"], b)
                ok = _op_holds(a, p["op"], b)
                return BandResult(ok, margin, _margin_text(ok, margin, ""))
            margins = [_op_margin(v, op, float(bd)) for v, op, bd in zip(values, p["ops"], p["bounds"], strict=True)]
            ok = all(_op_holds(v, op, float(bd)) for v, op, bd in zip(values, p["ops"], p["bounds"], strict=True))
            worst = min(margins)
            return BandResult(ok, worst, _margin_text(ok, worst, " (worst of the bounds)"))
        flat_m = _flatten(measured)
        if any(math.isnan(v) for v in flat_m):
            return BandResult(False, None, "measured value is NaN")
        if k == "range":
            margins = [min(v - p["lo"], p["hi"] - v) for v in flat_m]
            ok = all(_le(p["lo"], v) and _le(v, p["hi"]) for v in flat_m)
            worst = min(margins)
            return BandResult(ok, worst, _margin_text(ok, worst, ""))
        if k == "one_sided":
            margins = [_op_margin(v, p["op"], float(p["bound"])) for v in flat_m]
            ok = all(_op_holds(v, p["op"], float(p["bound"])) for v in flat_m)
            worst = min(margins)
            return BandResult(ok, worst, _margin_text(ok, worst, ""))
        flat_v = _flatten(value)
        if len(flat_v) == 1 and len(flat_m) > 1:
            flat_v = flat_v * len(flat_m)
        if len(flat_v) != len(flat_m):
            return BandResult(False, None, f"measured has {len(flat_m)} values, expected {len(flat_v)}")
        if k == "exact":
            diffs = [abs(m - v) for m, v in zip(flat_m, flat_v, strict=True)]
            worst = max(diffs)
            ok = worst == 0
            return BandResult(ok, -worst, "equal" if ok else f"off by {fmt(worst)}")
        if k == "absolute":
            worst = max(abs(m - v) for m, v in zip(flat_m, flat_v, strict=True))
            margin = p["tol"] - worst
            ok = _le(worst, p["tol"])
            return BandResult(ok, margin, _margin_text(ok, margin, f" (|m - v| = {fmt(worst)})"))
        if k == "relative":
            worst = max(abs(m - v) / abs(v) for m, v in zip(flat_m, flat_v, strict=True))
            margin = p["rel"] - worst
            ok = _le(worst, p["rel"])
            return BandResult(ok, margin, _margin_text(ok, margin, f" of v (|m - v| / |v| = {worst:.3g})", pct=True))
        if k == "log_ratio":
            if any(m <= 0 for m in flat_m):
                return BandResult(False, None, "measured <= 0: a log-ratio band is undefined there")
            worst = max(abs(math.log(m / v)) for m, v in zip(flat_m, flat_v, strict=True))
            margin = math.log(p["factor"]) - worst
            ok = _le(worst, math.log(p["factor"]))
            return BandResult(ok, margin, _margin_text(ok, margin, f" in ln units (m / v off by x{math.exp(worst):.3g})"))
        raise AssertionError(k)  # pragma: no cover


#: Slack on inclusive band edges, so that a value printed exactly at an edge (0.978 + 0.03) is inside.
EDGE_SLACK = 1e-9


def _le(a: float, b: float) -> bool:
    """``a <= b`` up to :data:`EDGE_SLACK` relative (float representation of the band's edges)."""
    return a <= b + EDGE_SLACK * max(abs(a), abs(b), 1e-300)


def _margin_text(ok: bool, margin: float, suffix: str, pct: bool = False) -> str:
    amount = f"{abs(margin) * 100:.3g} points" if pct else fmt(abs(margin))
    return f"{'inside' if ok else 'outside'} by {amount}{suffix}"


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
    source_file: str = ""
    order: int = 0  # position in the claim file (the report keeps the file's order)

    @property
    def key(self) -> str:
        """The test id: ``sink_rate_average[llama2-7b:rope]``."""
        return f"{self.id}[{self.pair}:{self.model}]"

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

    def rerun_command(self) -> str:
        return f'pytest claims/ --pair {self.pair} -k "{self.id} and {self.pair} and {self.model}"'


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

    def by_family(self, family: str) -> list[Claim]:
        return [c for c in self.claims if c.family == family]

    def get(self, claim_id: str, model: str) -> Claim:
        for claim in self.claims:
            if claim.id == claim_id and claim.model == model:
                return claim
        raise KeyError(f"{self.path}: no claim {claim_id!r} for model {model!r}")


def default_expected_dir() -> Path:
    """``expected/`` next to the package (the repository's, for an editable install)."""
    return Path(__file__).resolve().parent.parent / "expected"


def available_pairs(expected_dir: str | Path | None = None) -> list[str]:
    """Pairs with a claim file, sorted by name."""
    folder = Path(expected_dir) if expected_dir is not None else default_expected_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_value(x: Any) -> bool:
    if isinstance(x, list):
        return bool(x) and all(_is_value(v) for v in x)
    return _is_number(x)


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

    def need_number(key: str, check: Any = None, what: str = "") -> None:
        if key not in params:
            raise err(f"band.{key}", f"is required for a {kind!r} band")
        if not _is_number(params[key]) or not math.isfinite(params[key]):
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
            if not isinstance(bounds, list) or not all(_is_number(b) for b in bounds):
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
        if value is not None and any(v == 0 for v in _flatten(value)):
            raise err("value", "a relative band needs a non-zero value")
    elif kind == "log_ratio":
        need_number("factor", lambda f: f > 1, "must be > 1")
        if value is not None and any(v <= 0 for v in _flatten(value)):
            raise err("value", "a log_ratio band needs a positive value")
    elif kind == "one_sided":
        if params.get("op") not in ONE_SIDED_OPS:
            raise err("band.op", f"must be one of {', '.join(ONE_SIDED_OPS)}")
        need_number("bound")
    elif kind == "exact":
        if value is not None and not all(float(v).is_integer() for v in _flatten(value)):
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
    if value is not None and not _is_value(value):
        raise err("value", "must be a number or a non-empty list of numbers")
    if status == "golden" and not pending and value is None:
        raise err("value", "a golden needs a value, or pending = true until it is measured")
    if status in ("claim", "does-not-generalise") and value is None:
        raise err("value", f"is required for status {status!r} (the report's value)")

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

    plot = raw.get("plot")
    if plot is not None:
        if not isinstance(plot, Mapping) or set(plot) - _PLOT_KEYS or "series" not in plot:
            raise err("plot", "must be a table { series = \"bos_norm\", layer = 23 }")
        if not isinstance(plot["series"], str) or ("layer" in plot and not isinstance(plot["layer"], int)):
            raise err("plot", "series must be a string and layer an integer")

    return Claim(
        pair=pair, id=cid, model=model, family=family, sentence=sentence, metrics=metrics, combine=combine,
        value=value, status=status, rationale=rationale, band=band, provenance=dict(prov_raw),
        measured_how=measured_how, recorded=recorded, pending=pending, skip_reason=skip_reason,
        plot=dict(plot) if plot is not None else None, texts_sha256=texts_sha256, source_file=file, order=index,
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
        run_hint=run_hint, report=str(head.get("report", "")), claims=tuple(claims),
    )


def check_measurements(claim_set: ClaimSet, measurements: Mapping[str, Any], origin: str = "measurements") -> None:
    """Refuse measurements of another pair, another schema version or another DroPE variant."""
    if not isinstance(measurements, Mapping):
        raise MeasurementsMismatch(f"{origin}: not a JSON object")
    if measurements.get("schema_version") != SCHEMA_VERSION:
        raise MeasurementsMismatch(
            f"{origin}: schema_version {measurements.get('schema_version')!r}, this suite reads {SCHEMA_VERSION}"
        )
    got = measurements.get("pair")
    if got not in (claim_set.pair, "custom"):
        raise MeasurementsMismatch(f"{origin} measures pair {got!r}, but the claims are for {claim_set.pair!r}")
    models = measurements.get("models")
    if not isinstance(models, Mapping):
        raise MeasurementsMismatch(f"{origin}: no 'models' object")
    drope = models.get("drope")
    if isinstance(drope, Mapping) and drope.get("variant") not in (None, claim_set.drope_variant):
        raise MeasurementsMismatch(
            f"{origin}: the DroPE side is variant {drope.get('variant')!r}, but {claim_set.path} assumes "
            f"{claim_set.drope_variant!r}"
        )


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
    outcome: str  # pass | fail | xfail | xpass | skip | error | regenerated
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
            f"claim {self.key} does not hold" if self.outcome != "xpass" else
            f"claim {self.key} was recorded as not generalising, but now holds",
            f"  report says : {self.sentence}",
            f"  measured    : {fmt(self.measured)}   ({', '.join(self.metrics)})",
            f"  expected    : {fmt(self.expected)}   (status {self.status})",
            f"  band        : {self.band}",
            f"  margin      : {self.margin_text}",
            f"  rationale   : {self.rationale}",
            f"  provenance  : {_provenance_text(self.provenance)}",
        ]
        if self.reason:
            lines.append(f"  note        : {self.reason}")
        lines.append(f"  command     : {self.command}")
        return "\n".join(lines)


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


def _measure(claim: Claim, measurements: Mapping[str, Any]) -> Any:
    values = [resolve(measurements, path, claim.key) for path in claim.metrics]
    if claim.model != "pair":
        return values[0]
    if claim.combine is None:
        for path, v in zip(claim.metrics, values, strict=True):
            if not _is_number(v):
                raise MetricPathError(path, "a pair comparison needs a scalar here, got a list", claim.key)
        return values
    a, b = values
    if not (_is_number(a) and _is_number(b)):
        raise MetricPathError(claim.metrics[0], "combine needs two scalars", claim.key)
    if claim.combine == "ratio":
        if b == 0:
            return math.inf if a > 0 else (math.nan if a == 0 else -math.inf)
        return a / b
    return a - b


def _base_verdict(claim: Claim, **kw: Any) -> Verdict:
    fields: dict[str, Any] = dict(
        key=claim.key, pair=claim.pair, id=claim.id, model=claim.model, family=claim.family,
        status=claim.status, sentence=claim.sentence, metrics=list(claim.metrics), measured=None,
        expected=claim.value, band=claim.band_text(), passed=None, outcome="skip", margin=None,
        margin_text="", rationale=claim.rationale, provenance=dict(claim.provenance),
        measured_how=claim.measured_how, recorded=claim.recorded, command=claim.rerun_command(),
        order=claim.order,
    )
    fields.update(kw)
    return Verdict(**fields)


def skipped_verdict(claim: Claim, reason: str, outcome: str = "skip") -> Verdict:
    """A verdict for a claim that was not evaluated (unavailable pair, pending golden, status skip)."""
    return _base_verdict(claim, outcome=outcome, reason=reason)


def pending_reason(claim: Claim) -> str | None:
    """Why this claim is not evaluated at all, or None when it is."""
    if claim.status == "skip":
        return claim.skip_reason
    if claim.pending and claim.status == "golden":
        return f"golden not yet measured — run {claim.regen_command()}"
    if claim.pending:
        return f"the value this suite measures on {claim.pair} is not recorded yet — run {claim.regen_command()}"
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


def evaluate(claim: Claim, measurements: Mapping[str, Any]) -> Verdict:
    """Judge one claim against one measurements dict.

    Raises :class:`MetricPathError` when a path is missing; :func:`verdict_for` turns that into an
    ``error`` verdict instead. A skipped or pending claim gives a ``skip`` verdict without reading
    the measurements: a golden that was never measured can never pass.
    """
    why = pending_reason(claim) or text_set_mismatch(claim, measurements)
    if why is not None:
        return skipped_verdict(claim, why)
    assert claim.band is not None
    measured = _measure(claim, measurements)
    result = claim.band.check(measured, claim.value)
    verdict = _base_verdict(claim, measured=measured, passed=result.passed, margin=result.margin,
                            margin_text=result.margin_text)
    if claim.status == "does-not-generalise":
        if result.passed:
            verdict.outcome = "xpass"
            verdict.reason = (
                f"recorded as not generalising to {claim.pair} (suite measured {fmt(claim.recorded)}), but it now "
                f"holds with {fmt(measured)}: change its status to \"claim\" in {Path(claim.source_file).name}"
            )
        else:
            verdict.outcome = "xfail"
            verdict.reason = (
                f"does not generalise to {claim.pair}: the suite measured {fmt(measured)} "
                f"(recorded {fmt(claim.recorded)}) where the report claims {fmt(claim.value)}"
            )
    else:
        verdict.outcome = "pass" if result.passed else "fail"
        if claim.status == "golden":
            verdict.command = (
                f"{claim.rerun_command()}   # if the change is intended: {claim.regen_command()}"
            )
        else:
            verdict.command = (
                f"{claim.rerun_command()}   # a report-derived value is never regenerated; "
                f"a band change needs a new rationale in {Path(claim.source_file).name}"
            )
    return verdict


def verdict_for(claim: Claim, measurements: Mapping[str, Any]) -> Verdict:
    """Like :func:`evaluate`, but a missing path becomes an ``error`` verdict naming claim and path."""
    try:
        return evaluate(claim, measurements)
    except MetricPathError as exc:
        return _base_verdict(claim, outcome="error", reason=str(exc))


def evaluate_all(claims: Iterable[Claim], measurements: Mapping[str, Any]) -> list[Verdict]:
    return [verdict_for(c, measurements) for c in claims]


# ----------------------------------------------------------------------------------------------
# --regen-expected: rewrite suite-measured values, never report-derived ones

_REGEN_KEYS = ("value", "measured", "measured_how", "pending", "texts_sha256")


def toml_value(x: Any) -> str:
    """A TOML literal for a number, string or list (floats kept to 8 significant digits)."""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"cannot record a non-finite golden ({x})")
        if x.is_integer() and abs(x) < 1e15:
            return f"{x:.1f}"
        return repr(float(f"{x:.8g}"))
    if isinstance(x, str):
        return json.dumps(x, ensure_ascii=False)
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in x) + "]"
    raise TypeError(f"cannot write {type(x).__name__} to TOML")


def _block_bounds(lines: list[str]) -> list[tuple[int, int]]:
    """(start, end) line ranges of each ``[[claim]]``'s own keys (up to its next table header)."""
    header = re.compile(r"^\s*\[")
    starts = [i for i, line in enumerate(lines) if re.match(r"^\s*\[\[\s*claim\s*\]\]\s*(#.*)?$", line)]
    bounds = []
    for s in starts:
        e = s + 1
        while e < len(lines) and not header.match(lines[e]):
            e += 1
        bounds.append((s + 1, e))
    return bounds


def regen_expected(path: str | Path, updates: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[str]:
    """Rewrite measured values in a claim file and return the keys of the claims changed.

    ``updates`` maps ``(id, model)`` to ``{"measured_value": x, "measured_how": text}``. Only claims
    whose status is ``golden`` (their ``value``) or ``does-not-generalise`` (their ``measured``) are
    touched; ``pending`` is removed. Every other byte of the file stays as it was, and the result
    is re-parsed and compared with the original: if anything but those keys of those claims moved,
    nothing is written. A report-derived value can therefore never be overwritten.
    """
    file = Path(path)
    text = file.read_text(encoding="utf-8")
    before = tomllib.loads(text)
    lines = text.splitlines(keepends=True)
    raw_claims = before.get("claim", [])
    bounds = _block_bounds(lines)
    if len(bounds) != len(raw_claims):
        raise ClaimsFileError(file, None, "claim", "cannot regenerate: [[claim]] headers must each stand on their own line")
    changed: list[str] = []
    edits: list[tuple[int, int, list[str]]] = []
    for (start, end), raw in zip(bounds, raw_claims, strict=True):
        key = (raw.get("id"), raw.get("model"))
        if key not in updates:
            continue
        status = raw.get("status")
        if status not in ("golden", "does-not-generalise"):
            continue
        update = updates[key]
        target = "value" if status == "golden" else "measured"
        new = {target: update["measured_value"], "measured_how": update["measured_how"]}
        if update.get("texts_sha256"):
            new["texts_sha256"] = update["texts_sha256"]
        block = lines[start:end]
        kept: list[str] = []
        for line in block:
            m = re.match(r"^\s*([A-Za-z_]+)\s*=", line)
            if m and m.group(1) in (target, "measured_how", "pending", "texts_sha256"):
                continue  # dropped and re-added below
            kept.append(line)
        # insert after the last non-blank, non-comment line of the claim's own keys
        at = len(kept)
        while at > 0 and (not kept[at - 1].strip() or kept[at - 1].lstrip().startswith("#")):
            at -= 1
        inserted = [f"{k} = {toml_value(v)}\n" for k, v in new.items()]
        edits.append((start, end, kept[:at] + inserted + kept[at:]))
        changed.append(f"{key[0]}[{before.get('pair', {}).get('name', '?')}:{key[1]}]")
    for start, end, replacement in sorted(edits, reverse=True):
        lines[start:end] = replacement
    new_text = "".join(lines)
    try:
        after = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError as exc:
        raise ClaimsFileError(
            file, None, None, f"cannot regenerate (is a value, measured or measured_how spread over several lines?): {exc}"
        ) from None
    # nothing but the regenerated keys of the regenerated claims may differ
    if {k: v for k, v in before.items() if k != "claim"} != {k: v for k, v in after.items() if k != "claim"}:
        raise ClaimsFileError(file, None, None, "regeneration would change the [pair] table; nothing written")
    for old, new_raw in zip(before["claim"], after["claim"], strict=True):
        strip = _REGEN_KEYS if (old.get("id"), old.get("model")) in updates and old.get("status") in ("golden", "does-not-generalise") else ()
        if {k: v for k, v in old.items() if k not in strip} != {k: v for k, v in new_raw.items() if k not in strip}:
            raise ClaimsFileError(file, old.get("id"), None, "regeneration would change a report-derived key; nothing written")
        if old.get("status") == "does-not-generalise" and old.get("value") != new_raw.get("value"):
            raise ClaimsFileError(file, old.get("id"), "value", "the report's value of a does-not-generalise claim is never rewritten")
    if new_text != text:
        from drope_check.report import atomic_write_text

        atomic_write_text(file, new_text)
    return changed


def measured_how_text(measurements: Mapping[str, Any], claim: Claim, origin: str = "") -> str:
    """How, where and with what settings a golden was measured, from the measurements' provenance."""
    tool = measurements.get("tool") or {}
    env = measurements.get("environment") or {}
    texts = measurements.get("texts") or {}
    roles = ("rope", "drope") if claim.model == "pair" else (claim.model,)
    models = []
    for role in roles:
        model = (measurements.get("models") or {}).get(role) or {}
        prov = model.get("provenance") or {}
        ident = prov.get("model_id", "?")
        rev = prov.get("revision") or prov.get("weights_sha256")
        if isinstance(rev, Mapping):
            rev = ",".join(f"{k}:{str(v)[:12]}" for k, v in sorted(rev.items()))
        elif isinstance(rev, str):
            rev = rev[:12]
        models.append(
            f"{role}={ident}{'@' + str(rev) if rev else ''} variant {model.get('variant', '?')}, dtype "
            f"{prov.get('dtype', '?')}, attention {prov.get('attention_path', '?')}, {prov.get('n_tokens', '?')} tokens"
        )
    protocol = json.dumps(measurements.get("protocol", {}), sort_keys=True, separators=(",", ":"))
    where = ", ".join(f"{k} {env[k]}" for k in ("device", "gpu", "platform") if k in env)
    libs = ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "transformers") if k in env)
    via = f" from {origin}" if origin else ""
    return (
        f"drope_check {tool.get('version', '?')} `pytest claims/ --pair {claim.pair} --regen-expected`{via}, "
        f"measured {measurements.get('created', '?')} on {where or '?'} ({libs}); "
        f"{'; '.join(models)}; texts {texts.get('name', '?')} n={texts.get('n_texts', '?')} "
        f"sha256 {str(texts.get('sha256', '?'))[:12]}; protocol {protocol}"
    )


def regen_verdict(claim: Claim, measurements: Mapping[str, Any], measured_how: str) -> Verdict:
    """Under ``--regen-expected``: the value to record for a golden or does-not-generalise claim.

    Pending claims are measured too (that is the point of regenerating). The outcome is
    ``regenerated``; for a does-not-generalise claim the reason says whether the report's claim
    still fails on this pair (as recorded) or now holds (then its status must change by hand).
    """
    if claim.status not in ("golden", "does-not-generalise"):
        raise ValueError(f"{claim.key}: only goldens and does-not-generalise claims are regenerated")
    try:
        measured = _measure(claim, measurements)
    except MetricPathError as exc:
        return _base_verdict(claim, outcome="error", reason=str(exc))
    verdict = _base_verdict(claim, measured=measured, outcome="regenerated", measured_how=measured_how,
                            command=claim.regen_command(),
                            texts_sha256=(measurements.get("texts") or {}).get("sha256"))
    if claim.status == "golden":
        verdict.reason = f"golden regenerated: {fmt(measured)} (was {fmt(claim.value)})"
        return verdict
    assert claim.band is not None
    result = claim.band.check(measured, claim.value)
    verdict.passed, verdict.margin, verdict.margin_text = result.passed, result.margin, result.margin_text
    if result.passed:
        verdict.reason = (
            f"recorded measured value {fmt(measured)}; WARNING: the report's claim now HOLDS on {claim.pair} "
            f"({result.margin_text}): change its status to \"claim\" in {Path(claim.source_file).name}"
        )
    else:
        verdict.reason = f"recorded measured value {fmt(measured)}: still does not generalise ({result.margin_text})"
    return verdict

