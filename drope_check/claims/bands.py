"""Tolerance bands: how far a measured value may land from an expected one, and by how much it did.

Pure: numbers in, :class:`BandResult` out; no files, no measurements.

Bands (``band.kind``)
---------------------
``absolute`` ``tol``: ``|m - v| <= tol``. ``relative`` ``rel``: ``|m - v| <= rel * |v|``.
``log_ratio`` ``factor`` (> 1): ``|ln(m / v)| <= ln(factor)``, for quantities spanning orders of
magnitude. ``one_sided`` ``op`` (``>=``, ``>``, ``<=``, ``<``) and ``bound``: ``m op bound``.
``exact``: ``m == v`` (layer indices). ``equals``: ``m == v`` for a fact written as text (what the
author's code did, e.g. ``"raw q_proj/k_proj outputs"``): the report's Methods statements are judged
this way; every path of the claim must read exactly that text. ``range`` ``lo``, ``hi``: every value of ``m`` (a scalar or a
per-layer slice) in ``[lo, hi]``. ``ordering`` ``op`` (+ optional ``factor``): two paths a, b with
``a op factor * b``. ``each`` ``ops``, ``bounds``: one one-sided bound per path, all must hold.
With a list ``value`` the ``absolute`` / ``relative`` / ``log_ratio`` / ``exact`` bands compare
element by element (a per-layer golden) and every element must pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from drope_check.numbers import first_non_finite, flatten

__all__ = ["BAND_KINDS", "EDGE_SLACK", "ONE_SIDED_OPS", "Band", "BandResult", "fmt", "index_ranges"]

BAND_KINDS: tuple[str, ...] = (
    "absolute",
    "relative",
    "log_ratio",
    "one_sided",
    "exact",
    "range",
    "ordering",
    "each",
    "equals",
)
ONE_SIDED_OPS: tuple[str, ...] = (">=", ">", "<=", "<")


# ----------------------------------------------------------------------------------------------
# formatting


def fmt(x: Any, digits: int = 4, ratio: bool = False) -> str:
    """A short human form of a number or list of numbers (lists of > 6 items are summarised).

    ``ratio``: the number is a ratio and is written as the report writes ratios, with an ``x`` and
    at least two decimals below 100 (``1.00x``, ``6.70x``, ``1.015x``, ``1249x``); a bare ``1``
    would read as a count. Non-finite values keep their plain form.
    """
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if ratio and isinstance(x, (int, float)):
        return _ratio_text(float(x), digits)
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
    if isinstance(x, str):
        return x
    if isinstance(x, (list, tuple)) and any(
        isinstance(v, str) for v in x
    ):  # text facts: each distinct one once
        return " / ".join(dict.fromkeys(fmt(v) for v in x))
    if isinstance(x, (list, tuple)):
        flat = flatten(x)
        if len(flat) > 6:
            return (
                f"[{fmt(min(flat), digits, ratio)} .. {fmt(max(flat), digits, ratio)}] ({len(flat)} values)"
            )
        return "[" + ", ".join(fmt(v, digits, ratio) for v in x) + "]"
    return str(x)


def _ratio_text(x: float, digits: int) -> str:
    text = fmt(x, digits)
    if not math.isfinite(x):
        return text
    if "e" not in text and abs(x) < 100:
        whole, _, frac = text.partition(".")
        text = f"{whole}.{frac.ljust(2, '0')}"
    return text + "x"


def index_ranges(indices: Sequence[int]) -> str:
    """Indices written compactly, sorted, each once: ``[2, 3, 4, 5, 9]`` -> ``"2-5, 9"`` (a run of
    consecutive indices as ``a-b``, two included: ``[4, 5]`` -> ``"4-5"``)."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


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
    #: Element by element bands (``range``, ``one_sided``, and ``absolute`` / ``relative`` /
    #: ``log_ratio`` / ``exact`` against a value): the positions, in the flattened measured values, of
    #: those outside the band (empty when all are inside, or when the values were not compared one by
    #: one: a non-finite or non-positive value refused first, a length mismatch).
    outside: tuple[int, ...] = ()
    #: The position of the worst value (the one :attr:`margin` is about), where there is one.
    worst_at: int | None = None


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
        if k == "equals":
            return f"m is {value!r}"
        if k == "range":
            return f"every value in [{fmt(p['lo'])}, {fmt(p['hi'])}]"
        if k == "ordering":
            a, b = (list(names) + ["a", "b"])[:2]
            factor = p.get("factor", 1.0)
            rhs = b if factor == 1 else f"{fmt(factor)} * {b}"
            return f"{a} {p['op']} {rhs}"
        if k == "each":
            shown = list(names) or [f"m{i}" for i in range(len(p["ops"]))]
            return " and ".join(
                f"{n} {op} {fmt(b)}" for n, op, b in zip(shown, p["ops"], p["bounds"], strict=True)
            )
        return k  # pragma: no cover - kinds are validated on load

    def check(self, measured: Any, value: Any) -> BandResult:
        """Whether ``measured`` lies in the band around ``value``, and by how much (see :class:`BandResult`)."""
        result = self._check(measured, value)
        if result.passed and result.margin is not None and result.margin < 0:  # inside by float slack only
            return replace(
                result,
                margin=0.0,
                margin_text=result.margin_text.replace(f"by {fmt(abs(result.margin))}", "by 0", 1),
            )
        return result

    def _check(self, measured: Any, value: Any) -> BandResult:
        if self.kind == "equals":
            texts = measured if isinstance(measured, (list, tuple)) else [measured]
            wrong = [t for t in texts if t != value]
            if wrong:
                return BandResult(False, None, f"differs: {wrong[0]!r} is not {value!r}")
            return BandResult(True, None, "the same")
        # A non-finite value is never inside a band, whatever its kind: inf would make the edge
        # slack infinite and pass an absolute band; inf > b passes an ordering. Refuse it first.
        bad = first_non_finite(measured)
        if bad is not None:
            return BandResult(
                False, None, f"measured value is {fmt(bad)}: a non-finite value is never inside a band"
            )
        if value is not None and self.kind not in ("one_sided", "range", "ordering", "each"):
            bad = first_non_finite(value)
            if bad is not None:
                return BandResult(False, None, f"expected value is {fmt(bad)}: a band around it is undefined")
        k, p = self.kind, self.params
        if k in ("ordering", "each"):
            values = [float(v) for v in measured]
            if k == "ordering":
                a, b = values[0], values[1] * float(p.get("factor", 1.0))
                margin = _op_margin(a, p["op"], b)
                ok = _op_holds(a, p["op"], b)
                return BandResult(ok, margin, _margin_text(ok, margin, ""))
            margins = [
                _op_margin(v, op, float(bd)) for v, op, bd in zip(values, p["ops"], p["bounds"], strict=True)
            ]
            ok = all(
                _op_holds(v, op, float(bd)) for v, op, bd in zip(values, p["ops"], p["bounds"], strict=True)
            )
            worst = min(margins)
            return BandResult(ok, worst, _margin_text(ok, worst, " (worst of the bounds)"))
        flat_m = flatten(measured)
        if k == "range":
            margins = [min(v - p["lo"], p["hi"] - v) for v in flat_m]
            inside = [_le(p["lo"], v) and _le(v, p["hi"]) for v in flat_m]
            return _elementwise(inside, margins, lambda ok, worst, _i: _margin_text(ok, worst, ""))
        if k == "one_sided":
            margins = [_op_margin(v, p["op"], float(p["bound"])) for v in flat_m]
            inside = [_op_holds(v, p["op"], float(p["bound"])) for v in flat_m]
            return _elementwise(inside, margins, lambda ok, worst, _i: _margin_text(ok, worst, ""))
        flat_v = flatten(value)
        if len(flat_v) == 1 and len(flat_m) > 1:
            flat_v = flat_v * len(flat_m)
        if len(flat_v) != len(flat_m):
            return BandResult(False, None, f"measured has {len(flat_m)} values, expected {len(flat_v)}")
        pairs = list(zip(flat_m, flat_v, strict=True))
        if k == "exact":
            diffs = [abs(m - v) for m, v in pairs]
            return _elementwise(
                [d == 0 for d in diffs],
                [-d for d in diffs],
                lambda ok, _margin, i: "equal" if ok else f"off by {fmt(diffs[i])}",
                diffs,
            )
        if k == "absolute":
            diffs = [abs(m - v) for m, v in pairs]
            return _elementwise(
                [_le(d, p["tol"]) for d in diffs],
                [p["tol"] - d for d in diffs],
                lambda ok, margin, i: _margin_text(ok, margin, f" (|m - v| = {fmt(diffs[i])})"),
                diffs,
            )
        if k == "relative":
            diffs = [abs(m - v) / abs(v) for m, v in pairs]
            return _elementwise(
                [_le(d, p["rel"]) for d in diffs],
                [p["rel"] - d for d in diffs],
                lambda ok, margin, i: _margin_text(
                    ok, margin, f" of v (|m - v| / |v| = {diffs[i]:.3g})", pct=True
                ),
                diffs,
            )
        if k == "log_ratio":
            if any(m <= 0 for m in flat_m):
                return BandResult(False, None, "measured <= 0: a log-ratio band is undefined there")
            diffs = [abs(math.log(m / v)) for m, v in pairs]
            bound = math.log(p["factor"])
            return _elementwise(
                [_le(d, bound) for d in diffs],
                [bound - d for d in diffs],
                lambda ok, margin, i: _margin_text(
                    ok, margin, f" in ln units (m / v off by x{math.exp(diffs[i]):.3g})"
                ),
                diffs,
            )
        raise AssertionError(k)  # pragma: no cover


