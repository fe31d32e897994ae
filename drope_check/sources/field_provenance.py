"""Field provenance of an imported value: repository, commit, file, JSON path and protocol, per field path."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from drope_check.claims.metric_paths import parse_path


def field_key(path: Sequence[str]) -> str:
    """The key of a field in ``field_provenance``: the path as in a claim's metric path, without root.

    ``["interventions", "bos_mlp_ablation:argmax-ratio", "ppl"]`` ->
    ``interventions.bos_mlp_ablation:argmax-ratio.ppl``; a key holding ``.`` or brackets is written
    ``["..."]`` as the claim paths do.
    """
    parts = []
    for i, key in enumerate(path):
        if any(ch in key for ch in '.[]" ') or not key:
            parts.append(f"[{json.dumps(key)}]")
        else:
            parts.append(key if i == 0 else f".{key}")
    return "".join(parts)


@dataclass(frozen=True)
class FieldProvenance:
    """Where one imported value came from (``models.<m>.field_provenance[<field key>]``)."""

    repository: str
    commit: str
    file: str
    json_path: str | None
    protocol_name: str
    protocol: Mapping[str, Any]
    derived: bool
    rule: str | None = None
    inputs: tuple[str, ...] = ()
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "repository": self.repository,
            "commit": self.commit,
            "file": self.file,
            "json_path": self.json_path,
            # a copy per field: nested tables (method, run) must not be one object shared by every field
            "protocol": copy.deepcopy({"name": self.protocol_name, **self.protocol}),
            "derived": self.derived,
        }
        if self.derived:
            out["rule"] = self.rule
            out["inputs"] = list(self.inputs)
        if self.note:
            out["note"] = self.note
        return out


def field_provenance_for(measurements: Mapping[str, Any], metric_path: str) -> dict[str, Any] | None:
    """The provenance of the value a claim's metric path reads, or None when the file has none.

    ``rope:layers.sink_rate[1]`` -> ``models.rope.field_provenance["layers.sink_rate"]``: index and
    slice steps are dropped, then the longest recorded prefix of the remaining keys wins.
    """

    parsed = parse_path(metric_path)
    if parsed.root == "root":
        return None
    model = (measurements.get("models") or {}).get(parsed.root) or {}
    table = model.get("field_provenance") or {}
    keys = [step[1] for step in parsed.steps if step[0] == "key"]
    for n in range(len(keys), 0, -1):
        entry = table.get(field_key(keys[:n]))
        if entry is not None:
            return dict(entry)
    return None
