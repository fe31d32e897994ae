"""What the terminal shows of a claims run: one line per claim outside PASS, the counts, and the pairs no claim was checked on."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from drope_check.claims.verdicts import value_text
from drope_check.report.build import OUTCOME_LABEL, OUTCOMES, summary_counts
from drope_check.report.markdown import (
    outcome_text,
)


def terminal_lines(verdicts: Sequence[Mapping[str, Any]], width: int = 120) -> list[str]:
    """The terminal summary: one row per claim (measured / expected / band / verdict), skips grouped."""
    if not verdicts:
        return []
    rows = [("claim", "measured", "expected", "band", "verdict")]
    grouped_skips: Counter[str] = Counter()
    for v in verdicts:
        if v["outcome"] == "skip":
            grouped_skips[v.get("reason", "")] += 1
            continue
        rows.append(
            (v["key"], value_text(v, "measured"), value_text(v, "expected"), v["band"], outcome_text(v))
        )
    lines: list[str] = []
    if len(rows) > 1:
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        band_w = max(36, width - sum(widths[i] for i in (0, 1, 2, 4)) - 12)
        widths[3] = min(widths[3], band_w)
        for r in rows:
            band = r[3] if len(r[3]) <= widths[3] else r[3][: widths[3] - 1] + "…"
            cells = (r[0], r[1], r[2], band, r[4])
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    counts = summary_counts(verdicts)
    lines.append("claims: " + ", ".join(f"{counts[o]} {OUTCOME_LABEL[o]}" for o in OUTCOMES if counts[o]))
    for reason, n in sorted(grouped_skips.items()):
        lines.append(f"skipped ({n}): {reason}")
    return lines


#: Outcomes that mean a claim was actually compared with a measured value.
EVALUATED_OUTCOMES: tuple[str, ...] = ("pass", "fail", "artefact", "xfail", "xpass", "prose-only")


def unchecked_pair_lines(verdicts: Iterable[Mapping[str, Any]], available: Iterable[str]) -> list[str]:
    """A loud line for each measured (available) pair of which no claim was evaluated at all.

    "1 pass, 31 skip" on another text set used to look green; a pair that checked nothing says so.
    """
    by_pair: dict[str, Counter[str]] = {}
    for v in verdicts:
        by_pair.setdefault(v["pair"], Counter())[v["outcome"]] += 1
    lines = []
    for pair in sorted(set(available) & set(by_pair)):
        counts = by_pair[pair]
        if not any(counts[o] for o in EVALUATED_OUTCOMES):
            total = sum(counts.values())
            lines.append(
                f"WARNING: pair {pair}: NOTHING WAS CHECKED: 0 of {total} claims evaluated "
                f"({', '.join(f'{n} {o}' for o, n in sorted(counts.items()))}); see the skip reasons above, "
                "and use --strict to make this a failure"
            )
    return lines
