"""The tolerance report: ``claims-report.md``, ``claims-report.json`` and per-layer plots.

A reviewer reads this without opening the code: for every claim, the report's sentence, what this
suite measured, the report's value, the band and why it is that wide, the verdict (with the reason
for every skip and expected failure), and where the report's number came from. A summary table
comes first. Every file is written atomically (a temporary file in the same folder, then
``os.replace``), so a crash never leaves a half-written report.

:func:`drope_check.report.merge.judge_file` evaluates a measurements JSON made elsewhere (``drope-check judge m.json --pair
NAME``) and writes the same report as a ``pytest claims/ --claims-report DIR`` run.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drope_check import __version__
from drope_check.atomic import atomic_write_bytes, atomic_write_text
from drope_check.claims.bands import fmt
from drope_check.claims.claim_file import FAMILIES, MODELS, Claim, ClaimSet
from drope_check.claims.evidence_spec import SOURCES
from drope_check.claims.verdicts import Verdict, value_text
from drope_check.errors import UserError, count_and_names
from drope_check.file_mode import output_mode
from drope_check.report.evidence import (
    family_rank,
    family_title,
    render_evidence_table,
    render_skip_groups,
    skip_groups,
)

__all__ = [
    "ACROSS_FAMILIES",
    "OUTCOMES",
    "PLOT_SERIES",
    "OverlayLine",
    "build_report",
    "overlay_figure",
    "overlay_lines",
    "pair_info",
    "plot_marks",
    "render_markdown",
    "sort_verdicts",
    "summary_counts",
    "terminal_lines",
    "write_report",
]

REPORT_SCHEMA_VERSION = 1
OUTCOMES: tuple[str, ...] = ("pass", "fail", "artefact", "xfail", "xpass", "error", "prose-only", "skip", "regenerated")
OUTCOME_LABEL = {
    "pass": "PASS", "fail": "FAIL", "artefact": "artefact (xfail: expected)", "xfail": "does not generalise (xfail)",
    "xpass": "XPASS (strict: fails)",
    "error": "ERROR", "prose-only": "prose only (finding)", "skip": "skip", "regenerated": "regenerated",
}
#: Per-layer series plotted for both models: (key in ``layers``, axis label, log scale?).
PLOT_SERIES: tuple[tuple[str, str, bool], ...] = (
    ("bos_norm", "BOS residual norm ||x_0||", True),
    ("entropy", "matrix entropy H (nats, uncentred)", True),
    ("sink_rate", "sink rate (fraction of heads, score >= tau)", False),
)
_MODEL_COLOURS = {"rope": "tab:blue", "drope": "tab:orange"}
#: The across-families plots: a colour per family, a line style per model.
_FAMILY_COLOURS = {"llama2-7b": "tab:blue", "smollm2-135m": "tab:green", "gemma3-270m": "tab:red"}
_ROLE_STYLES = {"rope": "-", "drope": "--"}
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
        if claim.status not in ("claim", "artefact", "does-not-generalise") or claim.model == "pair" or claim.value is None:
            continue
        base = {"model": claim.model, "claim": claim.key}
        if claim.plot is not None:
            if "layer" in claim.plot and isinstance(claim.value, (int, float)):
                marks.append({**base, "series": claim.plot["series"], "kind": "point",
                              "layer": claim.plot["layer"], "value": claim.value})
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
            marks.append({**base, "series": name, "kind": "span", "start": step[1], "stop": step[2],
                          "lo": claim.value[0], "hi": claim.value[1]})
    return marks


def sort_verdicts(verdicts: Iterable[Verdict | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Verdict dicts in a fixed order (pair, family, position in the claim file): serial and xdist agree."""
    dicts = [v.to_dict() if isinstance(v, Verdict) else dict(v) for v in verdicts]

    def key(v: Mapping[str, Any]) -> tuple[Any, ...]:
        fam = FAMILIES.index(v["family"]) if v.get("family") in FAMILIES else len(FAMILIES)
        mod = MODELS.index(v["model"]) if v.get("model") in MODELS else len(MODELS)
        src = v.get("source", "suite")
        return (v.get("pair", ""), fam, v.get("order") or 0, v.get("id", ""), mod,
                SOURCES.index(src) if src in SOURCES else len(SOURCES))

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
        "marks": {name: list((marks or {}).get(name, [])) for name in sorted(set(pairs) | set(author_files or {}))},
        "verdicts": ordered,
    }


