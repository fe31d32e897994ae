"""The ``band`` table of a claim checked against its kind: which parameters each kind takes, their
ranges, what value it needs, and how a pair claim combines its two models (the band part of the
claim-file field table, :mod:`drope_check.claims.claim_fields`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from drope_check.claims.bands import BAND_KINDS, ONE_SIDED_OPS, Band
from drope_check.numbers import flatten, is_number

__all__ = ["Err", "validate_band"]

#: ``err(key, message)``: the error to raise for ``key`` of the claim being read.
Err = Callable[[str, str], Exception]

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

#: Per band kind: its parameter checks as ``(parameter, test, wording)`` (``test`` None: any finite
#: number), and the value check ``(test of every value, wording)``.
_NUMBER_PARAMS: dict[str, tuple[tuple[str, Callable[[float], bool] | None, str], ...]] = {
    "absolute": (("tol", lambda t: t > 0, "must be > 0"),),
    "relative": (("rel", lambda t: t > 0, "must be > 0"),),
    "log_ratio": (("factor", lambda f: f > 1, "must be > 1"),),
    "one_sided": (("bound", None, ""),),
    "range": (("lo", None, ""), ("hi", None, "")),
}
_VALUE_CHECKS: dict[str, tuple[Callable[[list[Any]], bool], str]] = {
    "relative": (lambda vs: not any(v == 0 for v in vs), "a relative band needs a non-zero value"),
    "log_ratio": (lambda vs: not any(v <= 0 for v in vs), "a log_ratio band needs a positive value"),
    "exact": (
        lambda vs: all(float(v).is_integer() for v in vs),
        "an 'exact' band needs integer value(s) (layer indices)",
    ),
}


def _need_number(
    params: Mapping[str, Any],
    kind: str,
    key: str,
    err: Err,
    check: Callable[[float], bool] | None = None,
    what: str = "",
) -> None:
    if key not in params:
        raise err(f"band.{key}", f"is required for a {kind!r} band")
    if not is_number(params[key]) or not math.isfinite(params[key]):
        raise err(f"band.{key}", "must be a finite number")
    if check is not None and not check(params[key]):
        raise err(f"band.{key}", what)


def _several_metrics_band(
    kind: str, params: Mapping[str, Any], err: Err, n_metrics: int, model: str, combine: str | None
) -> None:
    """An ``ordering`` or ``each`` band: a pair claim comparing its paths, combining nothing."""
    if model != "pair" or combine is not None:
        raise err(
            "band.kind", f'a {kind!r} band compares several metrics: needs model = "pair" and no combine'
        )
    if kind == "ordering":
        if n_metrics != 2:
            raise err("metric", "an 'ordering' band needs exactly two metric paths")
        if params.get("op") not in ONE_SIDED_OPS:
            raise err("band.op", f"must be one of {', '.join(ONE_SIDED_OPS)}")
        if "factor" in params:
            _need_number(params, kind, "factor", err, lambda f: f > 0, "must be > 0")
        return
    ops, bounds = params.get("ops"), params.get("bounds")
    if not isinstance(ops, list) or not all(o in ONE_SIDED_OPS for o in ops):
        raise err("band.ops", f"must be a list of {', '.join(ONE_SIDED_OPS)}")
    if not isinstance(bounds, list) or not all(is_number(b) for b in bounds):
        raise err("band.bounds", "must be a list of numbers")
    if not (len(ops) == len(bounds) == n_metrics):
        raise err(
            "band.ops",
            f"ops ({len(ops)}), bounds ({len(bounds)}) and metric ({n_metrics}) must have the same length",
        )


def validate_band(raw: Any, err: Err, n_metrics: int, value: Any, combine: str | None, model: str) -> Band:
    """The claim's ``band`` table checked against its kind (parameters, their ranges, the value they
    need, pair claims' ``combine``) and returned as a :class:`~drope_check.claims.bands.Band`; every
    problem raised as ``err(key, message)``."""
    if not isinstance(raw, Mapping):
        raise err("band", 'must be a table, e.g. band = { kind = "absolute", tol = 0.03 }')
    kind = raw.get("kind")
    if kind not in BAND_KINDS:
        raise err("band.kind", f"must be one of {', '.join(BAND_KINDS)}, got {kind!r}")
    allowed = _BAND_KEYS[kind]
    for key in raw:
        if key != "kind" and key not in allowed:
            raise err(
                f"band.{key}",
                f"is not a parameter of a {kind!r} band (allowed: {', '.join(sorted(allowed)) or 'none'})",
            )
    params = {k: v for k, v in raw.items() if k != "kind"}
    if kind == "equals":
        if combine is not None:
            raise err("combine", "an 'equals' band compares text: it combines nothing")
        return Band(kind, params)
    if kind in ("ordering", "each"):
        _several_metrics_band(kind, params, err, n_metrics, model, combine)
        return Band(kind, params)
    if model == "pair" and combine is None:
        raise err("combine", f'a pair claim with a {kind!r} band needs combine = "ratio" or "difference"')
    if kind == "one_sided" and params.get("op") not in ONE_SIDED_OPS:
        raise err("band.op", f"must be one of {', '.join(ONE_SIDED_OPS)}")
    for key, check, what in _NUMBER_PARAMS.get(kind, ()):
        _need_number(params, kind, key, err, check, what)
    if kind in _VALUE_CHECKS and value is not None:
        test, wording = _VALUE_CHECKS[kind]
        if not test(list(flatten(value))):
            raise err("value", wording)
    if kind == "range" and params["lo"] > params["hi"]:
        raise err("band.lo", f"lo ({params['lo']}) is above hi ({params['hi']})")
    return Band(kind, params)
