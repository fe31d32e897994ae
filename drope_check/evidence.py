"""The evidence table of the claims report: one row per claim, one column per evidence source.

The table a reviewer reads first: for each claim of the report (``id`` and model), the report's
value, what the author's committed files say (value, commit, verdict), and what this suite
measured on each pair it ran (on the report's pair, or why not; on an embedded pair, the golden or
"does not generalise"). Skips are not repeated in the cells: each distinct skip reason is one
group (``S1``, ``S2``, ...) listed once with its count and claim ids (:func:`skip_groups`), and a
cell names its group.

Pure functions of the report document (:func:`drope_check.report.build_report`); no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from drope_check.bands import fmt
from drope_check.evidence_spec import AUTHOR_FILES, SUITE

__all__ = ["EvidenceRow", "SkipGroup", "evidence_rows", "render_evidence_table", "render_skip_groups", "skip_groups"]

#: Outcomes that are grouped as "not evaluated" (the cell names the group).
GROUPED_OUTCOMES: tuple[str, ...] = ("skip", "regenerated")
_VERDICT_WORD = {
    "pass": "PASS", "fail": "FAIL", "error": "ERROR", "xpass": "XPASS (strict: fails)",
}


@dataclass(frozen=True)
class SkipGroup:
    """One distinct reason a claim was not evaluated, and the claims (verdict keys) it applies to."""

    label: str
    reason: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class EvidenceRow:
    """One claim of the report across sources: ``cells`` holds one text per column of the table."""

    claim: str  # "sink_rate_average[rope]"
    report_value: str
    cells: tuple[str, ...]


def skip_groups(verdicts: Iterable[Mapping[str, Any]]) -> list[SkipGroup]:
    """Skipped verdicts grouped by reason, in the order each reason first appears."""
    grouped: dict[str, list[str]] = {}
    for v in verdicts:
        if v.get("outcome") in GROUPED_OUTCOMES:
            grouped.setdefault(str(v.get("reason") or "no reason given (a bug: report it)"), []).append(v["key"])
    return [SkipGroup(f"S{i}", reason, tuple(keys)) for i, (reason, keys) in enumerate(grouped.items(), start=1)]


def _group_of(groups: Sequence[SkipGroup]) -> dict[str, str]:
    return {key: g.label for g in groups for key in g.keys}


def _short_commit(commits: Any) -> str:
    return ", ".join(c.strip()[:7] for c in str(commits).split(",")) if commits else "?"


def _author_cell(v: Mapping[str, Any] | None, group: Mapping[str, str]) -> str:
    if v is None:
        return "—"
    outcome = v["outcome"]
    if outcome in GROUPED_OUTCOMES:
        return f"not judged [{group.get(v['key'], '?')}]"
    if outcome == "prose-only":
        near = [n for n in (v.get("nearest") or []) if n.get("value") is not None]
        shown = "; ".join(f"{fmt(n['value'])} ({n.get('protocol', '?')} @{_short_commit(n.get('commit'))})" for n in near)
        return "**prose only**: no committed number" + (f"; nearest {shown}" if shown else "")
    if outcome == "xfail":
        word = "contradicted by the files (xfail)"
    else:
        word = _VERDICT_WORD.get(outcome, outcome)
    if v.get("measured") is None:
        return word
    return f"{fmt(v['measured'])} @{_short_commit(v.get('source_commit'))} ({v.get('source_protocol') or '?'}): {word}"


def _suite_cell(v: Mapping[str, Any] | None, group: Mapping[str, str]) -> str:
    if v is None:
        return "—"
    outcome = v["outcome"]
    if outcome in GROUPED_OUTCOMES:
        return f"not run [{group.get(v['key'], '?')}]"
    if outcome == "xfail":
        return f"does not generalise: {fmt(v['measured'])}"
    if outcome == "error":
        return "ERROR (see Failures)"
    golden = f" (golden {fmt(v['expected'])})" if v.get("status") == "golden" else ""
    return f"{fmt(v['measured'])}{golden}: {_VERDICT_WORD.get(outcome, outcome)}"


def _report_value(vs: Sequence[Mapping[str, Any]]) -> str:
    for v in vs:
        if v.get("status") in ("claim", "does-not-generalise") and v.get("expected") is not None:
            return fmt(v["expected"])
    return "—"


def evidence_rows(doc: Mapping[str, Any]) -> tuple[list[str], list[EvidenceRow], list[SkipGroup]]:
    """``(columns, rows, skip groups)`` of the evidence table of a report document.

    Columns: the claim, the report's value, the author's files, then this suite on each pair of
    the report (in the order of ``doc["pairs"]``). A row per ``(claim id, model)``, in the order
    of the verdicts (the report's pair first where its name sorts first).
    """
    verdicts: list[Mapping[str, Any]] = list(doc.get("verdicts") or [])
    groups = skip_groups(verdicts)
    group = _group_of(groups)
    pairs = list(doc.get("pairs") or {})
    by_claim: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for v in verdicts:
        by_claim.setdefault((v["id"], v["model"]), []).append(v)
    columns = ["claim", "report", "author's files"] + [f"this suite on {p}" for p in pairs]
    rows = []
    for (cid, model), vs in by_claim.items():
        author = next((v for v in vs if v.get("source") == AUTHOR_FILES), None)
        suite = {v["pair"]: v for v in vs if v.get("source", SUITE) == SUITE}
        cells = (_author_cell(author, group), *(_suite_cell(suite.get(p), group) for p in pairs))
        rows.append(EvidenceRow(f"{cid}[{model}]", _report_value(vs), cells))
    return columns, rows, groups


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_evidence_table(doc: Mapping[str, Any]) -> list[str]:
    """The ``## Evidence`` section (markdown lines); empty when the report has no verdicts."""
    columns, rows, groups = evidence_rows(doc)
    if not rows:
        return []
    lines = [
        "## Evidence",
        "",
        "Each claim of the report against every source: the author's committed result files (read at the "
        "commit and under the protocol each value came from; \"prose only\" when no committed file holds the "
        "number) and this suite's own measurement on each pair. `[S#]`: not evaluated, for the reason listed "
        "under \"Skipped claims\".",
        "",
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c) for c in (row.claim, row.report_value, *row.cells)) + " |")
    lines.append("")
    return lines


def render_skip_groups(groups: Sequence[SkipGroup]) -> list[str]:
    """The ``## Skipped claims`` section: one line per distinct reason, its count and claim ids."""
    if not groups:
        return []
    lines = ["## Skipped claims", "", "Not evaluated: one line per distinct reason, with its count and the claims it applies to.", ""]
    for g in groups:
        lines.append(f"- **{g.label}** ({len(g.keys)}): {g.reason} — {', '.join(g.keys)}")
    lines.append("")
    return lines