# ----------------------------------------------------------------------------------------------
# markdown


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _outcome_text(v: Mapping[str, Any]) -> str:
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
            "- environment: " + ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "transformers", "device", "gpu") if k in env)
        )
    for role, model in (info.get("models") or {}).items():
        prov = model.get("provenance") or {}
        ident = prov.get("model_id", "?")
        rev = prov.get("revision")
        shown = ", ".join(
            f"{k} {prov[k]}" for k in ("dtype", "attention_path", "attention_type", "device", "n_sequences", "n_tokens")
            if k in prov
        )
        lines.append(f"- {role}: {ident}{'@' + str(rev) if rev else ''} (variant {model.get('variant')}); {shown}")
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
            notes.append(f"{role}: loaded with --allow-incomplete-weights although its tensors do not match the model: "
                         f"{count_and_names(prov['incomplete_weights'])}")
        beyond = prov.get("positions_beyond_training")
        if beyond:
            what = ("a RoPE model measured at rotary positions it was never trained on" if model.get("variant") == "rope"
                    else "no rotary: the length experiment DroPE is about")
            notes.append(f"{role}: sequences of up to {beyond['longest_sequence']} tokens exceed max_position_embeddings "
                         f"{beyond['max_position_embeddings']} ({what})")
    return notes


def render_markdown(doc: Mapping[str, Any], plots: Mapping[str, Sequence[str]] | None = None) -> str:
    """``claims-report.md``: summary table, pairs and plots, findings, skips with reasons, every claim."""
    plots = plots or {}
    verdicts: list[Mapping[str, Any]] = doc["verdicts"]
    counts = doc["summary"]
    out = [
        "# Claims report: \"Massive Activations in DroPE\" re-measured",
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
            f"{_cell(v['band'])} | {_cell(_outcome_text(v))} |"
        )
    out += ["", "## Pairs", ""]
    for name, info in doc["pairs"].items():
        out += _pair_section(name, info, plots.get(name, ()))
    for name, info in (doc.get("author_files") or {}).items():
        out += _pair_section(f"{name}: the report author's committed files", info, plots.get(f"{name}:author-files", ()))
    if plots.get(ACROSS_FAMILIES):
        out += ["### Across model families", "",
                "Each per-layer series that exists on several families, the families overlaid on a depth axis "
                "(layer / (n_layers - 1): the first layer at 0, the last at 1). Solid: RoPE; dashed: DroPE.", ""]
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
    listing("Does not generalise", ("xfail",),
            "Findings, not failures: the report's claim measurably does not hold on this pair (or, for the "
            "author-files source, the author's own files contradict it); each test is a strict xfail that turns "
            "red if the claim starts to hold.")
    listing("Artefacts", ("artefact",),
            "Findings, not failures: the claim file explains the report's value as an artefact of upstream's choices "
            "(its cause named), and a faithful measurement does not reproduce it; each test is a non-strict xfail. "
            "A claim of this kind that holds is listed under its PASS with \"holds without the artefact\".")
    listing("Prose only", ("prose-only",),
            "Findings: no committed result of the report's author holds these numbers; the nearest committed "
            "numbers, with their commits and protocols.")
    groups = skip_groups(verdicts)
    out.extend(render_skip_groups(groups))
    group_of = {key: g.label for g in groups for key in g.keys}

    out += ["## Claims", ""]
    for v in verdicts:
        out += [
            f"### {v['key']} — {_outcome_text(v)}",
            "",
            f"> {v['sentence']}",
            "",
            f"- model: {v['model']}; family: {v['family']}; status: {v['status']}",
            f"- metric: {', '.join('`' + m + '`' for m in v['metrics']) or '-'}",
            f"- measured: {value_text(v, 'measured')}",
            f"- report value: {value_text(v, 'expected')}" if v["status"] != "golden" else
            f"- golden value: {value_text(v, 'expected')}",
            f"- band: {v['band']}" + (f" — {v['margin_text']}" if v.get("margin_text") else ""),
            f"- rationale: {v['rationale']}",
            f"- provenance: {_provenance_line(v['provenance'])}",
        ]
        if v.get("source", "suite") != "suite":
            out.append(f"- source: {v['source']} @{v.get('source_commit') or '-'} ({v.get('source_protocol') or '-'})")
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


