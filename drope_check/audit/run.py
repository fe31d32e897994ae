"""The confound audit: every claim of a pair re-judged under each named protocol variant.

:func:`run_audit` measures each *measured* variant once per model (models loaded once each; a
variant whose protocol for a model equals another's shares that pass, e.g. ``padded-rope``'s DroPE
side is the suite's), derives the *statistics-only* variants from the suite pass's per-sequence
scores (:func:`drope_check.engine.sink_stats.derive_statistics`), skips GPU-only variants with the reason
elsewhere, and evaluates every claim of ``expected/<pair>.toml`` under every variant:

* a claim with a report value or a comparison (status ``claim`` / ``does-not-generalise``) gets a
  verdict per variant: *holds* or *fails* against the report's value and band;
* a golden (a value this suite measured under ``suite``) gets no verdict under another protocol:
  its cell holds the value and the change from the ``suite`` column, and *moved* when the change
  leaves the golden's own band around the suite's value;
* claims with status ``skip`` or a pending value are listed as not evaluated, with the reason.

Robustness per claim: *robust* (same verdict, or for a golden never moved, under every variant),
*fragile* (naming the variants that flip or move it), or *holds only under upstream's choices*
(fails under ``suite`` and holds only under variants that are upstream's choices).

For a pair whose claims carry author-files tables (llama2-7b) the matrix also shows the report
author's committed result files as an ``author-files`` column beside the ``upstream`` variant, and
per claim whether the suite, measuring the author's way, reproduces the author's number
(:mod:`drope_check.audit.author`). That column is a source, not a variant: it is kept out of the
variant cells and never counts in a robustness verdict. It needs no model, so without the pair's
models (``models_unavailable``) the audit still runs: every variant *not measured* with the reason,
the ``author-files`` column filled.

Outputs (:func:`write_audit`): ``audit.json``, ``audit.md``, ``audit-heatmap.png`` and the
measurements of each variant under ``measurements/<variant>.json`` (with the per-sequence scores, so
a reader can recompute any threshold). Any non-finite number in a variant's measurements is an
:class:`AuditError` naming model, layer, quantity and variant; the one documented exception is
``fp16-eager``'s NaN heads, which are stored as ``null``, counted as non-sinks and counted.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import io
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drope_check import __version__
from drope_check.audit.author import (
    AUTHOR_COLUMN,
    UPSTREAM_VARIANT,
    AuthorFiles,
    agreement,
    author_cell,
    author_files_info,
    author_reading,
    default_author_files,
    has_author_files,
    load_author_files,
    reproduction_summary,
    summary_line,
)
from drope_check.audit.variants import ROLES, Variant, get_variants, measurement_key
from drope_check.claims import api as claims
from drope_check.engine.protocol import FAITHFUL, STATISTICS_FIELDS, Protocol
from drope_check.engine.sink_stats import derive_statistics

AUDIT_SCHEMA_VERSION = 1
HEATMAP_FILE = "audit-heatmap.png"

ROBUST = "robust"
FRAGILE = "fragile"
UPSTREAM_ONLY = "holds only under upstream's choices"
NOT_EVALUATED = "not evaluated"
#: Status of a variant that was not measured: GPU-only without a GPU, or no models here at all.
SKIPPED = "skipped"
NOT_MEASURED = "not measured"

#: Metric-path rewrites under ``spike_rule = "max-write"``: the claims name the argmax-ratio rule.
SPIKE_ALIASES = (("bos_mlp_ablation:argmax-ratio", "bos_mlp_ablation:max-write"),
                 ("bos_spike_layer_argmax_ratio", "bos_spike_layer_max_write"))
_INTERVENTION_RE = re.compile(r"interventions\.([A-Za-z_]+:[A-Za-z0-9_-]+)")


class AuditError(RuntimeError):
    """A variant could not be measured or gave a non-finite value; the message names variant and model."""


# ----------------------------------------------------------------------------------------------
# where models and texts come from (injectable, so tests can audit tiny models)


@dataclass
class AuditSource:
    """How the audit obtains a pair: ``load(model_spec, quantization)`` -> LoadedModel,
    ``sequences(loaded, protocol)`` -> token ids, ``texts`` (with ``to_provenance()``)."""

    spec: Any
    load: Callable[[Any, str | None], Any]
    sequences: Callable[[Any, Protocol], list[list[int]]]
    texts: Any
    options: Any = None


def default_source(pair: str, options: Any = None, base: Protocol = FAITHFUL) -> AuditSource:
    """The registry pair ``pair``, its models loaded by :func:`drope_check.models.loading.load_model`."""
    from drope_check.measurements.measure import MeasureOptions, load_texts, token_sequences, torch_dtype
    from drope_check.models.hub import resolve_pair
    from drope_check.models.loading import load_model
    from drope_check.models.pairs import get_pair

    options = options or MeasureOptions()
    texts = load_texts(base, options)
    # hub models as their local snapshots, downloaded first if needed: every variant loads from them
    spec = resolve_pair(get_pair(pair), progress=options.progress, trust_remote_code=options.trust_remote_code)

    def load(model_spec: Any, quantization: str | None) -> Any:
        # a 4-bit variant runs as upstream ran it, fp16 compute and activations (models.QUANTIZED_DTYPE), whatever --dtype
        dtype = None if quantization is not None else torch_dtype(options.dtype)
        return load_model(model_spec, bos_token=spec.bos_token, dtype=dtype, device=options.device,
                          trust_remote_code=options.trust_remote_code, quantization=quantization,
                          allow_incomplete_weights=options.allow_incomplete_weights,
                          device_map=options.device_map, offload_folder=options.offload_folder)

    def sequences(loaded: Any, protocol: Protocol) -> list[list[int]]:
        return token_sequences(texts, loaded.tokenizer, loaded.bos_token_id, protocol)

    return AuditSource(spec=spec, load=load, sequences=sequences, texts=texts, options=options)


# ----------------------------------------------------------------------------------------------
# claims under a variant


def _alias(path: str, protocols: Mapping[str, Protocol]) -> str:
    root = path.partition(":")[0]
    protocol = protocols.get(root)
    if protocol is not None and protocol.spike_rule == "max-write":
        for old, new in SPIKE_ALIASES:
            path = path.replace(old, new)
    return path


def claim_under(claim: Any, protocols: Mapping[str, Protocol]) -> Any:
    """``claim`` with its metric paths read under the variant's spike rule (per model)."""
    metrics = tuple(_alias(m, protocols) for m in claim.metrics)
    return claim if metrics == tuple(claim.metrics) else dataclasses.replace(claim, metrics=metrics)


