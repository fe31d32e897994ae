"""The ``[claim.evidence]`` table of a claim file: which evidence sources judge a claim, and how.

A claim of the report's pair is judged against every source that exists: this suite's own
measurement (``suite``: the claim's ``metric``, on the pair's models) and the report author's
committed result files (``author-files``: the measurements file ``drope-check import-upstream``
writes). The suite source needs nothing here; the author-files source is described by one table::

    [claim.evidence."author-files"]
    protocol = "sinks-10-prompts-fp4"          # the upstream protocol (drope_check/sources/upstream_sources.toml)
                                               # the report's value came from; a list: one per metric path
    metric = "rope:interventions.layer1_ablation:bos_only.ppl"   # optional: default the claim's metric
    protocol_note = "why this path / protocol is the right reading"  # optional (required with metric)
    contradicted = "the author's own files contradict the claim: why"  # optional: a strict xfail

    # or, when no committed file holds the report's number:
    prose_only = { nearest = ["drope:interventions.bos_mlp_ablation:argmax-ratio.ppl", ...],
                   later = ["rope:perplexity.lines.ppl"] }   # optional: numbers of runs committed
                                               # after the report, shown dated as later evidence

    # or, when the author's files cannot speak to the claim at all (no test id for that source):
    suite_only = "why"

Claimed: a value of the author's files is only ever judged when its recorded protocol is the one
``protocol`` names (:mod:`drope_check.sources.author_files`), a prose-only claim is a finding with the
nearest committed numbers and never a pass, and ``suite_only`` says why a source is missing.

A run first committed after the report (``run.first_committed_date`` of its protocol in
``drope_check/sources/upstream_sources.toml`` later than ``[report] date``) cannot be where a number of the
report came from: a table may name such a protocol only with ``contradicted`` (later evidence may
contradict a claim, never be its source), and its numbers otherwise appear only as ``prose_only.later``.

Claims of family ``method`` (the report's Methods statements: what the author's code did) are
judged on the author's files only: they need a table here that is not ``suite_only``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from drope_check.claims.metric_paths import MetricPathError, parse_path
from drope_check.sources.table import run_after_report

__all__ = ["AUTHOR_FILES", "SOURCES", "SUITE", "AuthorFilesEvidence", "parse_evidence"]

SUITE = "suite"
AUTHOR_FILES = "author-files"
#: Evidence sources, in the order the report shows them.
SOURCES: tuple[str, ...] = (AUTHOR_FILES, SUITE)

_AUTHOR_KEYS = frozenset({"protocol", "metric", "protocol_note", "contradicted", "prose_only", "suite_only"})


@dataclass(frozen=True)
class AuthorFilesEvidence:
    """How a claim is judged against the author's committed files (one of three kinds).

    ``kind``: ``"value"`` (read ``metrics`` and judge them with the claim's band, when each path's
    protocol is the one in ``protocols``), ``"prose-only"`` (no committed file holds the number:
    a finding naming ``nearest``), ``"suite-only"`` (the files say nothing about it: ``reason``).
    """

    kind: str
    metrics: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ()  # one per metric path
    note: str | None = None
    contradicted: str | None = None
    nearest: tuple[str, ...] = ()
    later: tuple[str, ...] = ()  # prose-only: numbers of runs committed after the report (never the source)
    reason: str | None = None

    @property
    def has_test(self) -> bool:
        """Whether the source gets its own test id (``suite_only`` gets none)."""
        return self.kind != "suite-only"


def _paths(raw: Any, key: str, err: Callable[[str, str], Exception], model: str) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(p, str) for p in items):
        raise err(key, "must be a metric path or a non-empty list of metric paths")
    for path in items:
        try:
            parsed = parse_path(path)
        except MetricPathError as exc:
            raise err(key, f"{exc.detail} (in {path!r})") from None
        if model != "pair" and parsed.root != model:
            raise err(key, f"a {model!r} claim reads {model}: paths of the author's files, got {path!r}")
    return tuple(items)


def parse_evidence(
    raw: Any, err: Callable[[str, str], Exception], model: str, status: str, metrics: tuple[str, ...]
) -> AuthorFilesEvidence | None:
    """The ``author-files`` source of a ``[claim.evidence]`` table, or None without one.

    ``err(key, message)`` builds the claim file's error (naming file, claim and key).
    """
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise err("evidence", 'must be a table: [claim.evidence."author-files"]')
    unknown = sorted(set(raw) - {AUTHOR_FILES})
    if unknown:
        raise err(
            f"evidence.{unknown[0]}",
            f"is not an evidence source (known: {AUTHOR_FILES}; {SUITE} is implicit)",
        )
    table = raw.get(AUTHOR_FILES)
    where = f"evidence.{AUTHOR_FILES}"
    if not isinstance(table, Mapping):
        raise err(where, "must be a table")
    for key in table:
        if key not in _AUTHOR_KEYS:
            raise err(
                f"{where}.{key}",
                f"is not a key of an evidence source (allowed: {', '.join(sorted(_AUTHOR_KEYS))})",
            )
    kinds = [k for k in ("prose_only", "suite_only") if k in table]
    if len(kinds) > 1:
        raise err(where, "prose_only and suite_only exclude each other")
    if status not in ("claim", "artefact", "skip"):
        raise err(
            where,
            'only a report-derived claim (status "claim", "artefact" or "skip") is judged against '
            "the author's files",
        )

    def text(key: str) -> str | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise err(f"{where}.{key}", "must be a non-empty string")
        return value

    if "suite_only" in table:
        extra = sorted(set(table) - {"suite_only"})
        if extra:
            raise err(f"{where}.{extra[0]}", "does not go with suite_only")
        return AuthorFilesEvidence(kind="suite-only", reason=text("suite_only"))
    if status == "skip":
        raise err(where, 'a status-"skip" claim can only be suite_only here')
    note = text("protocol_note")
    if "prose_only" in table:
        extra = sorted(set(table) - {"prose_only", "protocol_note"})
        if extra:
            raise err(f"{where}.{extra[0]}", "does not go with prose_only")
        prose = table["prose_only"]
        if not isinstance(prose, Mapping) or "nearest" not in prose or set(prose) - {"nearest", "later"}:
            raise err(
                f"{where}.prose_only",
                "must be a table { nearest = [metric paths], later = [metric paths] (optional) }",
            )
        nearest = _paths(prose["nearest"], f"{where}.prose_only.nearest", err, "pair")
        later = _paths(prose["later"], f"{where}.prose_only.later", err, "pair") if "later" in prose else ()
        return AuthorFilesEvidence(kind="prose-only", nearest=nearest, later=later, note=note)
    read = _paths(table["metric"], f"{where}.metric", err, model) if "metric" in table else metrics
    if "metric" in table:
        if note is None:
            raise err(
                f"{where}.protocol_note", "is required with metric: say why another path is the right reading"
            )
        if len(read) != len(metrics):
            raise err(f"{where}.metric", f"reads {len(read)} path(s); the claim reads {len(metrics)}")
    protocol = table.get("protocol")
    protocols = [protocol] * len(read) if isinstance(protocol, str) else protocol
    if (
        not isinstance(protocols, list)
        or not protocols
        or not all(isinstance(p, str) and p for p in protocols)
    ):
        raise err(
            f"{where}.protocol",
            "is required: the upstream protocol name the report's value came from "
            "(drope_check/sources/upstream_sources.toml [protocols]), or a list of one per metric path",
        )
    if len(protocols) != len(read):
        raise err(f"{where}.protocol", f"names {len(protocols)} protocol(s) for {len(read)} metric path(s)")
    contradicted = text("contradicted")
    if contradicted is None:
        for name in protocols:
            after = run_after_report(name)
            if after is not None:
                raise err(
                    f"{where}.protocol",
                    f"names {name!r}, whose run ({after}) cannot be where the report's "
                    "number came from: list its value under prose_only.later, or say why it contradicts the "
                    "claim (contradicted)",
                )
    return AuthorFilesEvidence(
        kind="value", metrics=tuple(read), protocols=tuple(protocols), note=note, contradicted=contradicted
    )