# ----------------------------------------------------------------------------------------------
# plots


def _plot_series(info: Mapping[str, Any], marks: Sequence[Mapping[str, Any]], series: str, label: str, log: bool,
                 title_suffix: str = "", line_label: str = "measured") -> bytes | None:
    models = info.get("models") or {}
    if not any(series in (m.get("layers") or {}) for m in models.values()):
        return None
    fig, ax = _new_axes()
    for role in ("rope", "drope"):
        model = models.get(role)
        if not model or series not in (model.get("layers") or {}):
            continue
        ys = model["layers"][series]
        colour = _MODEL_COLOURS[role]
        ax.plot(range(len(ys)), ys, marker=".", color=colour, label=f"{role} ({model.get('variant')}) {line_label}")
        n = len(ys)
        for mark in marks:
            if mark["series"] != series or mark["model"] != role:
                continue
            if mark["kind"] == "point":
                layer = mark["layer"] + n if mark["layer"] < 0 else mark["layer"]
                ax.plot([layer], [mark["value"]], marker="*", markersize=13, linestyle="none", color=colour,
                        markeredgecolor="black", label=f"{role} report: {fmt(mark['value'])} @ L{layer}")
            else:
                start = mark["start"] or 0
                start = start + n if start < 0 else start
                stop = n if mark["stop"] is None else (mark["stop"] + n if mark["stop"] < 0 else mark["stop"])
                ax.fill_between([start, stop - 1], [mark["lo"]] * 2, [mark["hi"]] * 2, color=colour, alpha=0.18,
                                label=f"{role} report: L{start}-{stop - 1} in [{fmt(mark['lo'])}, {fmt(mark['hi'])}]")
    _finish_axes(ax, "layer (output of decoder block l)", label, f"{info.get('pair', '')}: {series}{title_suffix}", log)
    return _png(fig)


