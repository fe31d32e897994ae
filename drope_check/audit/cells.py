"""Claims judged under a variant: one cell per claim and variant, a golden's change from the suite's value, and the robustness verdict per claim (see :mod:`drope_check.audit.run`)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from drope_check.audit.author import (
    UPSTREAM_VARIANT,
    AuthorFiles,
    agreement,
    author_cell,
    author_reading,
)
from drope_check.audit.variants import Variant
from drope_check.claims import api as claims
from drope_check.engine.protocol import Protocol

ROBUST = "robust"
FRAGILE = "fragile"
UPSTREAM_ONLY = "holds only under upstream's choices"
NOT_EVALUATED = "not evaluated"
#: Status of a variant that was not measured: GPU-only without a GPU, or no models here at all.
SKIPPED = "skipped"
NOT_MEASURED = "not measured"

#: Metric-path rewrites under ``spike_rule = "max-write"``: the claims name the argmax-ratio rule.
SPIKE_ALIASES = (
    ("bos_mlp_ablation:argmax-ratio", "bos_mlp_ablation:max-write"),
    ("bos_spike_layer_argmax_ratio", "bos_spike_layer_max_write"),
)


_INTERVENTION_RE = re.compile(r"interventions\.([A-Za-z_]+:[A-Za-z0-9_-]+)")


def _alias(path: str, protocols: Mapping[str, Protocol]) -> str:
    root = path.partition(":")[0]
    protocol = protocols.get(root)
    if protocol is not None and protocol.spike_rule == "max-write":
        for old, new in SPIKE_ALIASES:
            path = path.replace(old, new)
    return path


def claim_under(claim: Any, protocols: Mapping[str, Protocol]) -> Any:
    """``claim`` with its metric paths read under the variant's spike rule (per model)."""
    metrics = tuple(_alias(m, protocols) for m in claim.metrics)
    return claim if metrics == tuple(claim.metrics) else dataclasses.replace(claim, metrics=metrics)


#: Why a Methods statement has no cell under any variant.
AUTHOR_ONLY_NOTE = "a statement about the author's method: judged on the author's files only"


def evaluated(claim: Any) -> bool:
    """Whether the suite's measurement judges ``claim`` (not pending, not skipped, not a Methods statement)."""
    return claim.has_suite_test and claims.pending_reason(claim) is None


def needed_interventions(claim_set: Any, role: str, protocol: Protocol) -> tuple[str, ...]:
    """The interventions the evaluated claims read on ``role`` under ``protocol`` (none if none does)."""
    from drope_check.engine import eager_probe

    names: set[str] = set()
    for claim in claim_set.claims:
        if not evaluated(claim):
            continue
        for path in claim_under(claim, {role: protocol}).metrics:
            if path.partition(":")[0] == role:
                names.update(_INTERVENTION_RE.findall(path))
                if any(f"scalars.{field}" in path for field in eager_probe.FIELDS):
                    names.add(eager_probe.EAGER_FP16)
    from drope_check.engine.interventions import INTERVENTIONS

    return tuple(n for n in (*INTERVENTIONS, eager_probe.EAGER_FP16) if n in names)


def _cell(claim: Any, doc: Mapping[str, Any], protocols: Mapping[str, Protocol]) -> dict[str, Any]:
    """Value (and holds, for a report value or comparison) of one claim in one variant's measurements.

    The claim is judged as a plain claim on these measurements: in the audit the protocol differs
    from the suite's on purpose, so the protocol (and text set) a golden records is not asked for
    here -- a golden's verdict is replaced by the change from ``suite`` instead.
    """
    neutral = dataclasses.replace(
        claim_under(claim, protocols), status="claim", texts_sha256=None, protocol=None, pending=False
    )
    verdict = claims.verdict_for(neutral, doc)
    if verdict.outcome == "error":
        return {"value": None, "error": verdict.reason}
    if verdict.outcome not in ("pass", "fail"):
        return {"value": None, "note": verdict.reason or verdict.outcome}
    cell: dict[str, Any] = {"value": _json(verdict.measured)}
    if neutral.metrics != tuple(claim.metrics):
        cell["read"] = list(neutral.metrics)
    if claim.status != "golden":
        cell["holds"] = bool(verdict.passed)
        cell["margin"] = verdict.margin_text
    return cell


def _change(value: Any, suite: Any) -> Any:
    if isinstance(value, list) and isinstance(suite, list) and len(value) == len(suite):
        diffs = [a - b for a, b in zip(value, suite, strict=True) if a is not None and b is not None]
        return max(diffs, key=abs) if diffs else None
    if isinstance(value, (int, float)) and isinstance(suite, (int, float)):
        return value - suite
    return None


def _fill_golden(claim: Any, cells: dict[str, dict[str, Any]]) -> None:
    suite = cells.get("suite", {}).get("value")
    for name, cell in cells.items():
        value = cell.get("value")
        if value is None or suite is None:
            continue
        cell["change"] = _change(value, suite)
        if name != "suite":
            cell["moved"] = not claim.band.check(value, suite).passed


