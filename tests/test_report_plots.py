"""The per-layer plots of the claims report (drope_check.report.plots.write_plots), on synthetic report documents.

Claimed: besides one plot per pair and series (and per series of the author's files), every series
that exists on at least two model families gets one overlay plot with the families overlaid on a
depth axis, x = layer / (n_layers - 1), so models of different depth line up (0 = first layer,
1 = last); a series on one family only gets none; the markdown embeds the overlays.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from drope_check.report.build import ACROSS_FAMILIES, build_report
from drope_check.report.markdown import render_markdown
from drope_check.report.plots import overlay_figure, overlay_lines, write_plots

PNG = b"\x89PNG\r\n\x1a\n"


def _model(n: int, variant: str, series: tuple[str, ...], scale: float) -> dict:
    layers = {name: [scale * (i + 1) for i in range(n)] for name in series}
    return {"variant": variant, "n_layers": n, "n_heads": 4, "provenance": {}, "layers": layers}


def _pair(pair: str, n: int, series: tuple[str, ...]) -> dict:
    return {
        "pair": pair,
        "available": True,
        "reason": "",
        "origin": "synthetic",
        "models": {"rope": _model(n, "rope", series, 1.0), "drope": _model(n, "nope-zeroshot", series, 2.0)},
    }


@pytest.fixture
def doc() -> dict:
    """Llama-2-7B (32 layers) from the author's files only, SmolLM2 (30) and Gemma 3 (18) measured;
    ``sink_rate`` only on SmolLM2; a Llama-2-7B suite pair that was not measured."""
    pairs = {
        "smollm2-135m": _pair("smollm2-135m", 30, ("bos_norm", "entropy", "sink_rate")),
        "gemma3-270m": _pair("gemma3-270m", 18, ("bos_norm", "entropy")),
        "llama2-7b": {"pair": "llama2-7b", "available": False, "reason": "no GPU", "origin": ""},
    }
    author = {"llama2-7b": _pair("llama2-7b", 32, ("bos_norm",))}
    return build_report([], pairs, author_files=author)


def test_series_on_several_families_get_one_overlay_each(doc: dict, tmp_path: Path) -> None:
    written = write_plots(doc, tmp_path)
    assert written[ACROSS_FAMILIES] == [
        "families-bos_norm.png",
        "families-entropy.png",
    ]  # sink_rate: one family
    for name in ("families-bos_norm.png", "families-entropy.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert not (tmp_path / "families-sink_rate.png").exists()
    # the per-pair plots are still there
    assert written["smollm2-135m"] == [
        "smollm2-135m-bos_norm.png",
        "smollm2-135m-entropy.png",
        "smollm2-135m-sink_rate.png",
    ]
    assert written["gemma3-270m"] == ["gemma3-270m-bos_norm.png", "gemma3-270m-entropy.png"]
    assert written["llama2-7b:author-files"] == ["llama2-7b-author-files-bos_norm.png"]
    md = render_markdown(doc, written)
    section = md[md.index("### Across model families") :]
    assert "![families-bos_norm.png](families-bos_norm.png)" in section
    assert "![families-entropy.png](families-entropy.png)" in section


def test_the_overlay_x_axis_is_the_layer_normalised_to_depth(doc: dict) -> None:
    lines = overlay_lines(doc, "bos_norm")
    assert [(ln.pair, ln.source, ln.role, len(ln.depth)) for ln in lines] == [
        ("llama2-7b", "author's files", "rope", 32),
        ("llama2-7b", "author's files", "drope", 32),
        ("smollm2-135m", "this suite", "rope", 30),
        ("smollm2-135m", "this suite", "drope", 30),
        ("gemma3-270m", "this suite", "rope", 18),
        ("gemma3-270m", "this suite", "drope", 18),
    ]
    fig = overlay_figure("bos_norm", "BOS norm", True, lines)
    plotted = fig.axes[0].get_lines()
    assert len(plotted) == 6
    for line, drawn in zip(lines, plotted, strict=True):
        n = len(line.values)
        assert list(drawn.get_xdata()) == pytest.approx([i / (n - 1) for i in range(n)])
        assert drawn.get_xdata()[0] == 0.0 and drawn.get_xdata()[-1] == 1.0
        assert list(drawn.get_ydata()) == list(line.values)
        assert drawn.get_label() == line.label
    # gemma's layer 9 of 18 sits at 9/17 of the depth, SmolLM2's layer 9 of 30 at 9/29
    assert lines[4].depth[9] == pytest.approx(9 / 17) and lines[2].depth[9] == pytest.approx(9 / 29)
    assert plotted[0].get_label() == "Llama-2-7B rope (rope), author's files"
    assert fig.axes[0].get_xlabel() == "relative depth: layer / (n_layers - 1)"
    assert overlay_lines(doc, "sink_rate") == []  # one family: no overlay