#: Why a Methods statement has no cell under any variant.
AUTHOR_ONLY_NOTE = "a statement about the author's method: judged on the author's files only"


def evaluated(claim: Any) -> bool:
    """Whether the suite's measurement judges ``claim`` (not pending, not skipped, not a Methods statement)."""
    return claim.has_suite_test and claims.pending_reason(claim) is None


def needed_interventions(claim_set: Any, role: str, protocol: Protocol) -> tuple[str, ...]:
    """The interventions the evaluated claims read on ``role`` under ``protocol`` (none if none does)."""
    from drope_check.engine import eager_probe

    names: set[str] = set()
    for claim in claim_set.claims:
        if not evaluated(claim):
            continue
        for path in claim_under(claim, {role: protocol}).metrics:
            if path.partition(":")[0] == role:
                names.update(_INTERVENTION_RE.findall(path))
                if any(f"scalars.{field}" in path for field in eager_probe.FIELDS):
                    names.add(eager_probe.EAGER_FP16)
    from drope_check.engine.interventions import INTERVENTIONS

    return tuple(n for n in (*INTERVENTIONS, eager_probe.EAGER_FP16) if n in names)


def _cell(claim: Any, doc: Mapping[str, Any], protocols: Mapping[str, Protocol]) -> dict[str, Any]:
    """Value (and holds, for a report value or comparison) of one claim in one variant's measurements.

    The claim is judged as a plain claim on these measurements: in the audit the protocol differs
    from the suite's on purpose, so the protocol (and text set) a golden records is not asked for
    here -- a golden's verdict is replaced by the change from ``suite`` instead.
    """
    neutral = dataclasses.replace(
        claim_under(claim, protocols), status="claim", texts_sha256=None, protocol=None, pending=False
    )
    verdict = claims.verdict_for(neutral, doc)
    if verdict.outcome == "error":
        return {"value": None, "error": verdict.reason}
    if verdict.outcome not in ("pass", "fail"):
        return {"value": None, "note": verdict.reason or verdict.outcome}
    cell: dict[str, Any] = {"value": _json(verdict.measured)}
    if neutral.metrics != tuple(claim.metrics):
        cell["read"] = list(neutral.metrics)
    if claim.status != "golden":
        cell["holds"] = bool(verdict.passed)
        cell["margin"] = verdict.margin_text
    return cell


def _change(value: Any, suite: Any) -> Any:
    if isinstance(value, list) and isinstance(suite, list) and len(value) == len(suite):
        diffs = [a - b for a, b in zip(value, suite, strict=True) if a is not None and b is not None]
        return max(diffs, key=abs) if diffs else None
    if isinstance(value, (int, float)) and isinstance(suite, (int, float)):
        return value - suite
    return None


def _fill_golden(claim: Any, cells: dict[str, dict[str, Any]]) -> None:
    suite = cells.get("suite", {}).get("value")
    for name, cell in cells.items():
        value = cell.get("value")
        if value is None or suite is None:
            continue
        cell["change"] = _change(value, suite)
        if name != "suite":
            cell["moved"] = not claim.band.check(value, suite).passed


