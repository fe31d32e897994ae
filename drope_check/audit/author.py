"""The ``author-files`` column of the confound audit, and whether the suite reproduces it.

For a pair whose claims carry ``[claim.evidence."author-files"]`` tables (llama2-7b), the audit
shows, beside the suite's own ``upstream`` variant (every measurement choice the author made, made by
this suite), what the author's committed result files say for each claim. What is claimed:

* The column is the author-files evidence source itself: each cell is built from
  :func:`drope_check.sources.author_files.author_files_verdict` (the function the claims tests and the claims
  report use), never recomputed here. It needs no model, so the audit shows it on any machine.
* It is a *source*, not a measurement choice: it is kept out of the variant cells (``row["cells"]``),
  so no robustness verdict ever counts it (:func:`drope_check.audit.cells.robustness` never sees it).
* Where the ``upstream`` variant and the author's files both have a value for a claim, the row says
  whether they agree (:func:`agreement`): for a band around a value (absolute, relative, log-ratio,
  exact) the suite's value must lie in the claim's own band centred on the author's value; for a
  bound (one-sided, range, ordering, each) there is no width to centre, so agreement is the same
  verdict (holds / fails) under the bound. Either way the row names the band. Both are read at the
  same metric path: where the author's files are read at another path than the claim's (say the
  layer-1 MLP+attention ablation for the MLP-only one), the ``upstream`` variant is read there too,
  and a path the suite does not measure makes the claim "not compared", never a guess.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from drope_check.claims.bands import fmt
from drope_check.claims.claim_file import Claim
from drope_check.claims.evidence_spec import AUTHOR_FILES
from drope_check.claims.verdicts import Verdict
from drope_check.sources.author_files import (
    AuthorFilesBroken,
    AuthorFilesUnavailable,
    author_files_measurements,
    author_files_skip,
    author_files_verdict,
    locate_upstream,
)

__all__ = [
    "AGREES",
    "AUTHOR_COLUMN",
    "DISAGREES",
    "NOT_COMPARED",
    "UPSTREAM_VARIANT",
    "AuthorFiles",
    "agreement",
    "author_cell",
    "author_reading",
    "default_author_files",
    "has_author_files",
    "load_author_files",
    "reproduction_summary",
    "summary_line",
]

AUTHOR_COLUMN = AUTHOR_FILES
#: The suite's variant that measures the author's way (drope_check.audit.variants.UPSTREAM).
UPSTREAM_VARIANT = "upstream"
AGREES = "agrees"
DISAGREES = "disagrees"
NOT_COMPARED = "not compared"
#: Band kinds that are a width around a value; every other kind is a bound on the value itself.
AROUND_VALUE: tuple[str, ...] = ("absolute", "relative", "log_ratio", "exact")
#: Author-files outcomes that carry a value judged against the claim.
_JUDGED = ("pass", "fail", "xfail", "xpass")

#: What :func:`load_author_files` returns: ``(folder, measurements)`` of the author's files, or the
#: exception that says why there are none (:class:`AuthorFilesUnavailable` / :class:`AuthorFilesBroken`).
AuthorFiles = tuple[Path, Mapping[str, Any]] | Exception


def has_author_files(claim_set: Any) -> bool:
    """Whether any claim of ``claim_set`` says how the author's files speak to it (the column is shown)."""
    return any(c.author_files is not None for c in claim_set.claims)


def default_author_files(given: str | None = None) -> tuple[Path, Mapping[str, Any]]:
    """The author's files found as the claims plugin finds them (``--upstream`` / ``$DROPE_CHECK_UPSTREAM`` /
    the shipped copy above the working folder or this package's repository); raises like
    :func:`~drope_check.sources.author_files.locate_upstream` and :func:`~drope_check.sources.author_files.author_files_measurements`."""
    path = locate_upstream(given, [Path.cwd(), Path(__file__).resolve().parents[2]])
    return path, author_files_measurements(str(path))


def load_author_files(loader: Callable[[], tuple[Path, Mapping[str, Any]]]) -> AuthorFiles:
    """``loader()``, or the exception that says why the author's files are not there."""
    try:
        return loader()
    except (AuthorFilesUnavailable, AuthorFilesBroken) as exc:
        return exc


def author_files_info(files: AuthorFiles) -> dict[str, Any]:
    """``audit.json``'s record of where the column came from (or why it is empty)."""
    if isinstance(files, Exception):
        return {"available": False, "reason": str(files)}
    path, data = files
    upstream = data.get("upstream") or {}
    return {
        "available": True,
        "source": str(path),
        "era": upstream.get("era"),
        "repository": upstream.get("repository"),
        "file": upstream.get("file"),
        "files_sha256": upstream.get("files_sha256"),
    }


