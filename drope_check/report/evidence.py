"""The evidence table of the claims report: one row per report claim, one column per model family and source.

The table a reviewer reads first. The report's statements are about RoPE LLMs but were measured on
one model (Llama-2-7B); the suite asks the same claim ids of every pair it judges
(``expected/<pair>.toml``). One row per claim (``id`` and model side), the report's value, then per
model family (Llama-2-7B, SmolLM2-135M, Gemma-3-270M, then any other pair by name):

* for a pair judged against the report author's committed files, an ``author's files`` column:
  the value, the commit it was read at and its protocol, and the verdict (``PASS``, ``contradicted
  by the files (xfail)``, ``prose only`` with the nearest committed numbers, or ``suite only`` with
  what the files hold and why that cannot judge the claim);
* a ``this suite`` column: the measured value and what it means: ``holds`` / ``does not hold`` (a
  report claim judged on that pair), ``does not generalise`` (a strict xfail: the statement
  measurably does not hold there), ``golden`` (this suite's regression value: the report's number
  is about another model), ``about a recalibrated DroPE: n/a`` (a zero-shot pair cannot test it).

Claims that were not evaluated are not explained in their cells: each distinct reason is one group
(``S1``, ``S2``, ...) listed once with its count and claim ids (:func:`skip_groups`), and a cell
names its group (``not run [S1]``), with the value recorded on that pair where there is one.

Pure functions of the report document (:func:`drope_check.report.build.build_report`); no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from drope_check.claims.bands import fmt
from drope_check.claims.claim_file import AUTHOR_FILES_ONLY_FAMILIES, RECALIBRATED_SKIP
from drope_check.claims.evidence_spec import AUTHOR_FILES, SUITE
from drope_check.claims.metric_paths import MetricPathError, parse_path
from drope_check.claims.verdicts import value_text
from drope_check.models.pairs import PAIRS

__all__ = [
    "EvidenceRow",
    "SkipGroup",
    "evidence_rows",
    "family_rank",
    "family_title",
    "render_evidence_table",
    "render_skip_groups",
    "skip_groups",
]

#: Outcomes that are grouped as "not evaluated" (the cell names the group).
GROUPED_OUTCOMES: tuple[str, ...] = ("skip", "regenerated")
_VERDICT_WORD = {
    "pass": "PASS",
    "fail": "FAIL",
    "error": "ERROR",
    "xpass": "XPASS (strict: fails)",
}


@dataclass(frozen=True)
class SkipGroup:
    """One distinct reason a claim was not evaluated, and the claims (verdict keys) it applies to."""

    label: str
    reason: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class EvidenceRow:
    """One claim of the report across families and sources: ``cells`` holds one text per source column."""

    claim: str  # "sink_rate_average[rope]"
    report_value: str
    cells: tuple[str, ...]


def family_title(pair: str) -> str:
    """The model family a pair measures (``Llama-2-7B``), or the pair's name for an unregistered pair; a further
    variant of a pair judged into the same report (``llama2-7b@4bit-nf4``, :mod:`drope_check.report.merge`) adds it."""
    base, _, variant = pair.partition("@")
    title = PAIRS[base].family_title if base in PAIRS else base
    return f"{title} ({variant})" if variant else title


def family_rank(pair: str) -> int:
    """Where a pair's family stands in the table's columns (and the plots' legends): registered first, a
    pair's further variants right after it."""
    base = pair.partition("@")[0]
    return list(PAIRS).index(base) if base in PAIRS else len(PAIRS)


def _table_order(verdicts: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Verdicts in the order the table reads them: the report's pair first (families in column
    order), each pair in its claim file's order (stable: sources in the order given)."""
    return sorted(
        verdicts, key=lambda v: (family_rank(v.get("pair", "")), v.get("pair", ""), v.get("order") or 0)
    )


def skip_groups(verdicts: Iterable[Mapping[str, Any]]) -> list[SkipGroup]:
    """Skipped verdicts grouped by reason, numbered in the order a reader of the table meets them
    (:func:`_table_order`), each group's claims in that order too."""
    grouped: dict[str, list[str]] = {}
    for v in _table_order(verdicts):
        if v.get("outcome") in GROUPED_OUTCOMES:
            grouped.setdefault(str(v.get("reason") or "no reason given (a bug: report it)"), []).append(
                v["key"]
            )
    return [
        SkipGroup(f"S{i}", reason, tuple(keys)) for i, (reason, keys) in enumerate(grouped.items(), start=1)
    ]


def _short_commit(commits: Any) -> str:
    return ", ".join(c.strip()[:7] for c in str(commits).split(",")) if commits else "?"


def _path_is_ratio(path: Any) -> bool:
    try:
        return parse_path(str(path)).is_ratio
    except MetricPathError:
        return False


def _author_cell(v: Mapping[str, Any] | None, suite_only: str | None, group: Mapping[str, str]) -> str:
    if v is None:
        # suite_only: no test of this source; the files hold something, but nothing that judges the claim
        return f"suite only: {suite_only}" if suite_only else "—"
    outcome = v["outcome"]
    if outcome in GROUPED_OUTCOMES:
        return f"not judged [{group.get(v['key'], '?')}]"
    if outcome == "prose-only":
        items = [n for n in (v.get("nearest") or []) if n.get("value") is not None]

        def shown(chosen: list[Mapping[str, Any]], after: str = "") -> str:
            return "; ".join(
                f"{fmt(n['value'], ratio=_path_is_ratio(n.get('path')))} "
                f"({n.get('protocol', '?')} @{_short_commit(n.get('commit'))}{after})"
                for n in chosen
            )

        near, later = (
            shown([n for n in items if not n.get("later")]),
            shown([n for n in items if n.get("later")], ", committed after the report"),
        )
        return (
            "**prose only**: no committed number"
            + (f"; nearest {near}" if near else "")
            + (f"; later, not the source: {later}" if later else "")
        )
    word = "contradicted by the files (xfail)" if outcome == "xfail" else _VERDICT_WORD.get(outcome, outcome)
    if v.get("measured") is None:
        return word
    return (
        f"{value_text(v, 'measured')} @{_short_commit(v.get('source_commit'))} "
        f"({v.get('source_protocol') or '?'}): {word}"
    )


def _suite_cell(v: Mapping[str, Any] | None, report_value: str, group: Mapping[str, str]) -> str:
    """What this suite says about one claim on one pair."""
    if v is None:
        return "—"
    status, outcome = v.get("status"), v["outcome"]
    label = group.get(v["key"], "?")
    if outcome in GROUPED_OUTCOMES:
        if status == "skip" and RECALIBRATED_SKIP in str(v.get("reason") or ""):
            return f"about a recalibrated DroPE: n/a [{label}]"
        word = "regenerated" if outcome == "regenerated" else "not run"
        if status == "golden":
            return f"golden: {word} [{label}]"
        if status == "does-not-generalise" and v.get("recorded") is not None:
            return f"{word} [{label}] (recorded {value_text(v, 'recorded')}: does not generalise)"
        return f"{word} [{label}]"
    shown = value_text(v, "measured") if v.get("measured") is not None else value_text(v, "recorded")
    if status in ("claim", "artefact", "does-not-generalise") and v.get("expected") is not None:
        own = value_text(v, "expected")
        if own != report_value:  # this pair's claim file asks another value than the report's row shows
            shown += f" (vs {own})"
    if outcome == "error":
        return ("" if v.get("measured") is None else f"{shown}: ") + "ERROR (see Failures)"
    if status == "golden":
        return f"{shown} (golden {value_text(v, 'expected')}): {_VERDICT_WORD.get(outcome, outcome)}"
    meaning = {
        "pass": "holds",
        "fail": "does not hold",
        "xfail": "does not generalise",
        "artefact": "does not hold: the expected artefact (xfail)",
        "xpass": "now holds (XPASS: the strict xfail fails)",
    }.get(outcome, outcome)
    if outcome == "pass" and status == "artefact":
        meaning = "holds without the artefact"
    return f"{shown}: {meaning}"


def _report_value(vs: Sequence[Mapping[str, Any]]) -> str:
    for v in vs:
        if v.get("status") in ("claim", "artefact", "does-not-generalise") and v.get("expected") is not None:
            return value_text(v, "expected")
    return "—"


def _columns(doc: Mapping[str, Any], verdicts: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """``(pair, source, title)`` per source column: families in registry order (:data:`drope_check.models.pairs.PAIRS`), the
    author's files before this suite for a pair judged against them."""
    seen = list(dict.fromkeys([*(doc.get("pairs") or {}), *(v["pair"] for v in verdicts if v.get("pair"))]))
    pairs = sorted(seen, key=family_rank)  # stable: unregistered pairs in the order they appear
    with_author = {v["pair"] for v in verdicts if v.get("source") == AUTHOR_FILES or v.get("suite_only")}
    columns = []
    for pair in pairs:
        title = family_title(pair)
        if pair in with_author:
            era = ((doc.get("author_files") or {}).get(pair, {}).get("upstream") or {}).get("era")
            columns.append(
                (pair, AUTHOR_FILES, f"{title}: author's files" + (f" ({era} era)" if era else ""))
            )
        columns.append((pair, SUITE, f"{title}: this suite"))
    return columns


def evidence_rows(doc: Mapping[str, Any]) -> tuple[list[str], list[EvidenceRow], list[SkipGroup]]:
    """``(columns, rows, skip groups)`` of the evidence table of a report document.

    Columns: the claim, the report's value, then per model family (see :func:`_columns`) the
    author's files where they judge that pair and this suite. A row per ``(claim id, model)``, in
    the order of the report's pair's claim file first, then the claims only other pairs have.
    """
    verdicts: list[Mapping[str, Any]] = list(doc.get("verdicts") or [])
    groups = skip_groups(verdicts)
    group = {key: g.label for g in groups for key in g.keys}
    columns = _columns(doc, verdicts)
    by_claim: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for v in _table_order(verdicts):
        by_claim.setdefault((v["id"], v["model"]), []).append(v)
    rows = []
    for (cid, model), vs in by_claim.items():
        report_value = _report_value(vs)
        cells = []
        for pair, source, _ in columns:
            on_pair = [v for v in vs if v.get("pair") == pair]
            if source == AUTHOR_FILES:
                author = next((v for v in on_pair if v.get("source") == AUTHOR_FILES), None)
                suite_only = next((v["suite_only"] for v in on_pair if v.get("suite_only")), None)
                cells.append(_author_cell(author, suite_only, group))
            else:
                suite = next((v for v in on_pair if v.get("source", SUITE) == SUITE), None)
                if (
                    suite is None
                    and on_pair
                    and all(v.get("family") in AUTHOR_FILES_ONLY_FAMILIES for v in on_pair)
                ):
                    cells.append("n/a: a statement about the author's method (judged on the author's files)")
                else:
                    cells.append(_suite_cell(suite, report_value, group))
        rows.append(EvidenceRow(f"{cid}[{model}]", report_value, tuple(cells)))
    return ["claim", "report", *(title for _, _, title in columns)], rows, groups


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_evidence_table(doc: Mapping[str, Any]) -> list[str]:
    """The ``## Evidence`` section (markdown lines); empty when the report has no verdicts."""
    columns, rows, _ = evidence_rows(doc)
    if not rows:
        return []
    lines = [
        "## Evidence",
        "",
        "Each claim of the report against every source and model family (the same claim id judged on each "
        "pair). The author's files: their committed results, read at the commit and under the protocol each "
        'value came from ("prose only" when no committed file holds the number, "suite only" when what they '
        "hold cannot judge the claim). This suite: its own measurement and what it means — holds / does not "
        "hold; does not generalise (a strict xfail: the statement measurably does not hold on that family); "
        "golden (this suite's regression value: the report's number is about Llama-2-7B); about a "
        "recalibrated DroPE: n/a (a zero-shot pair cannot test it). `[S#]`: not evaluated, for the reason "
        'listed under "Skipped claims".',
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
    lines = [
        "## Skipped claims",
        "",
        "Not evaluated: one line per distinct reason, with its count and the claims it applies to.",
        "",
    ]
    for g in groups:
        lines.append(f"- **{g.label}** ({len(g.keys)}): {g.reason} — {', '.join(g.keys)}")
    lines.append("")
    return lines
