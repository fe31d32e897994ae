"""The generalisation table of the claims report: one row per report claim, one column per model family.

Why: the report's statements are about RoPE LLMs but were measured on one model (Llama-2-7B). The
suite asks the same claim ids of every pair it judges (``expected/<pair>.toml``); this table puts
the answers side by side, so a reader sees at once which statements are about Llama-2 and which
hold for other families. Each cell is the measured value with what it means:

* ``holds`` / ``does not hold``: a ``claim`` record judged on that pair;
* ``does not generalise``: a strict-xfail record (the statement measurably does not hold there);
* ``golden``: a regression value measured by this suite (the report's number is about another model);
* ``about a recalibrated DroPE: n/a``: a ``skip`` record of a zero-shot pair;
* ``skipped (report: X)``: not judged in this run (e.g. Llama-2-7B without a GPU, or a measurement
  on another text set than the recorded value's); the report's own value, or the value recorded on
  that pair, is shown, and the reason is listed under "Skipped claims".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from drope_check.bands import fmt

#: Column titles: the model family of each registered pair (others are shown by pair name).
FAMILY_TITLES = {"llama2-7b": "Llama-2-7B", "smollm2-135m": "SmolLM2-135M", "gemma3-270m": "Gemma-3-270M"}


def cell_text(v: Mapping[str, Any]) -> str:
    """What one verdict says in the table."""
    status, outcome = v.get("status"), v.get("outcome")
    measured = v.get("measured")
    if status == "skip":
        return "about a recalibrated DroPE: n/a"
    if outcome == "skip":  # the reason is in the report's "Skipped claims" list
        if status == "golden":
            return "golden: skipped"
        if status == "does-not-generalise" and v.get("recorded") is not None:
            return f"skipped (recorded {fmt(v['recorded'])}: does not generalise)"
        return f"skipped (report: {fmt(v.get('expected'))})"
    shown = fmt(measured if measured is not None else v.get("recorded"))
    if status == "golden":
        return f"{shown} (golden{'' if outcome == 'pass' else ': ' + str(outcome)})"
    if outcome == "xfail":
        return f"{shown}: does not generalise"
    if outcome == "xpass":
        return f"{shown}: now holds (strict xfail)"
    if outcome == "pass":
        return f"{shown}: holds"
    if outcome == "fail":
        return f"{shown}: does not hold"
    return f"{shown}: {outcome}"


def generalisation_table(verdicts: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines of the table (empty when fewer than two pairs were judged)."""
    seen = list(dict.fromkeys(v["pair"] for v in verdicts if v.get("pair")))
    pairs = [p for p in FAMILY_TITLES if p in seen] + [p for p in seen if p not in FAMILY_TITLES]
    if len(pairs) < 2:
        return []
    rows: dict[str, dict[str, Mapping[str, Any]]] = {}
    sentences: dict[str, str] = {}
    for v in verdicts:
        row = f"{v['id']}[{v['model']}]"
        rows.setdefault(row, {})[v["pair"]] = v
        sentences.setdefault(row, str(v.get("sentence", "")))
    titles = [FAMILY_TITLES.get(p, p) for p in pairs]
    out = [
        "## Generalisation across model families",
        "",
        "One row per report claim, one column per family (the same claim id judged on each pair). "
        "Goldens are this suite's regression values: the report's number is about Llama-2-7B.",
        "",
        "| claim | " + " | ".join(titles) + " |",
        "| --- |" + " --- |" * len(pairs),
    ]
    for row, by_pair in rows.items():
        cells = [cell_text(by_pair[p]) if p in by_pair else "—" for p in pairs]
        out.append(f"| {row} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    out.append("")
    return out
