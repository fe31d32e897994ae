"""claims-report.md: the summary, the evidence table, one section per pair (provenance, verdicts, plots) and the audit's section."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from drope_check.claims.bands import fmt
from drope_check.claims.verdicts import value_text
from drope_check.errors import count_and_names
from drope_check.report.build import ACROSS_FAMILIES, OUTCOME_LABEL, OUTCOMES
from drope_check.report.evidence import (
    render_evidence_table,
    render_skip_groups,
    skip_groups,
)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def outcome_text(v: Mapping[str, Any]) -> str:
    """The verdict label; under ``--as-pair`` it names the models actually measured."""
    label = OUTCOME_LABEL.get(v["outcome"], v["outcome"])
    if v["outcome"] in ("xfail", "xpass") and v.get("source", "suite") != "suite":
        label = "contradicted by the author's files (xfail)" if v["outcome"] == "xfail" else label
    if v.get("measured_models"):
        label += f" (measured on {v['measured_models']})"
    return label


def _provenance_line(prov: Mapping[str, Any]) -> str:
    parts = [f"source: {prov.get('source', '?')}", f"text set: {prov.get('text_set', '?')}"]
    if "results_value" in prov:
        parts.append(f"upstream results file: {fmt(prov['results_value'])}")
    if prov.get("notes"):
        parts.append(str(prov["notes"]))
    return "; ".join(parts)


def _pair_section(name: str, info: Mapping[str, Any], plots: Sequence[str]) -> list[str]:
    lines = [f"### {name}", ""]
    if info.get("description"):
        lines += [str(info["description"]), ""]
    if not info.get("available", True):
        lines += [f"**Not measured**: {info.get('reason', '')}", ""]
        return lines
    if info.get("origin"):
        lines.append(f"- measurements: {info['origin']}")
    if info.get("created"):
        lines.append(f"- created: {info['created']}")
    texts = info.get("texts") or {}
    if texts:
        sha = f", sha256 {str(texts['sha256'])[:16]}…" if texts.get("sha256") else ""
        count = f", {texts['n_texts']} texts" if texts.get("n_texts") is not None else ""
        lines.append(
            f"- texts: {texts.get('name', '?')} ({texts.get('source', '?')}){count}, "
            f"selection {texts.get('selection', '?')}{sha}"
        )
    env = info.get("environment") or {}
    if env:
        lines.append(
            "- environment: "
            + ", ".join(
                f"{k} {env[k]}" for k in ("python", "torch", "transformers", "device", "gpu") if k in env
            )
        )
    for role, model in (info.get("models") or {}).items():
        prov = model.get("provenance") or {}
        ident = prov.get("model_id", "?")
        rev = prov.get("revision")
        shown = ", ".join(
            f"{k} {prov[k]}"
            for k in ("dtype", "attention_path", "attention_type", "device", "n_sequences", "n_tokens")
            if k in prov
        )
        lines.append(
            f"- {role}: {ident}{'@' + str(rev) if rev else ''} (variant {model.get('variant')}); {shown}"
        )
    lines += [f"- **{note}**" for note in provenance_notes(info)]
    lines.append("")
    for plot in plots:
        lines.append(f"![{plot}]({plot})")
    if plots:
        lines.append("")
    return lines


def provenance_notes(info: Mapping[str, Any]) -> list[str]:
    """What a reader must be told about how a pair's models were measured (:func:`pair_info`): weights
    loaded although their tensors did not match the model (``--allow-incomplete-weights``), and a
    RoPE model measured past its ``max_position_embeddings``. Shown in the report and the pytest
    terminal summary."""
    notes = []
    for role, model in (info.get("models") or {}).items():
        prov = model.get("provenance") or {}
        if prov.get("incomplete_weights"):
            notes.append(
                f"{role}: loaded with --allow-incomplete-weights although its tensors do not match the model: "
                f"{count_and_names(prov['incomplete_weights'])}"
            )
        beyond = prov.get("positions_beyond_training")
        if beyond:
            what = (
                "a RoPE model measured at rotary positions it was never trained on"
                if model.get("variant") == "rope"
                else "no rotary: the length experiment DroPE is about"
            )
            notes.append(
                f"{role}: sequences of up to {beyond['longest_sequence']} tokens exceed max_position_embeddings "
                f"{beyond['max_position_embeddings']} ({what})"
            )
    return notes


def render_markdown(doc: Mapping[str, Any], plots: Mapping[str, Sequence[str]] | None = None) -> str:
    """``claims-report.md``: summary table, pairs and plots, findings, skips with reasons, every claim."""
    plots = plots or {}
    verdicts: list[Mapping[str, Any]] = doc["verdicts"]
    counts = doc["summary"]
    out = [
        '# Claims report: "Massive Activations in DroPE" re-measured',
        "",
        f"Generated by drope_check {doc['tool']['version']}. Pairs: {', '.join(doc['pairs']) or 'none'}. "
        "Each claim: the report's value, this suite's measurement, the tolerance band and why it is that "
        "wide, the verdict, and where the report's number came from.",
        "",
        "Verdicts: " + ", ".join(f"{OUTCOME_LABEL[o]} {counts[o]}" for o in OUTCOMES if counts.get(o)),
        "",
        *render_evidence_table(doc),
        "## Summary",
        "",
        "| claim | measured | expected (report; golden) | band | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for v in verdicts:
        out.append(
            f"| {_cell(v['key'])} | {_cell(value_text(v, 'measured'))} | {_cell(value_text(v, 'expected'))} | "
            f"{_cell(v['band'])} | {_cell(outcome_text(v))} |"
        )
    out += ["", "## Pairs", ""]
    for name, info in doc["pairs"].items():
        out += _pair_section(name, info, plots.get(name, ()))
    for name, info in (doc.get("author_files") or {}).items():
        out += _pair_section(
            f"{name}: the report author's committed files", info, plots.get(f"{name}:author-files", ())
        )
    if plots.get(ACROSS_FAMILIES):
        out += [
            "### Across model families",
            "",
            "Each per-layer series that exists on several families, the families overlaid on a depth axis "
            "(layer / (n_layers - 1): the first layer at 0, the last at 1). Solid: RoPE; dashed: DroPE.",
            "",
        ]
        out += [f"![{plot}]({plot})" for plot in plots[ACROSS_FAMILIES]] + [""]

    def listing(title: str, outcomes: tuple[str, ...], intro: str) -> None:
        chosen = [v for v in verdicts if v["outcome"] in outcomes]
        if not chosen:
            return
        out.extend([f"## {title}", "", intro, ""])
        for v in chosen:
            out.append(f"- **{v['key']}**: {v.get('reason') or v.get('margin_text') or ''}")
        out.append("")

    listing("Failures", ("fail", "error", "xpass"), "Claims that do not hold (or could not be evaluated).")
    listing(
        "Does not generalise",
        ("xfail",),
        "Findings, not failures: the report's claim measurably does not hold on this pair (or, for the "
        "author-files source, the author's own files contradict it); each test is a strict xfail that turns "
        "red if the claim starts to hold.",
    )
    listing(
        "Artefacts",
        ("artefact",),
        "Findings, not failures: the claim file explains the report's value as an artefact of upstream's choices "
        "(its cause named), and a faithful measurement does not reproduce it; each test is a non-strict xfail. "
        'A claim of this kind that holds is listed under its PASS with "holds without the artefact".',
    )
    listing(
        "Prose only",
        ("prose-only",),
        "Findings: no committed result of the report's author holds these numbers; the nearest committed "
        "numbers, with their commits and protocols.",
    )
    groups = skip_groups(verdicts)
    out.extend(render_skip_groups(groups))
    group_of = {key: g.label for g in groups for key in g.keys}

    out += ["## Claims", ""]
    for v in verdicts:
        out += [
            f"### {v['key']} — {outcome_text(v)}",
            "",
            f"> {v['sentence']}",
            "",
            f"- model: {v['model']}; family: {v['family']}; status: {v['status']}",
            f"- metric: {', '.join('`' + m + '`' for m in v['metrics']) or '-'}",
            f"- measured: {value_text(v, 'measured')}",
            f"- report value: {value_text(v, 'expected')}"
            if v["status"] != "golden"
            else f"- golden value: {value_text(v, 'expected')}",
            f"- band: {v['band']}" + (f" — {v['margin_text']}" if v.get("margin_text") else ""),
            f"- rationale: {v['rationale']}",
            f"- provenance: {_provenance_line(v['provenance'])}",
        ]
        if v.get("source", "suite") != "suite":
            out.append(
                f"- source: {v['source']} @{v.get('source_commit') or '-'} ({v.get('source_protocol') or '-'})"
            )
        if v.get("suite_only"):
            out.append(f"- the author's files: suite only (no test of that source): {v['suite_only']}")
        if v.get("measured_how"):
            out.append(f"- measured how: {v['measured_how']}")
        if v.get("recorded") is not None:
            out.append(f"- recorded measurement on this pair: {value_text(v, 'recorded')}")
        if v["key"] in group_of:  # the reason is listed once, under "Skipped claims"
            out.append(f"- verdict: not evaluated [{group_of[v['key']]}] (see Skipped claims)")
        elif v.get("reason"):
            out.append(f"- verdict: {v['reason']}")
        if v["outcome"] in ("fail", "xpass", "error") and v.get("command"):
            out.append(f"- rerun: `{v['command']}`")
        out.append("")
    return "\n".join(out)