def _new_axes() -> tuple[Any, Any]:
    """One per-layer plot's figure (Agg canvas, no pyplot state) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _finish_axes(ax: Any, xlabel: str, ylabel: str, title: str, log: bool) -> None:
    """Labels, title, grid and legend of a per-layer plot; a log y axis where the series spans decades."""
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


@dataclass(frozen=True)
class OverlayLine:
    """One model's per-layer series on the across-families plot, on a depth axis.

    ``depth[i] = i / (n - 1)`` for layer ``i`` of an ``n``-layer model (the series holds one value
    per decoder layer), so that layer 0 is 0 and the last layer 1 whatever the depth: the phases of
    a 32-layer Llama, a 30-layer SmolLM2 and an 18-layer Gemma 3 line up where they are at the same
    relative depth, not at the same layer index."""

    pair: str
    source: str  # "this suite" or "author's files"
    role: str  # "rope" or "drope"
    variant: Any
    depth: tuple[float, ...]
    values: tuple[float, ...]

    @property
    def label(self) -> str:
        return f"{family_title(self.pair)} {self.role} ({self.variant}), {self.source}"


def overlay_lines(doc: Mapping[str, Any], series: str) -> list[OverlayLine]:
    """The lines of the across-families plot of ``series``: per family (in the evidence table's
    column order) its measured models, then the author's per-layer arrays; empty unless the series
    exists on at least two model families."""
    sources = [(name, "this suite", info) for name, info in doc["pairs"].items() if info.get("available", True)]
    sources += [(name, "author's files", info) for name, info in (doc.get("author_files") or {}).items()]
    lines = []
    for pair, source, info in sorted(sources, key=lambda s: family_rank(s[0])):  # stable: suite, then author's files
        for role in ("rope", "drope"):
            model = (info.get("models") or {}).get(role)
            ys = ((model or {}).get("layers") or {}).get(series)
            if not ys:
                continue
            n = len(ys)
            depth = tuple(i / (n - 1) if n > 1 else 0.0 for i in range(n))
            values = tuple(math.nan if y is None else float(y) for y in ys)
            lines.append(OverlayLine(pair, source, role, model.get("variant"), depth, values))
    return lines if len({line.pair for line in lines}) >= 2 else []


def overlay_figure(series: str, label: str, log: bool, lines: Sequence[OverlayLine]) -> Any:
    """The across-families plot of ``series`` (a matplotlib Figure on the Agg canvas): one line per
    :class:`OverlayLine`, its x the relative depth; colour per family, solid RoPE, dashed DroPE."""
    fig, ax = _new_axes()
    for line in lines:
        ax.plot(line.depth, line.values, marker="." if line.source == "this suite" else "x", markersize=4,
                color=_FAMILY_COLOURS.get(line.pair), linestyle=_ROLE_STYLES.get(line.role, ":"), label=line.label)
    _finish_axes(ax, "relative depth: layer / (n_layers - 1)", label, f"{series} across model families", log)
    return fig


def write_plots(doc: Mapping[str, Any], report_dir: str | Path) -> dict[str, list[str]]:
    """``<pair>-<series>.png`` for each measured pair and series, ``<pair>-author-files-<series>.png``
    for the author's arrays, and ``families-<series>.png`` for each series on several model families
    (:func:`overlay_lines`); returns the file names per pair (the overlays under :data:`ACROSS_FAMILIES`)."""
    written: dict[str, list[str]] = {}
    for name, info in doc["pairs"].items():
        if not info.get("available", True) or not info.get("models"):
            continue
        for series, label, log in PLOT_SERIES:
            png = _plot_series(info, doc["marks"].get(name, []), series, label, log)
            if png is None:
                continue
            file = f"{name}-{series}.png"
            atomic_write_bytes(Path(report_dir) / file, png)
            written.setdefault(name, []).append(file)
    for name, info in (doc.get("author_files") or {}).items():  # the author's per-layer arrays, report values marked
        for series, label, log in PLOT_SERIES:
            png = _plot_series(info, doc["marks"].get(name, []), series, label, log,
                               title_suffix=" (the author's committed files)", line_label="author's files")
            if png is None:
                continue
            file = f"{name}-author-files-{series}.png"
            atomic_write_bytes(Path(report_dir) / file, png)
            written.setdefault(f"{name}:author-files", []).append(file)
    for series, label, log in PLOT_SERIES:
        lines = overlay_lines(doc, series)
        if not lines:
            continue
        file = f"families-{series}.png"
        atomic_write_bytes(Path(report_dir) / file, _png(overlay_figure(series, label, log, lines)))
        written.setdefault(ACROSS_FAMILIES, []).append(file)
    return written


class ReportWriteError(UserError, OSError):
    """The report could not be written (a full disk, a folder that went away); nothing of it was left."""


def write_report(doc: Mapping[str, Any], report_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write plots, ``claims-report.json`` and ``claims-report.md`` into ``report_dir``, all or nothing.

    Every file is first written into a temporary folder inside ``report_dir`` (same file system),
    and only when all of them are complete are they renamed into place: a full disk or a folder
    that cannot be written leaves the previous report (or none) and no partial file, and raises
    :class:`ReportWriteError` naming the folder and the cause."""
    import shutil
    import tempfile

    folder = Path(report_dir)
    staging: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".claims-report.", dir=folder))
        plot_files = write_plots(doc, staging) if plots else {}
        names = [f for files in plot_files.values() for f in files]
        atomic_write_text(staging / "claims-report.json", json.dumps(doc, indent=1, sort_keys=True) + "\n")
        from drope_check.audit.render import report_section

        markdown = "\n".join([render_markdown(doc, plot_files).rstrip("\n"), "", *report_section(folder)]).rstrip("\n") + "\n"
        atomic_write_text(staging / "claims-report.md", markdown)
        names += ["claims-report.json", "claims-report.md"]
        for name in names:  # renames within one file system: no data is written any more
            os.chmod(staging / name, output_mode(folder / name))  # an existing file keeps its mode
            os.replace(staging / name, folder / name)
    except OSError as exc:
        raise ReportWriteError(
            f"cannot write the report into {folder} ({exc.strerror or exc}); no report file was written there: free "
            "space or choose another folder"
        ) from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return [folder / name for name in names]


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
        rows.append((v["key"], value_text(v, "measured"), value_text(v, "expected"), v["band"], _outcome_text(v)))
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



def claims_by_key(claim_set: ClaimSet) -> dict[str, Claim]:
    return {c.key: c for c in claim_set.claims}