def robustness(claim: Any, cells: Mapping[str, Mapping[str, Any]], variants: Mapping[str, Variant]) -> dict[str, Any]:
    """The robustness verdict of one claim from its cells (see the module docstring)."""
    if not evaluated(claim):
        return {"verdict": NOT_EVALUATED, "variants": [], "text": f"not evaluated: {claims.pending_reason(claim) or AUTHOR_ONLY_NOTE}"}
    suite = cells.get("suite", {})
    if suite.get("value") is None:
        return {"verdict": NOT_EVALUATED, "variants": [],
                "text": f"no suite value: {suite.get('error') or suite.get('note') or 'not measured'}"}
    order = [n for n in variants if n in cells] + [n for n in cells if n not in variants]
    judged = {n: cells[n] for n in order if cells[n].get("value") is not None}
    unjudged = sorted(n for n, c in cells.items() if c.get("value") is None and not c.get("skipped"))
    tail = f" (no value under {', '.join(unjudged)})" if unjudged else ""
    if claim.status == "golden":
        moved = [n for n, c in judged.items() if c.get("moved")]
        if not moved:
            return {"verdict": ROBUST, "variants": [], "text": f"stays within its band of the suite's value under every variant{tail}"}
        return {"verdict": FRAGILE, "variants": moved,
                "text": f"leaves its band of the suite's value under {', '.join(moved)}{tail}"}
    base = suite["holds"]
    flips = [n for n, c in judged.items() if c["holds"] != base]
    if not flips:
        return {"verdict": ROBUST, "variants": [], "text": f"{'holds' if base else 'fails'} under every variant{tail}"}
    holds_under = [n for n, c in judged.items() if c["holds"]]
    if not base and holds_under and all(variants[n].upstream_choice for n in holds_under):
        return {"verdict": UPSTREAM_ONLY, "variants": holds_under,
                "text": f"fails under suite, holds only under upstream's choices: {', '.join(holds_under)}{tail}"}
    return {"verdict": FRAGILE, "variants": flips,
            "text": f"{'holds' if base else 'fails'} under suite, {'fails' if base else 'holds'} under {', '.join(flips)}{tail}"}


# ----------------------------------------------------------------------------------------------
# measuring


def check_finite(doc: Mapping[str, Any], variant: str) -> None:
    """Raise :class:`AuditError` on any non-finite number in the model objects (``null`` NaN heads of
    fp16-eager are not numbers and pass; they are counted in ``attention_nan_heads``)."""

    def walk(node: Any, path: str, role: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k), role)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]", role)
        elif isinstance(node, float) and not math.isfinite(node):
            m = re.match(r"layers\.(\w+)\[(\d+)\]", path)
            where = f"layer {m.group(2)}, quantity {m.group(1)}" if m else f"quantity {path}"
            model = doc["models"][role].get("provenance", {}).get("model_id", role)
            raise AuditError(f"variant {variant}: model {role} ({model}): non-finite value {node} at {path} ({where})")

    for role, model in doc["models"].items():
        walk(model, "", role)


def _with_variant(message: str, variant_names: Sequence[str]) -> str:
    return f"variant(s) {', '.join(variant_names)}: {message}"