def _verdict(claim: Claim, files: AuthorFiles) -> Verdict:
    if isinstance(files, AuthorFilesBroken):
        return author_files_skip(claim, str(files), outcome="error")
    if isinstance(files, Exception):
        return author_files_skip(claim, str(files))
    return author_files_verdict(claim, files[1])


def author_cell(claim: Claim, files: AuthorFiles) -> dict[str, Any]:
    """The claim's cell of the ``author-files`` column: the author-files verdict of the claim, as a cell.

    ``value`` is the verdict's ``measured`` (``None`` unless the files were judged against the claim);
    ``holds`` whether it holds (a contradicted claim's ``xfail`` does not); ``outcome``, ``commit``,
    ``protocol`` and ``note`` as the verdict gives them; ``read`` the paths read when they are not the
    claim's own.
    """
    verdict = _verdict(claim, files)
    judged = verdict.outcome in _JUDGED
    cell: dict[str, Any] = {
        "value": verdict.to_dict()["measured"] if judged else None,
        "outcome": verdict.outcome,
    }
    if judged:
        cell["holds"] = bool(verdict.passed)
        cell["margin"] = verdict.margin_text
    if list(verdict.metrics) != list(claim.metrics):
        cell["read"] = list(verdict.metrics)
    for key, value in (
        ("commit", verdict.source_commit),
        ("protocol", verdict.source_protocol),
        ("note", verdict.reason),
        ("nearest", verdict.nearest),
    ):
        if value:
            cell[key] = value
    return cell


def author_reading(claim: Claim) -> Claim:
    """``claim`` read at the author's paths (the paths its author-files cell holds a value for)."""
    evidence = claim.author_files
    if evidence is None or evidence.kind != "value" or tuple(evidence.metrics) == tuple(claim.metrics):
        return claim
    return dataclasses.replace(claim, metrics=tuple(evidence.metrics))


def _why_none(cell: Mapping[str, Any]) -> str:
    return str(cell.get("error") or cell.get("note") or cell.get("outcome") or "no value")


def agreement(claim: Claim, upstream: Mapping[str, Any] | None, author: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the suite's ``upstream`` variant reproduces the author's number for ``claim``.

    ``upstream``: the ``upstream`` variant's cell at the author's reading (None: the variant was not
    in this audit); ``author``: the claim's :func:`author_cell`. Returns ``verdict`` (``agrees`` /
    ``disagrees`` / ``not compared``), ``band`` (the band used, in words; absent when not compared)
    and ``text``.
    """
    if author.get("value") is None:
        return {
            "verdict": NOT_COMPARED,
            "text": f"the author's files give no value ({author.get('outcome')}): {_why_none(author)}",
        }
    if upstream is None:
        return {
            "verdict": NOT_COMPARED,
            "text": f"the suite's `{UPSTREAM_VARIANT}` variant is not in this audit (--variants)",
        }
    if upstream.get("value") is None:
        return {
            "verdict": NOT_COMPARED,
            "text": f"the suite's `{UPSTREAM_VARIANT}` variant has no value: {_why_none(upstream)}",
        }
    if claim.band is None:
        return {"verdict": NOT_COMPARED, "text": "the claim has no band"}
    ours, theirs = upstream["value"], author["value"]
    if claim.band.kind in AROUND_VALUE:
        band = (
            f"the claim's {claim.band.kind} band centred on the author's value: "
            f"{dataclasses.replace(claim, value=theirs).band_text()}"
        )
        result = claim.band.check(ours, theirs)
        agree = result.passed
        how = f"suite {fmt(ours)} vs author {fmt(theirs)}: {result.margin_text}"
    else:
        band = (
            f"the claim's {claim.band.kind} bound {claim.band_text()} (a bound, not a width: agreement is the "
            "same verdict)"
        )
        agree = bool(upstream.get("holds")) == bool(author.get("holds"))
        how = (
            f"suite {fmt(ours)} {'holds' if upstream.get('holds') else 'fails'}, author {fmt(theirs)} "
            f"{'holds' if author.get('holds') else 'fails'}"
        )
    word = AGREES if agree else DISAGREES
    return {"verdict": word, "band": band, "text": f"{word} within {band}; {how}"}


def reproduction_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many claims agree / disagree / were not compared (rows without a reproduction are left out)."""
    found = [r["reproduction"]["verdict"] for r in rows if r.get("reproduction")]
    return {k: found.count(k) for k in (AGREES, DISAGREES, NOT_COMPARED)}


def summary_line(summary: Mapping[str, int]) -> str:
    """One line: does the suite, measuring the author's way, reproduce the author's numbers?"""
    compared = summary[AGREES] + summary[DISAGREES]
    return (
        f"reproduces the author's numbers (suite's `{UPSTREAM_VARIANT}` variant vs the author's files, each "
        f"within its claim's band): {summary[AGREES]} of {compared} compared claims agree, {summary[DISAGREES]} "
        f"disagree, {summary[NOT_COMPARED]} not compared"
    )