def robustness(
    claim: Any, cells: Mapping[str, Mapping[str, Any]], variants: Mapping[str, Variant]
) -> dict[str, Any]:
    """The robustness verdict of one claim from its cells (see the module docstring)."""
    if not evaluated(claim):
        return {
            "verdict": NOT_EVALUATED,
            "variants": [],
            "text": f"not evaluated: {claims.pending_reason(claim) or AUTHOR_ONLY_NOTE}",
        }
    suite = cells.get("suite", {})
    if suite.get("value") is None:
        return {
            "verdict": NOT_EVALUATED,
            "variants": [],
            "text": f"no suite value: {suite.get('error') or suite.get('note') or 'not measured'}",
        }
    order = [n for n in variants if n in cells] + [n for n in cells if n not in variants]
    judged = {n: cells[n] for n in order if cells[n].get("value") is not None}
    unjudged = sorted(n for n, c in cells.items() if c.get("value") is None and not c.get("skipped"))
    tail = f" (no value under {', '.join(unjudged)})" if unjudged else ""
    if claim.status == "golden":
        moved = [n for n, c in judged.items() if c.get("moved")]
        if not moved:
            return {
                "verdict": ROBUST,
                "variants": [],
                "text": f"stays within its band of the suite's value under every variant{tail}",
            }
        return {
            "verdict": FRAGILE,
            "variants": moved,
            "text": f"leaves its band of the suite's value under {', '.join(moved)}{tail}",
        }
    base = suite["holds"]
    flips = [n for n, c in judged.items() if c["holds"] != base]
    if not flips:
        return {
            "verdict": ROBUST,
            "variants": [],
            "text": f"{'holds' if base else 'fails'} under every variant{tail}",
        }
    holds_under = [n for n, c in judged.items() if c["holds"]]
    if not base and holds_under and all(variants[n].upstream_choice for n in holds_under):
        return {
            "verdict": UPSTREAM_ONLY,
            "variants": holds_under,
            "text": f"fails under suite, holds only under upstream's choices: {', '.join(holds_under)}{tail}",
        }
    return {
        "verdict": FRAGILE,
        "variants": flips,
        "text": f"{'holds' if base else 'fails'} under suite, {'fails' if base else 'holds'} under {', '.join(flips)}{tail}",
    }


def _unmeasured_cell(state: Mapping[str, Any]) -> dict[str, Any]:
    """The cell of a variant with no measurements: skipped (GPU only) or not measured (no models here)."""
    note = f"not measured: {state['reason']}" if state["status"] == NOT_MEASURED else state["reason"]
    return {"value": None, "skipped": True, "status": state["status"], "note": note}


def not_measured(audit: Mapping[str, Any]) -> dict[str, list[str]]:
    """The variants an audit could not measure here (no models), grouped by reason: ``reason -> names``
    in variant order. audit.md, the claims report and the terminal summary each say a reason once."""
    groups: dict[str, list[str]] = {}
    for v in audit["variants"]:
        if v.get("status") == NOT_MEASURED:
            groups.setdefault(str(v.get("reason")), []).append(v["name"])
    return groups


def _upstream_at(
    claim: Any,
    reading: Any,
    cells: Mapping[str, Mapping[str, Any]],
    docs: Mapping[str, Any],
    protocols: Mapping[str, Mapping[str, Protocol]],
) -> Mapping[str, Any] | None:
    """The ``upstream`` variant's cell for ``reading`` (the claim at the author's paths), or None without the variant."""
    if UPSTREAM_VARIANT not in cells:
        return None
    if reading is claim or UPSTREAM_VARIANT not in docs or not evaluated(claim):
        return cells[UPSTREAM_VARIANT]
    return _cell(reading, docs[UPSTREAM_VARIANT], protocols[UPSTREAM_VARIANT])


def audit_rows(
    claim_set: Any,
    variants: Sequence[Variant],
    docs: Mapping[str, Mapping[str, Any]],
    status: Mapping[str, Mapping[str, Any]],
    protocols: Mapping[str, Mapping[str, Protocol]],
    author_files: AuthorFiles | None = None,
) -> list[dict[str, Any]]:
    """One row per claim: a cell per variant (from ``docs``, the measurements of each measured variant),
    its robustness verdict, and with ``author_files`` the ``author-files`` cell and the reproduction
    verdict (:mod:`drope_check.audit.author`), kept apart from the variant cells."""
    rows = []
    for claim in claim_set.claims:
        cells: dict[str, dict[str, Any]] = {}
        for v in variants:
            if v.name not in docs:
                cells[v.name] = _unmeasured_cell(status[v.name])
            elif evaluated(claim):
                cells[v.name] = _cell(claim, docs[v.name], protocols[v.name])
            else:
                cells[v.name] = {"value": None, "note": claims.pending_reason(claim) or AUTHOR_ONLY_NOTE}
        if evaluated(claim) and claim.status == "golden":
            _fill_golden(claim, cells)
        row = {
            "key": claim.key,
            "id": claim.id,
            "model": claim.model,
            "family": claim.family,
            "status": claim.status,
            "sentence": claim.sentence,
            "expected": _json(claim.value),
            "band": claim.band_text(),
            "kind": "not evaluated"
            if not evaluated(claim)
            else ("golden" if claim.status == "golden" else "verdict"),
            "cells": cells,
            "robustness": robustness(claim, cells, {v.name: v for v in variants}),
        }
        if author_files is not None:
            row["author_files"] = author_cell(claim, author_files)
            reading = author_reading(claim)
            upstream = _upstream_at(claim, reading, cells, docs, protocols)
            row["reproduction"] = agreement(claim, upstream, row["author_files"])
            if reading is not claim:
                row["reproduction"]["read"] = list(reading.metrics)
            if upstream is not None and upstream.get("value") is not None:
                row["reproduction"]["suite_value"] = upstream["value"]
        rows.append(row)
    return rows


def _json(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (list, tuple)):
        return [_json(v) for v in x]
    return x