def run_audit(
    pair: str,
    variant_names: str | Iterable[str] | None = None,
    *,
    source: AuditSource | None = None,
    options: Any = None,
    base: Protocol = FAITHFUL,
    claim_set: Any = None,
    progress: bool = False,
    gpu_available: bool | None = None,
    log: Callable[[str], None] | None = None,
    models_unavailable: str | None = None,
    author_files: Callable[[], tuple[Path, Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Measure every variant, evaluate every claim under each; returns ``{"audit": doc, "measurements": {...}}``.

    ``models_unavailable``: why the pair's models cannot be loaded here; then no variant is measured
    (each is *not measured* with that reason, nothing loads) and the audit still shows what needs no
    model: the ``author-files`` column. That column is added whenever a claim of the pair has an
    author-files table; ``author_files`` returns ``(folder, measurements)`` of the author's files
    (default: :func:`drope_check.audit.author.default_author_files`), and a missing or broken copy
    fills the column with the reason.
    """
    import torch

    variants = get_variants(variant_names)
    claim_set = claim_set or claims.load_claims(pair)
    gpu_available = torch.cuda.is_available() if gpu_available is None else gpu_available
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True) if progress else None)

    status: dict[str, dict[str, Any]] = {}
    protocols: dict[str, dict[str, Protocol]] = {}
    plan: dict[tuple[str | None, str, Protocol], dict[str, Any]] = {}  # (quantization, role, key) -> job
    for v in variants:
        protocols[v.name] = {role: v.protocol(role, base) for role in ROLES}
        if models_unavailable is not None:
            status[v.name] = {"status": NOT_MEASURED, "reason": models_unavailable}
            continue
        if v.kind == "gpu" and not gpu_available:
            status[v.name] = {"status": SKIPPED, "reason": "bitsandbytes 4-bit needs a CUDA GPU; run "
                              f"`drope-check audit --pair {pair} --variants {v.name}` (or tox -e audit-gpu) on a GPU runner"}
            continue
        status[v.name] = {"status": "derived" if v.kind == "statistics" else "measured"}
        for role in ROLES:
            key = measurement_key(protocols[v.name][role], base)
            job = plan.setdefault((v.quantization, role, key), {"variants": [], "interventions": set()})
            job["variants"].append(v.name)
            job["interventions"].update(needed_interventions(claim_set, role, protocols[v.name][role]))

    results: dict[tuple[str | None, str, Protocol], dict[str, Any]] = {}
    token_info: dict[str, dict[str, int]] = {}
    if plan:  # texts and models only when something is measured
        source = source or default_source(pair, options, base)
    for quantization in dict.fromkeys(q for q, _, _ in plan):
        for role in ROLES:
            jobs = [(k, j) for k, j in plan.items() if k[0] == quantization and k[1] == role]
            if not jobs:
                continue
            model_spec = getattr(source.spec, role)
            say(f"audit: loading {role} ({model_spec.describe()}{', ' + quantization if quantization else ''})")
            try:
                loaded = source.load(model_spec, quantization)
            except Exception as exc:
                names = sorted({n for _, j in jobs for n in j["variants"]})
                raise AuditError(_with_variant(f"could not load {role}: {exc}", names)) from exc
            for (q, r, key), job in jobs:
                from drope_check.measurements.measure import measure_model

                label = f"audit {'+'.join(job['variants'])} {role}"
                say(f"{label}: interventions {', '.join(sorted(job['interventions'])) or 'none'}")
                try:
                    seqs = source.sequences(loaded, key)
                    start = time.perf_counter()
                    results[(q, r, key)] = measure_model(loaded, seqs, key, tuple(sorted(job["interventions"])),
                                                         progress=progress, label=label)
                except Exception as exc:  # CaptureError names model, layer and quantity; add the variant
                    raise AuditError(_with_variant(str(exc), job["variants"])) from exc
                first = job["variants"][0]
                status[first].setdefault("seconds", {})[role] = round(time.perf_counter() - start, 1)
                for name in job["variants"]:
                    token_info.setdefault(name, {})[role] = sum(len(s) for s in seqs)
                    if name != first:  # same forward pass: derived from, or identical to, the first's
                        status[name].setdefault("pass_of", {})[role] = first
            del loaded
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    from drope_check.measurements.measure import MeasureOptions, measurements_document

    docs: dict[str, dict[str, Any]] = {}
    for v in variants:
        if status[v.name]["status"] in (SKIPPED, NOT_MEASURED):
            continue
        models = {}
        for role in ROLES:
            protocol = protocols[v.name][role]
            key = measurement_key(protocol, base)
            measured = results[(v.quantization, role, key)]
            changed_stats = any(getattr(protocol, f) != getattr(key, f) for f in STATISTICS_FIELDS)
            model = derive_statistics(measured, protocol) if changed_stats else dict(measured)
            model["protocol"] = protocol.to_dict()
            models[role] = model
        doc = measurements_document(source.spec, protocols[v.name]["rope"], source.options or MeasureOptions(),
                                    source.texts, token_info.get(v.name, {}), models)
        doc["variant"] = {"name": v.name, "description": v.description, "kind": v.kind, "quantization": v.quantization,
                          "protocols": {r: protocols[v.name][r].to_dict() for r in ROLES}}
        check_finite(doc, v.name)
        status[v.name]["attention_nan_heads"] = {r: models[r]["scalars"].get("attention_nan_heads", 0) for r in ROLES}
        docs[v.name] = doc

    files = None
    if has_author_files(claim_set):
        files = load_author_files(author_files or default_author_files)
    rows = audit_rows(claim_set, variants, docs, status, protocols, files)
    audit = {
        "schema_version": AUDIT_SCHEMA_VERSION,
        "tool": {"name": "drope_check", "version": __version__},
        "pair": pair,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "claims_file": claim_set.path,
        "base_protocol": base.to_dict(),
        "variants": [{"name": v.name, "description": v.description, "kind": v.kind, "upstream_choice": v.upstream_choice,
                      "protocols": {r: protocols[v.name][r].to_dict() for r in ROLES}, **status[v.name]}
                     for v in variants],
        "claims": rows,
        "summary": {k: sum(1 for r in rows if r["robustness"]["verdict"] == k)
                    for k in (ROBUST, FRAGILE, UPSTREAM_ONLY, NOT_EVALUATED)},
    }
    if files is not None:
        summary = reproduction_summary(rows)
        audit["author_files"] = author_files_info(files)
        audit["reproduction"] = {"summary": summary, "line": summary_line(summary)}
    return {"audit": audit, "measurements": docs}


def _unmeasured_cell(state: Mapping[str, Any]) -> dict[str, Any]:
    """The cell of a variant with no measurements: skipped (GPU only) or not measured (no models here)."""
    note = f"not measured: {state['reason']}" if state["status"] == NOT_MEASURED else state["reason"]
    return {"value": None, "skipped": True, "status": state["status"], "note": note}


def not_measured(audit: Mapping[str, Any]) -> dict[str, list[str]]:
    """The variants an audit could not measure here (no models), grouped by reason: ``reason -> names``
    in variant order. audit.md, the claims report and the terminal summary each say a reason once."""
    groups: dict[str, list[str]] = {}
    for v in audit["variants"]:
        if v.get("status") == NOT_MEASURED:
            groups.setdefault(str(v.get("reason")), []).append(v["name"])
    return groups


def _upstream_at(claim: Any, reading: Any, cells: Mapping[str, Mapping[str, Any]], docs: Mapping[str, Any],
                 protocols: Mapping[str, Mapping[str, Protocol]]) -> Mapping[str, Any] | None:
    """The ``upstream`` variant's cell for ``reading`` (the claim at the author's paths), or None without the variant."""
    if UPSTREAM_VARIANT not in cells:
        return None
    if reading is claim or UPSTREAM_VARIANT not in docs or not evaluated(claim):
        return cells[UPSTREAM_VARIANT]
    return _cell(reading, docs[UPSTREAM_VARIANT], protocols[UPSTREAM_VARIANT])


def audit_rows(claim_set: Any, variants: Sequence[Variant], docs: Mapping[str, Mapping[str, Any]],
               status: Mapping[str, Mapping[str, Any]], protocols: Mapping[str, Mapping[str, Protocol]],
               author_files: AuthorFiles | None = None) -> list[dict[str, Any]]:
    """One row per claim: a cell per variant (from ``docs``, the measurements of each measured variant),
    its robustness verdict, and with ``author_files`` the ``author-files`` cell and the reproduction
    verdict (:mod:`drope_check.audit.author`), kept apart from the variant cells."""
    rows = []
    for claim in claim_set.claims:
        cells: dict[str, dict[str, Any]] = {}
        for v in variants:
            if v.name not in docs:
                cells[v.name] = _unmeasured_cell(status[v.name])
            elif evaluated(claim):
                cells[v.name] = _cell(claim, docs[v.name], protocols[v.name])
            else:
                cells[v.name] = {"value": None, "note": claims.pending_reason(claim) or AUTHOR_ONLY_NOTE}
        if evaluated(claim) and claim.status == "golden":
            _fill_golden(claim, cells)
        row = {
            "key": claim.key, "id": claim.id, "model": claim.model, "family": claim.family, "status": claim.status,
            "sentence": claim.sentence, "expected": _json(claim.value), "band": claim.band_text(),
            "kind": "not evaluated" if not evaluated(claim) else ("golden" if claim.status == "golden" else "verdict"),
            "cells": cells, "robustness": robustness(claim, cells, {v.name: v for v in variants}),
        }
        if author_files is not None:
            row["author_files"] = author_cell(claim, author_files)
            reading = author_reading(claim)
            upstream = _upstream_at(claim, reading, cells, docs, protocols)
            row["reproduction"] = agreement(claim, upstream, row["author_files"])
            if reading is not claim:
                row["reproduction"]["read"] = list(reading.metrics)
            if upstream is not None and upstream.get("value") is not None:
                row["reproduction"]["suite_value"] = upstream["value"]
        rows.append(row)
    return rows


def _json(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (list, tuple)):
        return [_json(v) for v in x]
    return x


# ----------------------------------------------------------------------------------------------
# outputs


def _cell_text(row: Mapping[str, Any], name: str) -> str:
    if name == AUTHOR_COLUMN:
        return _author_text(row[AUTHOR_COLUMN_KEY])
    cell = row["cells"][name]
    if cell.get("skipped"):
        return cell.get("status", SKIPPED)
    if cell.get("value") is None:
        return "error" if cell.get("error") else "-"
    text = _short(cell["value"])
    if "holds" in cell:
        return f"{'holds' if cell['holds'] else 'FAILS'} {text}"
    if name != "suite" and cell.get("change") is not None:
        return f"{text} (Δ {claims.fmt(cell['change'], 2)}{', moved' if cell.get('moved') else ''})"
    return text


#: Where a row keeps its ``author-files`` cell (apart from the variant cells, which robustness reads).
AUTHOR_COLUMN_KEY = "author_files"


def _short(value: Any) -> str:
    text = claims.fmt(value, 3)
    return text[:21] + "…" if len(text) > 24 else text


def _author_text(cell: Mapping[str, Any]) -> str:
    """The ``author-files`` cell in the matrix: the author's value and its verdict, or why there is none."""
    outcome = cell["outcome"]
    if cell.get("value") is None:
        return {"prose-only": "prose only", "skip": "not judged", "error": "error"}.get(outcome, outcome)
    word = "holds" if cell.get("holds") else "FAILS"
    return f"{word} {_short(cell['value'])}" + (" (contradicted)" if outcome == "xfail" else "")


def matrix_columns(audit: Mapping[str, Any]) -> list[str]:
    """The matrix's columns: the variants, with ``author-files`` right after ``upstream`` when the audit has it."""
    names = [v["name"] for v in audit["variants"]]
    if "author_files" not in audit:
        return names
    at = names.index(UPSTREAM_VARIANT) + 1 if UPSTREAM_VARIANT in names else len(names)
    return names[:at] + [AUTHOR_COLUMN] + names[at:]


def _author_lines(audit: Mapping[str, Any]) -> list[str]:
    """The section on the author's files: where they came from and, per claim, whether the suite reproduces them."""
    info = audit["author_files"]
    where = (f"era {info.get('era')} of {info.get('repository')} ({info.get('file')}), read from {info.get('source')}"
             if info.get("available") else f"no copy: {info.get('reason')}")
    out = ["## Reproducing the author's numbers", "",
           f"The `{AUTHOR_COLUMN}` column is the report author's committed result files ({where}), each claim judged "
           "as the claims tests' author-files source judges it, under the protocol the report's value came from. It "
           "is a source, not a measurement choice: no robustness verdict counts it. Beside it, the suite's own "
           f"`{UPSTREAM_VARIANT}` variant makes the author's measurement choices on this suite's texts and weights; a "
           "claim *agrees* when the two values lie within the claim's band of each other (centred on the author's "
           "value), or, for a bound (one-sided, range, ordering, each), when both give the same verdict.", "",
           f"Summary: {audit['reproduction']['line']}.", ""]
    for row in audit["claims"]:
        rep, cell = row["reproduction"], row[AUTHOR_COLUMN_KEY]
        source = f" @{str(cell['commit'])[:7]} ({cell.get('protocol', '?')})" if cell.get("commit") else ""
        read = f" (both read at {', '.join(rep['read'])})" if rep.get("read") else ""
        out.append(f"- **{_md(row['key'])}**: *{rep['verdict']}* — {_md(rep['text'])}{read}. Author's files{source}: "
                   f"{_md(_author_text(cell))}" + (f"; {_md(cell['note'])}" if cell.get("note") else ""))
    out.append("")
    return out


def render_markdown(audit: Mapping[str, Any], heatmap: str | None = HEATMAP_FILE) -> str:
    """``audit.md``: the variants, the claims x variants matrix (with the ``author-files`` column beside
    ``upstream`` where the pair has one), each claim's robustness verdict and reproduction verdict."""
    names = matrix_columns(audit)
    authored = "author_files" in audit
    s = audit["summary"]
    out = [
        f"# Confound audit: {audit['pair']}",
        "",
        f"Generated by drope_check {audit['tool']['version']} on {audit['created']} from {Path(audit['claims_file']).name}. "
        "Every claim re-judged under each of the report's measurement choices (README, \"Confound audit\").",
        "",
        f"Robustness: {ROBUST} {s[ROBUST]}, {FRAGILE} {s[FRAGILE]}, {UPSTREAM_ONLY} {s[UPSTREAM_ONLY]}, "
        f"{NOT_EVALUATED} {s[NOT_EVALUATED]}.",
        *([f"Author's files: {audit['reproduction']['line']} (see \"Reproducing the author's numbers\").", ""]
          if authored else [""]),
        "A claim with a report value or a comparison is judged under every variant (holds / FAILS against the "
        "report's value and band). A golden (a value this suite measured under `suite`) gets no verdict under "
        "another protocol: its cell holds the value and the change (Δ) from the `suite` column, *moved* when the "
        "change leaves the golden's own band around the suite's value.",
        "",
        "## Variants",
        "",
        "| variant | kind | status | seconds (rope / drope) | NaN heads (rope / drope) | what it is |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for v in audit["variants"]:
        secs = {**{r: f"pass of {f}" for r, f in (v.get("pass_of") or {}).items()}, **(v.get("seconds") or {})}
        nan = v.get("attention_nan_heads") or {}
        shown = v.get("reason") if v["status"] != NOT_MEASURED else None  # said once, above the matrix
        state = v["status"] + (f": {shown}" if shown else "")
        out.append(f"| `{v['name']}` | {v['kind']} | {_md(state)} | {secs.get('rope', '-')} / {secs.get('drope', '-')} | "
                   f"{nan.get('rope', '-')} / {nan.get('drope', '-')} | {_md(v['description'])} |")
    out += ["", "## Matrix", ""]
    for reason, which in not_measured(audit).items():
        out += [f"Not measured here ({', '.join(f'`{n}`' for n in which)}): {_md(reason)}", ""]
    if heatmap:
        out += [f"![claims x variants]({heatmap})", ""]
    extra = " | reproduces the author's? |" if authored else " |"
    out += ["| claim | " + " | ".join(f"`{n}`" for n in names) + " | robustness" + extra,
            "| --- | " + " | ".join("---" for _ in names) + " | ---" + (" | --- |" if authored else " |")]
    for row in audit["claims"]:
        cells = " | ".join(_md(_cell_text(row, n)) for n in names)
        tail = f" {_md(row['reproduction']['verdict'])} |" if authored else ""
        out.append(f"| {_md(row['key'])} | {cells} | {_md(row['robustness']['verdict'])} |{tail}")
    if authored:
        out += [""] + _author_lines(audit)[:-1]
    out += ["", "## Robustness per claim", ""]
    for row in audit["claims"]:
        rob = row["robustness"]
        out.append(f"- **{row['key']}** ({row['status']}): *{rob['verdict']}* — {_md(rob['text'])}")
        for name in (n for n in names if n in row["cells"]):
            cell = row["cells"][name]
            if cell.get("error"):
                out.append(f"  - `{name}`: error: {_md(cell['error'])}")
            elif cell.get("read"):
                out.append(f"  - `{name}` reads {', '.join(cell['read'])}")
    out.append("")
    return "\n".join(out)


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def heatmap_png(audit: Mapping[str, Any]) -> bytes:
    """Claims x variants: green holds / red fails; goldens pale green (within band of suite) / orange (moved); grey n/a."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names = matrix_columns(audit)
    rows = audit["claims"]
    colours = ["#d9d9d9", "#d62728", "#ff7f0e", "#b7e4b0", "#2ca02c"]  # n/a, fails, moved, stable, holds
    grid = []
    for row in rows:
        line = []
        for n in names:
            cell = row[AUTHOR_COLUMN_KEY] if n == AUTHOR_COLUMN else row["cells"][n]
            if cell.get("value") is None:
                line.append(0)
            elif "holds" in cell:
                line.append(4 if cell["holds"] else 1)
            else:
                line.append(2 if cell.get("moved") else 3)
        grid.append(line)
    fig, ax = plt.subplots(figsize=(2.5 + 0.7 * len(names), 1.5 + 0.28 * max(1, len(rows))))
    ax.imshow(grid or [[0]], cmap=ListedColormap(colours), vmin=0, vmax=4, aspect="auto")
    labels_x = [f"{n} (source)" if n == AUTHOR_COLUMN else n for n in names]
    ax.set_xticks(range(len(names)), labels_x, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["key"] for r in rows], fontsize=7)
    ax.set_title(f"confound audit: {audit['pair']}", fontsize=10)
    labels = ["not evaluated / no value", "fails", "golden: moved out of band", "golden: within band of suite", "holds"]
    ax.legend(handles=[Patch(color=c, label=lab) for c, lab in zip(colours, labels, strict=True)],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_audit(result: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``measurements/<variant>.json``, ``audit-heatmap.png``, ``audit.json``, ``audit.md`` (in that order)."""
    from drope_check.atomic import atomic_write_bytes, atomic_write_text

    folder = Path(out_dir)
    (folder / "measurements").mkdir(parents=True, exist_ok=True)
    paths = [atomic_write_text(folder / "measurements" / f"{name}.json", json.dumps(doc, indent=1) + "\n")
             for name, doc in result["measurements"].items()]
    audit = result["audit"]
    paths.append(atomic_write_bytes(folder / HEATMAP_FILE, heatmap_png(audit)))
    paths.append(atomic_write_text(folder / "audit.json", json.dumps(audit, indent=1, allow_nan=False) + "\n"))
    paths.append(atomic_write_text(folder / "audit.md", render_markdown(audit)))
    return paths


# ----------------------------------------------------------------------------------------------
# the claims report's view of an audit


def find_audits(report_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """``audit.json`` files next to a claims report (``audit.json``, ``audit/<pair>/audit.json``)."""
    folder = Path(report_dir)
    found = []
    for path in [folder / "audit.json", *sorted(folder.glob("audit/*/audit.json"))]:
        if path.is_file():
            found.append((path, json.loads(path.read_text(encoding="utf-8"))))
    return found


def report_section(report_dir: str | Path) -> list[str]:
    """Markdown lines for the claims report: a link to each audit and every claim's robustness verdict."""
    audits = find_audits(report_dir)
    if not audits:
        return []
    out = ["## Robustness (confound audit)", ""]
    for path, audit in audits:
        rel = path.relative_to(Path(report_dir)).with_name("audit.md").as_posix()
        names = ", ".join(v["name"] for v in audit["variants"])
        out += [f"[{audit['pair']}: audit.md]({rel}) — variants {names}.", ""]
        if audit.get("reproduction"):
            out += [f"Author's files: {audit['reproduction']['line']}.", ""]
        unmeasured = not_measured(audit)
        if unmeasured and sum(map(len, unmeasured.values())) == len(audit["variants"]):
            # no suite column anywhere: one sentence, not the same reason on every claim
            out += [f"No suite variant measured ({'; '.join(sorted(unmeasured))}): no robustness "
                    f"verdict for its {len(audit['claims'])} claims; audit.md shows the author's files.", ""]
            continue
        out += ["| claim | robustness | why |", "| --- | --- | --- |"]
        for row in audit["claims"]:
            out.append(f"| {_md(row['key'])} | {_md(row['robustness']['verdict'])} | {_md(row['robustness']['text'])} |")
        out.append("")
    return out


# ----------------------------------------------------------------------------------------------
# command line: `drope-check audit`


def add_cli(sub: Any) -> None:
    """Register ``drope-check audit`` on the CLI's subparsers (cli.py calls this)."""
    parser = sub.add_parser("audit", help="re-judge every claim of a pair under each protocol variant (confound audit)")
    parser.add_argument("--pair", default="smollm2-135m", help="registered pair with an expected/<pair>.toml")
    parser.add_argument("--out-dir", type=Path, default=Path("audit"), help="where audit.md, audit.json, the heatmap go")
    parser.add_argument("--variants", default=None,
                        help="comma list (default: all; suite is always included); see README 'Confound audit'")
    parser.add_argument("--n-texts", type=int, default=FAITHFUL.n_texts,
                        help="texts of every variant (recorded in each protocol; goldens assume the default)")
    parser.add_argument("--wikitext", default=None, help="local WikiText-2 raw test file; env DROPE_CHECK_WIKITEXT")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--upstream", default=None,
                        help="the report author's result files for the author-files column (a git clone or a "
                        "<commit>/<path> folder); default $DROPE_CHECK_UPSTREAM, else the shipped copy")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=cli_audit)


def models_here(pair: str, device: str | None = None) -> tuple[bool, str]:
    """Whether the pair's models can be loaded here (on ``device``, when one is named), and if not
    why (never raises)."""
    try:
        from drope_check.models.availability import pair_available

        ok, reason = pair_available(pair, device=device)
    except Exception as exc:  # a broken engine is a reason not to measure, said in the audit
        return False, f"pair_available({pair!r}) raised {type(exc).__name__}: {exc}"
    return bool(ok), str(reason)


def summary_lines(pair: str, audit: Mapping[str, Any], where: Path) -> list[str]:
    """What the CLI and ``pytest --audit`` print for one audit: robustness counts, reproduction, the file."""
    s = audit["summary"]
    lines = [f"audit of {pair}: {ROBUST} {s[ROBUST]}, {FRAGILE} {s[FRAGILE]}, {UPSTREAM_ONLY} {s[UPSTREAM_ONLY]}, "
             f"{NOT_EVALUATED} {s[NOT_EVALUATED]}: {where}"]
    lines += [f"audit of {pair}: suite variants not measured: {reason}" for reason in sorted(not_measured(audit))]
    if audit.get("reproduction"):
        lines.append(f"audit of {pair}: {audit['reproduction']['line']}")
    return lines


def cli_audit(args: Any) -> int:
    """``drope-check audit``: user errors (unknown pair or variant, bad --n-texts or --upstream) exit 2 before
    any weights load. Without the pair's models, a pair with the author's files is audited without them
    (the ``author-files`` column filled, every variant *not measured* with the reason); any other pair exits 2."""
    from drope_check.measurements.measure import MeasureOptions
    from drope_check.models.pairs import get_pair
    from drope_check.sources.author_files import AuthorFilesBroken, locate_upstream

    try:
        get_pair(args.pair)
        claim_set = claims.load_claims(args.pair)
        get_variants(args.variants)
        base = FAITHFUL.replace(n_texts=args.n_texts)
        if args.upstream is not None:
            locate_upstream(args.upstream, [])
    except (KeyError, ValueError, FileNotFoundError, AuthorFilesBroken) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"drope-check audit: {message}", file=sys.stderr)
        return 2
    ok, why = models_here(args.pair, args.device)
    if not ok and not has_author_files(claim_set):
        print(f"drope-check audit: pair {args.pair} cannot be measured here ({why}) and its claims have no "
              "author-files tables: nothing to audit without its models", file=sys.stderr)
        return 2
    options = MeasureOptions(wikitext=args.wikitext, device=args.device, dtype=args.dtype, progress=not args.no_progress)
    start = time.perf_counter()
    result = run_audit(args.pair, args.variants, options=options, base=base, claim_set=claim_set,
                       progress=not args.no_progress, models_unavailable=None if ok else why,
                       author_files=lambda: default_author_files(args.upstream))
    write_audit(result, args.out_dir)
    audit = result["audit"]
    print(f"audit of {args.pair}: {len(audit['claims'])} claims x {len(audit['variants'])} variants in "
          f"{time.perf_counter() - start:.0f} s")
    for line in summary_lines(args.pair, audit, args.out_dir / "audit.md"):
        print(line)
    return 0


# ----------------------------------------------------------------------------------------------
# pytest claims/ --audit


def audit_session(config: Any, state: Any, pairs: Sequence[str], report_dir: str | None, options: Any,
                  pair_available: Callable[[str], tuple[bool, str]]) -> list[str]:
    """Run the audit of every pair of a pytest session; returns lines for the terminal summary.

    Writes ``<report_dir>/audit/<pair>/`` (``./audit/<pair>/`` without ``--claims-report``), where
    the claims report finds it. A pair whose models are not available here is audited without them
    when its claims have author-files tables (the ``author-files`` column from the session's copy of
    the author's files, every variant *not measured* with the reason); any other such pair is listed
    as not audited.
    """
    root = Path(report_dir) if report_dir else Path(".")
    if not root.is_absolute():
        root = Path(str(config.invocation_params.dir)) / root
    lines = []
    for pair in pairs:
        ok, reason = pair_available(pair)
        claim_set = state.claim_set(pair)
        if not ok and not has_author_files(claim_set):
            lines.append(f"audit of {pair}: not run ({reason})")
            continue
        out = root / "audit" / pair
        try:
            result = run_audit(pair, source=default_source(pair, options) if ok else None, claim_set=claim_set,
                               progress=True, models_unavailable=None if ok else reason, author_files=state.upstream)
        except AuditError as exc:
            lines.append(f"audit failed: {pair}: {exc}")
            continue
        write_audit(result, out)
        lines += summary_lines(pair, result["audit"], out / "audit.md")
    return lines
