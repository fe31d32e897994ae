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

Outputs (:func:`drope_check.audit.render.write_audit`): ``audit.json``, ``audit.md``, ``audit-heatmap.png`` and the
measurements of each variant under ``measurements/<variant>.json`` (with the per-sequence scores, so
a reader can recompute any threshold). Any non-finite number in a variant's measurements is an
:class:`AuditError` naming model, layer, quantity and variant; the one documented exception is
``fp16-eager``'s NaN heads, which are stored as ``null``, counted as non-sinks and counted.
"""

from __future__ import annotations

import datetime as _dt
import gc
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
    author_files_info,
    default_author_files,
    has_author_files,
    load_author_files,
    reproduction_summary,
    summary_line,
)
from drope_check.audit.cells import (
    FRAGILE,
    NOT_EVALUATED,
    NOT_MEASURED,
    ROBUST,
    SKIPPED,
    UPSTREAM_ONLY,
    audit_rows,
    needed_interventions,
)
from drope_check.audit.variants import ROLES, get_variants, measurement_key
from drope_check.claims import api as claims
from drope_check.engine.protocol import FAITHFUL, STATISTICS_FIELDS, Protocol
from drope_check.engine.sink_stats import derive_statistics

AUDIT_SCHEMA_VERSION = 1


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
    from drope_check.models.hub_download import resolve_pair
    from drope_check.models.loading import load_model
    from drope_check.models.pairs import get_pair

    options = options or MeasureOptions()
    texts = load_texts(base, options)
    # hub models as their local snapshots, downloaded first if needed: every variant loads from them
    spec = resolve_pair(
        get_pair(pair), progress=options.progress, trust_remote_code=options.trust_remote_code
    )

    def load(model_spec: Any, quantization: str | None) -> Any:
        # a 4-bit variant runs as upstream ran it, fp16 compute and activations (models.QUANTIZED_DTYPE), whatever --dtype
        dtype = None if quantization is not None else torch_dtype(options.dtype)
        return load_model(
            model_spec,
            bos_token=spec.bos_token,
            dtype=dtype,
            device=options.device,
            trust_remote_code=options.trust_remote_code,
            quantization=quantization,
            allow_incomplete_weights=options.allow_incomplete_weights,
            device_map=options.device_map,
            offload_folder=options.offload_folder,
        )

    def sequences(loaded: Any, protocol: Protocol) -> list[list[int]]:
        return token_sequences(texts, loaded.tokenizer, loaded.bos_token_id, protocol)

    return AuditSource(spec=spec, load=load, sequences=sequences, texts=texts, options=options)


# ----------------------------------------------------------------------------------------------
# claims under a variant


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
            raise AuditError(
                f"variant {variant}: model {role} ({model}): non-finite value {node} at {path} ({where})"
            )

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
            status[v.name] = {
                "status": SKIPPED,
                "reason": "bitsandbytes 4-bit needs a CUDA GPU; run "
                f"`drope-check audit --pair {pair} --variants {v.name}` (or tox -e audit-gpu) on a GPU runner",
            }
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
            say(
                f"audit: loading {role} ({model_spec.describe()}{', ' + quantization if quantization else ''})"
            )
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
                    results[(q, r, key)] = measure_model(
                        loaded, seqs, key, tuple(sorted(job["interventions"])), progress=progress, label=label
                    )
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
        doc = measurements_document(
            source.spec,
            protocols[v.name]["rope"],
            source.options or MeasureOptions(),
            source.texts,
            token_info.get(v.name, {}),
            models,
        )
        doc["variant"] = {
            "name": v.name,
            "description": v.description,
            "kind": v.kind,
            "quantization": v.quantization,
            "protocols": {r: protocols[v.name][r].to_dict() for r in ROLES},
        }
        check_finite(doc, v.name)
        status[v.name]["attention_nan_heads"] = {
            r: models[r]["scalars"].get("attention_nan_heads", 0) for r in ROLES
        }
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
        "variants": [
            {
                "name": v.name,
                "description": v.description,
                "kind": v.kind,
                "upstream_choice": v.upstream_choice,
                "protocols": {r: protocols[v.name][r].to_dict() for r in ROLES},
                **status[v.name],
            }
            for v in variants
        ],
        "claims": rows,
        "summary": {
            k: sum(1 for r in rows if r["robustness"]["verdict"] == k)
            for k in (ROBUST, FRAGILE, UPSTREAM_ONLY, NOT_EVALUATED)
        },
    }
    if files is not None:
        summary = reproduction_summary(rows)
        audit["author_files"] = author_files_info(files)
        audit["reproduction"] = {"summary": summary, "line": summary_line(summary)}
    return {"audit": audit, "measurements": docs}


# ----------------------------------------------------------------------------------------------
# outputs


# ----------------------------------------------------------------------------------------------
# the claims report's view of an audit


# ----------------------------------------------------------------------------------------------
# command line: `drope-check audit`


# ----------------------------------------------------------------------------------------------
# pytest claims/ --audit
