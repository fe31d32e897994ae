"""The generalisation table of the claims report (drope_check.generalisation)."""

from __future__ import annotations

from drope_check.generalisation import cell_text, generalisation_table
from drope_check.report import render_markdown


def verdict(pair: str, id_: str, model: str, status: str, outcome: str, measured=None, expected=None, recorded=None):
    return {
        "key": f"{id_}[{pair}:{model}]", "pair": pair, "id": id_, "model": model, "family": "intervention",
        "status": status, "outcome": outcome, "measured": measured, "expected": expected, "recorded": recorded,
        "sentence": "s", "metrics": [], "band": "b", "rationale": "r", "provenance": {}, "margin_text": "",
    }


VERDICTS = [
    verdict("llama2-7b", "bos_mlp_ablation_ratio", "rope", "claim", "skip", expected=1249.0),
    verdict("smollm2-135m", "bos_mlp_ablation_ratio", "rope", "does-not-generalise", "xfail", measured=5.31),
    verdict("gemma3-270m", "bos_mlp_ablation_ratio", "rope", "claim", "pass", measured=412.0),
    verdict("smollm2-135m", "bos_mlp_ablation_ratio", "drope", "skip", "skip"),
    verdict("smollm2-135m", "ppl_baseline", "rope", "golden", "pass", measured=42.56, expected=42.56),
    verdict("gemma3-270m", "ppl_baseline", "rope", "golden", "skip"),
    verdict("smollm2-135m", "valley_entropy_ratio", "pair", "does-not-generalise", "skip", recorded=0.91),
]


def test_cells_say_what_each_verdict_means():
    texts = [cell_text(v) for v in VERDICTS]
    assert texts == [
        "skipped (report: 1249)",
        "5.31: does not generalise",
        "412: holds",
        "about a recalibrated DroPE: n/a",
        "42.56 (golden)",
        "golden: skipped",
        "skipped (recorded 0.91: does not generalise)",
    ]


def test_one_row_per_claim_one_column_per_family():
    lines = generalisation_table(list(reversed(VERDICTS)))  # columns in family order whatever the input order
    assert lines[0] == "## Generalisation across model families"
    header = next(line for line in lines if line.startswith("| claim |"))
    assert header == "| claim | Llama-2-7B | SmolLM2-135M | Gemma-3-270M |"
    rows = [line for line in lines if line.startswith(("| bos_", "| ppl_", "| valley_"))]
    assert rows[::-1] == [  # rows in the order the verdicts come (the report sorts them), columns by family
        "| bos_mlp_ablation_ratio[rope] | skipped (report: 1249) | 5.31: does not generalise | 412: holds |",
        "| bos_mlp_ablation_ratio[drope] | — | about a recalibrated DroPE: n/a | — |",
        "| ppl_baseline[rope] | — | 42.56 (golden) | golden: skipped |",
        "| valley_entropy_ratio[pair] | — | skipped (recorded 0.91: does not generalise) | — |",
    ]


def test_no_table_for_a_single_pair_and_the_report_embeds_it():
    assert generalisation_table([v for v in VERDICTS if v["pair"] == "smollm2-135m"]) == []
    doc = {
        "verdicts": VERDICTS, "summary": {"pass": 2, "xfail": 1, "skip": 3}, "tool": {"version": "0"},
        "pairs": {},
    }
    text = render_markdown(doc)
    assert "## Generalisation across model families" in text
    assert text.index("## Generalisation") < text.index("## Pairs")
