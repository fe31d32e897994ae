"""The shipped mapping (``upstream_sources.toml``): which commit and JSON path of the author's files feed which
field, under which protocol; and which of the author's runs came after the report."""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

SCHEMA_VERSION = 1
SOURCES_FILE = "upstream_sources.toml"


class UpstreamImportError(ValueError):
    """The upstream source cannot be imported; the message is one sentence naming what and where."""


def load_sources(path: str | Path | None = None) -> dict[str, Any]:
    """The mapping table (``drope_check/sources/upstream_sources.toml`` unless ``path`` is given)."""
    if path is None:
        text = resources.files("drope_check.sources").joinpath(SOURCES_FILE).read_text(encoding="utf-8")
        where = f"drope_check/sources/{SOURCES_FILE}"
    else:
        text = Path(path).read_text(encoding="utf-8")
        where = str(path)
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UpstreamImportError(f"{where} is not valid TOML: {exc}") from None
    if table.get("schema_version") != SCHEMA_VERSION:
        raise UpstreamImportError(f"{where}: schema_version must be {SCHEMA_VERSION}")
    for era in table.get("eras", {}).values():
        for use in era["uses"]:
            if use["source"] not in table["sources"] or use["protocol"] not in table["protocols"]:
                raise UpstreamImportError(f"{where}: era entry {use} names an unknown source or protocol")
    return table


@functools.lru_cache(maxsize=1)
def _shipped_sources() -> dict[str, Any]:
    return load_sources()


def run_after_report(protocol_name: str, table: Mapping[str, Any] | None = None) -> str | None:
    """Why the run behind ``protocol_name`` cannot be the source of a number of the report, or None.

    A protocol whose ``run.first_committed_date`` is later than the ``[report] date`` was made after
    the report was written: ``"run_layer1_ablation.py, first committed e134c15 on 2026-01-21T15:05,
    after the report's commit 90f8e3c of 2026-01-20T23:26"``. None for a protocol without a dated run
    (or an unknown name: the claim file's protocol names are checked when a claim is judged).
    """
    table = table if table is not None else _shipped_sources()
    protocol = table.get("protocols", {}).get(protocol_name) or {}
    run = protocol.get("run") or {}
    report = table.get("report") or {}
    date, report_date = run.get("first_committed_date"), report.get("date")
    if not date or not report_date or str(date) <= str(report_date):  # ISO 8601: text order is time order
        return None
    return (
        f"{run.get('script', 'its script')}, first committed {run.get('first_committed', '?')} on {date}, after the "
        f"report's commit {str(report.get('commit', '?'))[:7]} of {report_date}"
    )
