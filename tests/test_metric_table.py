"""One metric table (drope_check.engine.metric_table) read by the capture, the summary, the validator,
the protocol identity and the plots; the schema doc lists the same names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from drope_check.claims.protocol_identity import ATTENTION_FIELDS, is_attention_metric, relevant_fields
from drope_check.engine import capture
from drope_check.engine.metric_table import (
    ATTENTION_METHOD_FACTS,
    CAPTURED_SERIES,
    METRICS,
    MOMENT_STATS,
    SPECTRUM_STATS,
    metric,
    names,
)
from drope_check.measurements.rules import LAYER_SERIES, RANGES, SCALARS
from drope_check.measurements.validate import OPTIONAL_FIELDS
from drope_check.report.build import PLOT_SERIES

REPO = Path(__file__).resolve().parents[1]
SCHEMA_DOC = REPO / "docs" / "measurements-schema.md"
PART = {"series": "layers", "heads": "heads", "scalar": "scalars"}


def test_names_are_unique_per_kind_and_every_range_has_a_rule():
    keys = [(m.kind, m.name) for m in METRICS]
    assert len(keys) == len(set(keys))
    assert {m.range for m in METRICS} <= set(RANGES)
    assert all(m.plot is None or m.kind == "series" for m in METRICS)


def _doc_block(part: str) -> set[str]:
    """The names the schema doc lists in ``"<part>": {...}`` of a model object (comments stripped)."""
    text = SCHEMA_DOC.read_text(encoding="utf-8")
    start = text.index(f'  "{part}": {{')
    depth, end = 0, start
    for end in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            break
    block = "\n".join(line.split("#", 1)[0] for line in text[start:end].splitlines())
    found = re.findall(r'"([a-z0-9_]+)"', block)
    return set(found) - {part}


@pytest.mark.parametrize("kind", ["series", "heads", "scalar"])
def test_the_schema_doc_lists_exactly_the_tables_metrics(kind):
    assert _doc_block(PART[kind]) == set(names(kind))


def test_every_reader_takes_its_names_from_the_table():
    assert capture.LAYER_STATS == CAPTURED_SERIES
    assert capture.RESIDUAL_STATS == MOMENT_STATS + SPECTRUM_STATS
    assert set(CAPTURED_SERIES) == set(MOMENT_STATS) | set(SPECTRUM_STATS) | {"bos_mlp_write_norm"}
    assert list(LAYER_SERIES) == list(names("series")) and list(SCALARS) == list(names("scalar"))
    assert all(LAYER_SERIES[m.name] is RANGES[m.range] for m in METRICS if m.kind == "series")
    for kind in ("series", "heads", "scalar"):
        assert set(OPTIONAL_FIELDS[PART[kind]]) == {m.name for m in METRICS if m.kind == kind and m.optional}
    assert [name for name, _, _ in PLOT_SERIES] == [m.name for m in METRICS if m.plot]


def test_a_measured_file_holds_the_tables_series_heads_and_scalars():
    """tests/data/smollm2-135m-measurements.json was written by the suite (drope-check measure): its
    model objects hold every series and head field of the table, and no scalar the table lacks."""
    data = json.loads((REPO / "tests" / "data" / "smollm2-135m-measurements.json").read_text())
    for model in data["models"].values():
        assert set(model["layers"]) == set(names("series"))
        assert set(model["heads"]) == set(names("heads"))
        assert set(model["scalars"]) <= set(names("scalar"))


def _claim_paths() -> set[str]:
    paths: set[str] = set()
    for toml in [*REPO.glob("expected/*.toml"), *REPO.glob("tests/data/expected/*.toml")]:
        paths |= set(re.findall(r'"((?:rope|drope|root):[^"\s]+)"', toml.read_text(encoding="utf-8")))
    return paths


def test_attention_metrics_are_those_the_substring_rule_found_on_every_claim_path():
    """The protocol identity used to call a path an attention number when it contained "sink"; the table
    gives the same answer on every metric path of every claim file, and on every metric of the table."""
    paths = _claim_paths() | {f"rope:{PART[m.kind]}.{m.name}" for m in METRICS}
    assert len(paths) > 50
    for path in sorted(paths):
        assert is_attention_metric(path) == ("sink" in path), path


def test_relevant_fields_follow_the_table():
    assert set(ATTENTION_FIELDS) <= set(relevant_fields(["drope:layers.sink_rate[1]"]))
    assert not set(ATTENTION_FIELDS) & set(relevant_fields(["drope:layers.bos_norm[1]"]))
    assert metric("layers", "sink_rate").attention and not metric("scalars", "attention_nan_heads").attention
    assert metric("layers", "nope") is None and metric("nowhere", "sink_rate") is None
    for fact in ATTENTION_METHOD_FACTS:
        assert is_attention_metric(f"rope:provenance.method.{fact}")
    assert not is_attention_metric("rope:provenance.method.other") and not is_attention_metric("not a path[")
