"""Import the report author's committed result files as a llama2-7b measurements file.

``drope-check import-upstream SOURCE --out upstream.json [--era report|head]``

The report's numbers come from upstream's ``results/phase_metrics/rope_vs_drope_phase_metrics.json``
at several commits (DavidDemitriAfrica/drope-activations). This module reads that file at the
commits named in ``upstream_sources.toml`` (shipped with the package: which commit and JSON path
feed which field is data, not code) and writes a measurements JSON in this suite's schema
(``docs/measurements-schema.md``) for pair ``llama2-7b``, so that the claims can be judged against
the author's own files on any machine.

* SOURCE is a git clone of the upstream repository (each file read with ``git show COMMIT:PATH``)
  or a folder laid out ``<commit>/<path>`` (``shared/data/upstream-results``).
* Every value carries its provenance in ``models.<m>.field_provenance["<field path>"]``: repository,
  commit, file, JSON path, the protocol that produced it (text set, quantisation, method) and
  whether it was derived. Values that differ in protocol therefore never look alike.
* Fields upstream never measured are absent. Derived values (argmax, means over layers, ratios)
  are computed with :mod:`drope_check.engine.metrics` and marked ``derived``.
* A NaN or infinite number can never be imported: the JSON's NaN literals are parsed, then any
  selected value that is not finite is refused with a sentence naming commit, file and JSON path
  (upstream's 90f8e3c DroPE phase arrays are NaN / 0, which is why the report era reads them at
  16a5164). Each value also passes a check of what it must be (a perplexity is >= 1, a layer index
  lies in [0, L), a rate in [0, 1]), so upstream's 0 for a run that never happened is refused too.
  The one exception is evidence ABOUT non-finite values (check ``nonfinite_evidence``): 90f8e3c's
  DroPE BOS norms [44.2, NaN x 31] come from eager attention in fp16, which is what the report's
  "DroPE produces NaN values ... with eager attention" is about. What is imported then is a finite
  count (``transform``: the number of non-finite layers, the first of them), never the NaN.
* Facts about the author's code (a protocol's ``method`` table) and about the models (``[models.<m>]``)
  are imported as ``provenance.method.<fact>`` strings, each with its own field provenance, so the
  report's Methods statements are judged against them like any number.

Errors in the input (a missing commit, file or key, malformed JSON, a value that fails its check)
raise :class:`UpstreamImportError`, one sentence naming what is wrong; the CLI exits 2 with it.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from drope_check.atomic import atomic_write_json
from drope_check.numbers import has_non_finite_float, is_number
from drope_check.sources.commits import CommitReader, open_source
from drope_check.sources.field_provenance import FieldProvenance, field_key
from drope_check.sources.table import (
    SOURCES_FILE,
    UpstreamImportError,
    load_sources,
)

__all__ = ["ERAS", "import_upstream", "main"]

ERAS: tuple[str, ...] = ("report", "head")
PAIR = "llama2-7b"


# ----------------------------------------------------------------------------------------------
# the shipped mapping


# ----------------------------------------------------------------------------------------------
# reading a file at a commit


# ----------------------------------------------------------------------------------------------
# checks on every imported value


def _check_value(check: str, value: Any, n_layers: int) -> str | None:
    """Why ``value`` is not what ``check`` says it must be, or None."""
    if check == "nonfinite_evidence":  # NaN allowed: it is what the field counts
        if not isinstance(value, list) or len(value) != n_layers or not all(is_number(v) for v in value):
            return f"is not a list of {n_layers} numbers (one per layer)"
        return None
    if check.startswith("per_layer"):
        if not isinstance(value, list) or len(value) != n_layers or not all(is_number(v) for v in value):
            return f"is not a list of {n_layers} numbers (one per layer)"
        if check == "per_layer_positive" and any(v <= 0 for v in value):
            return f"must be > 0 at every layer, but layer {next(i for i, v in enumerate(value) if v <= 0)} is {fmt_value(value)}"
        if check == "per_layer_fraction" and any(not 0 <= v <= 1 for v in value):
            return "must lie in [0, 1] at every layer"
        return None
    if check == "perplexity":
        if not is_number(value) or value < 1:
            return f"is {value!r}, not a perplexity (>= 1; upstream writes 0 for a run that never happened)"
        return None
    if check == "layer_index":
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n_layers:
            return f"is {value!r}, not a layer index in [0, {n_layers})"
        return None
    raise UpstreamImportError(f"unknown check {check!r} in {SOURCES_FILE}")


#: How a ``nonfinite_evidence`` list becomes a finite number (the only values that may hold NaN).
TRANSFORMS = {
    "count_nonfinite": lambda values: sum(1 for v in values if not math.isfinite(v)),
    "first_nonfinite": lambda values: next((i for i, v in enumerate(values) if not math.isfinite(v)), None),
}


def fmt_value(value: Any) -> str:
    """A short form of a value for an error sentence."""
    if isinstance(value, list):
        return f"[{', '.join(repr(v) for v in value[:3])}{', ...' if len(value) > 3 else ''}] ({len(value)} values)"
    return repr(value)


# ----------------------------------------------------------------------------------------------
# provenance


# ----------------------------------------------------------------------------------------------
# derived values: one drope_check.engine.metrics function per rule


def _derive(rule: str, inputs: list[Any]) -> Any:
    from drope_check.engine import metrics

    if rule == "layer_mean":
        return metrics.layer_mean(inputs[0])
    if rule == "argmax_layer":
        return metrics.argmax_layer(inputs[0])
    if rule == "argmin_layer":
        return metrics.argmin_layer(inputs[0])
    if rule == "value_at_argmax":
        return inputs[0][metrics.argmax_layer(inputs[0])]
    if rule == "value_at_argmin":
        return inputs[0][metrics.argmin_layer(inputs[0])]
    if rule == "perplexity_ratio":
        return metrics.perplexity_ratio(inputs[0], inputs[1])
    raise UpstreamImportError(f"unknown derivation rule {rule!r} in {SOURCES_FILE}")


# ----------------------------------------------------------------------------------------------
# the import


def _get(node: Mapping[str, Any], path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _set(node: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def _json_get(data: Any, json_path: str) -> tuple[bool, Any]:
    node = data
    for key in json_path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _import_model(
    role: str,
    uses: list[Mapping[str, Any]],
    table: Mapping[str, Any],
    source: CommitReader,
    files: dict[str, str],
) -> dict[str, Any]:
    repo = table["repository"]
    n_layers = int(repo["n_layers"])
    spec = table["models"][role]
    model: dict[str, Any] = {
        "role": role,
        "variant": spec["variant"],
        "provenance": {
            "model_id": spec["model_id"],
            "source": f"author's committed results ({repo['name']}), imported by drope-check import-upstream",
            "dtype": "bitsandbytes 4-bit, fp16 compute (NF4 or FP4 per field: see field_provenance)",
            "attention_path": "upstream (see field_provenance)",
            "device": "upstream: one NVIDIA A10G (24 GB)",
        },
        "n_layers": n_layers,
        "n_heads": int(repo["n_heads"]),
    }
    prov: dict[str, dict[str, Any]] = {}
    for use in uses:
        commit, protocol_name = use["commit"], use["protocol"]
        protocol = dict(table["protocols"][protocol_name])
        src = table["sources"][use["source"]]
        data, sha = source.read_json(commit, repo["file"])
        files[commit] = sha
        for entry in src.get("fields", []):
            json_path = entry["json_path"].replace("{model}", spec["upstream_key"])
            found, value = _json_get(data, json_path)
            where = f"{repo['file']} at commit {commit[:7]} ({source.describe()})"
            if not found:
                raise UpstreamImportError(
                    f"{where} has no key {json_path} (needed for {role} {field_key(entry['field'])})"
                )
            if entry["check"] == "nonfinite_evidence":
                why = _check_value(entry["check"], value, n_layers)
                if why is not None:
                    raise UpstreamImportError(
                        f"{where}: {json_path} {why}; it cannot feed {role} {field_key(entry['field'])}"
                    )
                transform = TRANSFORMS.get(entry.get("transform", ""))
                if transform is None:
                    raise UpstreamImportError(
                        f"{SOURCES_FILE}: a nonfinite_evidence field needs a transform "
                        f"({', '.join(TRANSFORMS)}), got {entry.get('transform')!r}"
                    )
                value = transform(value)
                if value is None:  # no non-finite layer: there is nothing to count from
                    continue
                _set(model, entry["field"], value)
                prov[field_key(entry["field"])] = FieldProvenance(
                    repo["name"],
                    commit,
                    repo["file"],
                    json_path,
                    protocol_name,
                    protocol,
                    derived=True,
                    rule=entry["transform"],
                    inputs=(json_path,),
                    note=f"{entry['transform']} of {json_path}, whose non-finite entries are the evidence",
                ).to_dict()
                continue
            if has_non_finite_float(value):
                raise UpstreamImportError(
                    f"{where}: {json_path} holds NaN or inf {fmt_value(value)}; a non-finite number is never imported "
                    f"(it would feed {role} {field_key(entry['field'])})"
                )
            why = _check_value(entry["check"], value, n_layers)
            if why is not None:
                raise UpstreamImportError(
                    f"{where}: {json_path} {why}; it cannot feed {role} {field_key(entry['field'])}"
                )
            _set(model, entry["field"], value)
            prov[field_key(entry["field"])] = FieldProvenance(
                repo["name"], commit, repo["file"], json_path, protocol_name, protocol, derived=False
            ).to_dict()
            _name_protocol(model, entry["field"], protocol)
        for entry in src.get("constants", []):
            if "from_model" in entry:
                key, value, origin = entry["from_model"], spec[entry["from_model"]], f"[models.{role}]"
            else:
                key, value, origin = (
                    entry["from_protocol"],
                    protocol[entry["from_protocol"]],
                    f"protocol {protocol_name}",
                )
            # a table of facts (a protocol's `method`) is imported fact by fact, each with its provenance
            items = value.items() if isinstance(value, Mapping) else [(None, value)]
            for name, item in items:
                path = list(entry["field"]) + ([name] if name is not None else [])
                _set(model, path, item)
                prov[field_key(path)] = FieldProvenance(
                    repo["name"],
                    commit,
                    repo["file"],
                    None,
                    protocol_name,
                    protocol,
                    derived=False,
                    note=f"not a number of the results file: {origin}'s {key}{'.' + name if name else ''} "
                    f"({protocol.get('source', 'upstream code')})",
                ).to_dict()
    for entry in table.get("derived", []):
        values = [_get(model, path) for path in entry["inputs"]]
        if any(v is None for v in values):
            continue  # an input upstream never measured in this era: the derived field is absent too
        sources = [prov[field_key(path)] for path in entry["inputs"]]
        names = {s["protocol"]["name"] for s in sources}
        if len(names) != 1:
            raise UpstreamImportError(
                f"{SOURCES_FILE}: {role} {field_key(entry['field'])} would combine values from protocols "
                f"{', '.join(sorted(names))}; a derived value never crosses protocols"
            )
        try:
            value = _derive(entry["rule"], values)
        except ValueError as exc:
            raise UpstreamImportError(
                f"{role} {field_key(entry['field'])} cannot be derived ({entry['rule']}): {exc}"
            ) from None
        _set(model, entry["field"], value)
        first = sources[0]
        prov[field_key(entry["field"])] = FieldProvenance(
            first["repository"],
            first["commit"],
            first["file"],
            None,
            first["protocol"]["name"],
            {k: v for k, v in first["protocol"].items() if k != "name"},
            derived=True,
            rule=entry["rule"],
            inputs=tuple(field_key(p) for p in entry["inputs"]),
        ).to_dict()
    model["field_provenance"] = dict(sorted(prov.items()))
    return model


def _name_protocol(model: dict[str, Any], path: Sequence[str], protocol: Mapping[str, Any]) -> None:
    """Every ``perplexity.<p>`` and ``interventions.<name>`` entry names its perplexity protocol."""
    if len(path) == 3 and path[0] in ("perplexity", "interventions") and "perplexity_protocol" in protocol:
        entry = model[path[0]][path[1]]
        entry["protocol"] = protocol["perplexity_protocol"]
        if path[0] == "interventions":
            entry.setdefault("intervention", path[1])
            entry.setdefault("kind", path[1].split(":")[0])


def import_upstream(
    source: str | Path, era: str = "report", sources_table: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The measurements dict (schema version 1, pair llama2-7b) of the author's files in ``era``."""
    table = sources_table if sources_table is not None else load_sources()
    if era not in table["eras"]:
        raise UpstreamImportError(f"unknown era {era!r} (known: {', '.join(table['eras'])})")
    src = open_source(source)
    uses = table["eras"][era]["uses"]
    files: dict[str, str] = {}
    models = {
        role: _import_model(role, [u for u in uses if u["model"] == role], table, src, files)
        for role in table["models"]
    }
    from drope_check import __version__

    repo = table["repository"]
    return {
        "schema_version": 1,
        "tool": {"name": "drope_check", "version": __version__},
        "pair": PAIR,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "protocol": {
            "name": f"upstream-author-files:{era}",
            "era": era,
            "description": table["eras"][era]["description"],
        },
        "texts": {
            "name": "upstream-author-files",
            "source": repo["name"],
            "selection": "differs per field: see models.<model>.field_provenance.<field>.protocol.text_set",
            "n_texts": None,
            "sha256": None,
        },
        "environment": {
            "device": "upstream: one NVIDIA A10G (24 GB)",
            "platform": "author's committed results",
        },
        "upstream": {
            "repository": repo["name"],
            "licence": repo.get("licence"),
            "file": repo["file"],
            "era": era,
            "source": src.describe(),
            "files_sha256": dict(sorted(files.items())),
        },
        "models": models,
    }


# ----------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``import-upstream`` options (shared by ``drope-check import-upstream`` and :func:`main`)."""
    parser.add_argument(
        "source",
        type=Path,
        help="a git clone of DavidDemitriAfrica/drope-activations, or a <commit>/<path> folder",
    )
    parser.add_argument("--out", required=True, type=Path, help="measurements JSON to write")
    parser.add_argument(
        "--era",
        choices=ERAS,
        default="report",
        help="'report': the commits the report quotes (default); 'head': upstream's HEAD rerun",
    )


def run(args: argparse.Namespace) -> int:
    """Import and write; an input error is one sentence on stderr and exit 2."""

    try:
        measurements = import_upstream(args.source, args.era)
    except UpstreamImportError as exc:
        print(f"drope-check import-upstream: {exc}", file=sys.stderr)
        return 2
    atomic_write_json(args.out, measurements)
    n = sum(len(m["field_provenance"]) for m in measurements["models"].values())
    print(
        f"wrote {args.out}: {n} fields of pair {PAIR} from {measurements['upstream']['source']} (era {args.era})"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m drope_check.sources.upstream SOURCE --out FILE [--era head]``."""
    parser = argparse.ArgumentParser(prog="drope-check import-upstream", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