#: Slack on inclusive band edges, so that a value printed exactly at an edge (0.978 + 0.03) is inside.
EDGE_SLACK = 1e-9


def _le(a: float, b: float) -> bool:
    """``a <= b`` up to :data:`EDGE_SLACK` relative (float representation of the band's edges)."""
    return a <= b + EDGE_SLACK * max(abs(a), abs(b), 1e-300)


def _elementwise(
    inside: Sequence[bool], margins: Sequence[float], text: Any, diffs: Sequence[float] | None = None
) -> BandResult:
    """The result of a band judged value by value: passed when every value is ``inside``; the
    margin is the worst (smallest) of ``margins``, at position ``i`` (the largest of ``diffs`` when
    the margins are ``bound - diff``: the same value, and the diff a tie in rounding would not pick),
    worded by ``text(passed, margin, i)``; ``outside`` lists the positions of the values not inside."""
    if diffs is None:
        worst_at = min(range(len(margins)), key=margins.__getitem__)
    else:
        worst_at = max(range(len(diffs)), key=diffs.__getitem__)
    ok = all(inside)
    worst = margins[worst_at]
    outside = tuple(i for i, good in enumerate(inside) if not good)
    return BandResult(ok, worst, text(ok, worst, worst_at), outside=outside, worst_at=worst_at)


def _margin_text(ok: bool, margin: float, suffix: str, pct: bool = False) -> str:
    amount = f"{abs(margin) * 100:.3g} points" if pct else fmt(abs(margin))
    return f"{'inside' if ok else 'outside'} by {amount}{suffix}"
