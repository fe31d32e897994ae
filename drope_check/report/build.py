"""The claims report as data: each pair's measurements and plot marks, the verdicts sorted and counted,
as the one record ``claims-report.json`` holds (:func:`build_report`; pure, no I/O).

A reviewer reads the report without opening the code: for every claim, the report's sentence, what this
suite measured, the report's value, the band and why it is that wide, the verdict (with the reason
for every skip and expected failure), and where the report's number came from. Rendering:
:mod:`drope_check.report.markdown`, :mod:`drope_check.report.plots`; writing, all files atomically:
:mod:`drope_check.report.write`. :func:`drope_check.report.merge.judge_file` evaluates a measurements
JSON made elsewhere (``drope-check judge m.json --pair NAME``) and writes the same report as a
``pytest claims/ --claims-report DIR`` run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from drope_check import __version__
from drope_check.claims.claim_file import FAMILIES, MODELS, Claim, ClaimSet
from drope_check.claims.evidence_spec import SOURCES
from drope_check.claims.verdicts import Verdict
from drope_check.engine.metric_table import METRICS

__all__ = [
    "ACROSS_FAMILIES",
    "OUTCOMES",
    "PLOT_SERIES",
    "build_report",
    "pair_info",
    "plot_marks",
    "sort_verdicts",
    "summary_counts",
]

REPORT_SCHEMA_VERSION = 1
OUTCOMES: tuple[str, ...] = (
    "pass",
    "fail",
    "artefact",
    "xfail",
    "xpass",
    "error",
    "prose-only",
    "skip",
    "regenerated",
)
OUTCOME_LABEL = {
    "pass": "PASS",
    "fail": "FAIL",
    "artefact": "artefact (xfail: expected)",
    "xfail": "does not generalise (xfail)",
    "xpass": "XPASS (strict: fails)",
    "error": "ERROR",
    "prose-only": "prose only (finding)",
    "skip": "skip",
    "regenerated": "regenerated",
}
#: Per-layer series plotted for both models: (key in ``layers``, axis label, log scale?), the table's plotted series.
PLOT_SERIES: tuple[tuple[str, str, bool], ...] = tuple(
    (m.name, m.plot, m.log) for m in METRICS if m.kind == "series" and m.plot is not None
)
#: The key of the across-families plots in :func:`write_plots`' result (not a pair name: it has a space).
ACROSS_FAMILIES = "across families"


# ----------------------------------------------------------------------------------------------
# inputs of the report


def pair_info(
    pair: str,
    measurements: Mapping[str, Any] | None = None,
    claim_set: ClaimSet | None = None,
    available: bool = True,
    reason: str = "",
    origin: str = "",
) -> dict[str, Any]:
    """What the report says about one pair: where its measurements came from and the per-layer series.

    Only stable fields are copied (no wall-clock seconds), so that the same measurements give the
    same report whether the claims ran serially or under xdist.
    """
    info: dict[str, Any] = {"pair": pair, "available": available, "reason": reason, "origin": origin}
    if claim_set is not None:
        info["description"] = claim_set.description
        info["drope_variant"] = claim_set.drope_variant
        info["run_hint"] = claim_set.run_hint
        info["claims_file"] = Path(claim_set.path).name
    if measurements is None:
        return info
    for key in ("created", "tool", "texts", "environment", "protocol"):
        if key in measurements:
            info[key] = measurements[key]
    models: dict[str, Any] = {}
    for role, model in (measurements.get("models") or {}).items():
        if not isinstance(model, Mapping):
            continue
        prov = {k: v for k, v in (model.get("provenance") or {}).items() if k != "seconds"}
        layers = model.get("layers") or {}
        models[role] = {
            "variant": model.get("variant"),
            "n_layers": model.get("n_layers"),
            "n_heads": model.get("n_heads"),
            "provenance": prov,
            "layers": {key: layers[key] for key, _, _ in PLOT_SERIES if key in layers},
        }
    info["models"] = models
    return info


def plot_marks(claim_set: ClaimSet) -> list[dict[str, Any]]:
    """The report's values to mark on the per-layer plots, derived from the claims.

    A claim on ``layers.<series>[i]`` marks a point, one on ``layers.<series>[a:b]`` with a
    ``[lo, hi]`` value marks a shaded span, and a ``plot = {series, layer}`` table marks a scalar
    (e.g. the peak BOS norm at its layer). Only report-derived values (status ``claim``, ``artefact`` or
    ``does-not-generalise``) are marked: goldens are this suite's own numbers.
    """
    marks: list[dict[str, Any]] = []
    for claim in claim_set.claims:
        if (
            claim.status not in ("claim", "artefact", "does-not-generalise")
            or claim.model == "pair"
            or claim.value is None
        ):
            continue
        base = {"model": claim.model, "claim": claim.key}
        if claim.plot is not None:
            if "layer" in claim.plot and isinstance(claim.value, (int, float)):
                marks.append(
                    {
                        **base,
                        "series": claim.plot["series"],
                        "kind": "point",
                        "layer": claim.plot["layer"],
                        "value": claim.value,
                    }
                )
            continue
        if not claim.metrics:
            continue
        series = claim.parsed_metrics[0].layer_series()
        if series is None:
            continue
        name, step = series
        if step[0] == "index" and isinstance(claim.value, (int, float)):
            marks.append({**base, "series": name, "kind": "point", "layer": step[1], "value": claim.value})
        elif step[0] == "slice" and isinstance(claim.value, list) and len(claim.value) == 2:
            marks.append(
                {
                    **base,
                    "series": name,
                    "kind": "span",
                    "start": step[1],
                    "stop": step[2],
                    "lo": claim.value[0],
                    "hi": claim.value[1],
                }
            )
    return marks


def sort_verdicts(verdicts: Iterable[Verdict | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Verdict dicts in a fixed order (pair, family, position in the claim file): serial and xdist agree."""
    dicts = [v.to_dict() if isinstance(v, Verdict) else dict(v) for v in verdicts]

    def key(v: Mapping[str, Any]) -> tuple[Any, ...]:
        fam = FAMILIES.index(v["family"]) if v.get("family") in FAMILIES else len(FAMILIES)
        mod = MODELS.index(v["model"]) if v.get("model") in MODELS else len(MODELS)
        src = v.get("source", "suite")
        return (
            v.get("pair", ""),
            fam,
            v.get("order") or 0,
            v.get("id", ""),
            mod,
            SOURCES.index(src) if src in SOURCES else len(SOURCES),
        )

    unique = {d["key"]: d for d in dicts}
    return sorted(unique.values(), key=key)


