"""The report's plots: per-layer series of both models of a pair with the claims' marks, and the families overlaid on relative depth."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drope_check.atomic import atomic_write_bytes
from drope_check.claims.bands import fmt
from drope_check.models.pairs import PAIRS
from drope_check.report.build import ACROSS_FAMILIES, PLOT_SERIES
from drope_check.report.evidence import (
    family_rank,
    family_title,
)

_MODEL_COLOURS = {"rope": "tab:blue", "drope": "tab:orange"}
#: The across-families plots: a colour per family, a line style per model.
_ROLE_STYLES = {"rope": "-", "drope": "--"}


def _plot_series(
    info: Mapping[str, Any],
    marks: Sequence[Mapping[str, Any]],
    series: str,
    label: str,
    log: bool,
    title_suffix: str = "",
    line_label: str = "measured",
) -> bytes | None:
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
        ax.plot(
            range(len(ys)),
            ys,
            marker=".",
            color=colour,
            label=f"{role} ({model.get('variant')}) {line_label}",
        )
        n = len(ys)
        for mark in marks:
            if mark["series"] != series or mark["model"] != role:
                continue
            if mark["kind"] == "point":
                layer = mark["layer"] + n if mark["layer"] < 0 else mark["layer"]
                ax.plot(
                    [layer],
                    [mark["value"]],
                    marker="*",
                    markersize=13,
                    linestyle="none",
                    color=colour,
                    markeredgecolor="black",
                    label=f"{role} report: {fmt(mark['value'])} @ L{layer}",
                )
            else:
                start = mark["start"] or 0
                start = start + n if start < 0 else start
                stop = n if mark["stop"] is None else (mark["stop"] + n if mark["stop"] < 0 else mark["stop"])
                ax.fill_between(
                    [start, stop - 1],
                    [mark["lo"]] * 2,
                    [mark["hi"]] * 2,
                    color=colour,
                    alpha=0.18,
                    label=f"{role} report: L{start}-{stop - 1} in [{fmt(mark['lo'])}, {fmt(mark['hi'])}]",
                )
    _finish_axes(
        ax, "layer (output of decoder block l)", label, f"{info.get('pair', '')}: {series}{title_suffix}", log
    )
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
    sources = [
        (name, "this suite", info) for name, info in doc["pairs"].items() if info.get("available", True)
    ]
    sources += [(name, "author's files", info) for name, info in (doc.get("author_files") or {}).items()]
    lines = []
    for pair, source, info in sorted(
        sources, key=lambda s: family_rank(s[0])
    ):  # stable: suite, then author's files
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
        ax.plot(
            line.depth,
            line.values,
            marker="." if line.source == "this suite" else "x",
            markersize=4,
            color=PAIRS[line.pair].colour if line.pair in PAIRS else None,
            linestyle=_ROLE_STYLES.get(line.role, ":"),
            label=line.label,
        )
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
    for name, info in (
        doc.get("author_files") or {}
    ).items():  # the author's per-layer arrays, report values marked
        for series, label, log in PLOT_SERIES:
            png = _plot_series(
                info,
                doc["marks"].get(name, []),
                series,
                label,
                log,
                title_suffix=" (the author's committed files)",
                line_label="author's files",
            )
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