def summary_counts(verdicts: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = Counter(v.get("outcome", "skip") for v in verdicts)
    return {o: counts.get(o, 0) for o in OUTCOMES}


def build_report(
    verdicts: Iterable[Verdict | Mapping[str, Any]],
    pairs: Mapping[str, Mapping[str, Any]],
    marks: Mapping[str, list[dict[str, Any]]] | None = None,
    author_files: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON document of the report (also the input of :func:`render_markdown`).

    ``author_files``: pair -> :func:`pair_info` of the author's committed files (the per-layer
    arrays plotted next to the report's values), for pairs judged against them."""
    ordered = sort_verdicts(verdicts)
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "tool": {"name": "drope_check", "version": __version__},
        "summary": summary_counts(ordered),
        "pairs": {name: dict(pairs[name]) for name in sorted(pairs)},
        "author_files": {name: dict(info) for name, info in sorted((author_files or {}).items())},
        "marks": {
            name: list((marks or {}).get(name, [])) for name in sorted(set(pairs) | set(author_files or {}))
        },
        "verdicts": ordered,
    }


# ----------------------------------------------------------------------------------------------
# markdown


# ----------------------------------------------------------------------------------------------
# plots


def claims_by_key(claim_set: ClaimSet) -> dict[str, Claim]:
    return {c.key: c for c in claim_set.claims}
