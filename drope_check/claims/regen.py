"""``--regen-expected``: rewrite suite-measured values in ``expected/<pair>.toml``, never report-derived ones.

The only module that writes a claim file.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drope_check.atomic import atomic_write_text
from drope_check.claims.bands import fmt
from drope_check.claims.claim_file import Claim, ClaimsFileError
from drope_check.claims.metric_paths import MetricPathError
from drope_check.claims.protocol_identity import identity_for_claim
from drope_check.claims.verdicts import (
    Verdict,
    base_verdict,
    claim_value,
    protocol_mismatch,
    text_set_mismatch,
)
from drope_check.numbers import first_non_finite

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["measured_how_text", "regen_expected", "regen_verdict", "toml_value", "updates_from_verdicts"]

# ----------------------------------------------------------------------------------------------
# --regen-expected: rewrite suite-measured values, never report-derived ones

_REGEN_KEYS = ("value", "measured", "measured_how", "pending", "texts_sha256", "protocol")
#: A ``key = ...`` line of a claim's own keys (TOML bare keys: letters, digits, ``_`` and ``-``).
_KEY_LINE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def toml_value(x: Any) -> str:
    """A TOML literal for a number, string or list (floats kept to 8 significant digits)."""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"cannot record a non-finite golden ({x})")
        if x.is_integer() and abs(x) < 1e15:
            return f"{x:.1f}"
        return repr(float(f"{x:.8g}"))
    if isinstance(x, str):
        return json.dumps(x, ensure_ascii=False)
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in x) + "]"
    if isinstance(x, Mapping):
        for key in x:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", str(key)):
                raise ValueError(f"cannot write key {key!r} as a bare TOML key")
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in x.items()) + " }"
    raise TypeError(f"cannot write {type(x).__name__} to TOML")


def _block_bounds(lines: list[str]) -> list[tuple[int, int]]:
    """(start, end) line ranges of each ``[[claim]]``'s own keys (up to its next table header)."""
    header = re.compile(r"^\s*\[")
    starts = [i for i, line in enumerate(lines) if re.match(r"^\s*\[\[\s*claim\s*\]\]\s*(#.*)?$", line)]
    bounds = []
    for s in starts:
        e = s + 1
        while e < len(lines) and not header.match(lines[e]):
            e += 1
        bounds.append((s + 1, e))
    return bounds


def regen_expected(path: str | Path, updates: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[str]:
    """Rewrite measured values in a claim file and return the keys of the claims changed.

    ``updates`` maps ``(id, model)`` to ``{"measured_value": x, "measured_how": text}``. Only claims
    whose status is ``golden`` (their ``value``) or ``does-not-generalise`` (their ``measured``) are
    touched; ``pending`` is removed. Every other byte of the file stays as it was, and the result
    is re-parsed and compared with the original: if anything but those keys of those claims moved,
    nothing is written. A report-derived value can therefore never be overwritten.
    """
    file = Path(path)
    text = file.read_text(encoding="utf-8")
    before = tomllib.loads(text)
    lines = text.splitlines(keepends=True)
    raw_claims = before.get("claim", [])
    bounds = _block_bounds(lines)
    if len(bounds) != len(raw_claims):
        raise ClaimsFileError(
            file, None, "claim", "cannot regenerate: [[claim]] headers must each stand on their own line"
        )
    changed: list[str] = []
    edits: list[tuple[int, int, list[str]]] = []
    for (start, end), raw in zip(bounds, raw_claims, strict=True):
        key = (raw.get("id"), raw.get("model"))
        if key not in updates:
            continue
        status = raw.get("status")
        if status not in ("golden", "does-not-generalise"):
            continue
        update = updates[key]
        target = "value" if status == "golden" else "measured"
        new = {target: update["measured_value"], "measured_how": update["measured_how"]}
        if update.get("texts_sha256"):
            new["texts_sha256"] = update["texts_sha256"]
        if update.get("protocol"):
            new["protocol"] = update["protocol"]
        block = lines[start:end]
        kept: list[str] = []
        for line in block:
            m = _KEY_LINE.match(line)
            if m and m.group(1) in (target, "measured_how", "pending", "texts_sha256", "protocol"):
                continue  # dropped and re-added below
            kept.append(line)
        # insert after the last non-blank, non-comment line of the claim's own keys
        at = len(kept)
        while at > 0 and (not kept[at - 1].strip() or kept[at - 1].lstrip().startswith("#")):
            at -= 1
        inserted = [f"{k} = {toml_value(v)}\n" for k, v in new.items()]
        edits.append((start, end, kept[:at] + inserted + kept[at:]))
        changed.append(f"{key[0]}[{before.get('pair', {}).get('name', '?')}:{key[1]}]")
    for start, end, replacement in sorted(edits, reverse=True):
        lines[start:end] = replacement
    new_text = "".join(lines)
    try:
        after = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError as exc:
        raise ClaimsFileError(
            file,
            None,
            None,
            f"cannot regenerate (is a value, measured or measured_how spread over several lines?): {exc}",
        ) from None
    # nothing but the regenerated keys of the regenerated claims may differ
    if {k: v for k, v in before.items() if k != "claim"} != {k: v for k, v in after.items() if k != "claim"}:
        raise ClaimsFileError(file, None, None, "regeneration would change the [pair] table; nothing written")
    for old, new_raw in zip(before["claim"], after["claim"], strict=True):
        strip = (
            _REGEN_KEYS
            if (old.get("id"), old.get("model")) in updates
            and old.get("status") in ("golden", "does-not-generalise")
            else ()
        )
        if {k: v for k, v in old.items() if k not in strip} != {
            k: v for k, v in new_raw.items() if k not in strip
        }:
            raise ClaimsFileError(
                file, old.get("id"), None, "regeneration would change a report-derived key; nothing written"
            )
        if old.get("status") == "does-not-generalise" and old.get("value") != new_raw.get("value"):
            raise ClaimsFileError(
                file,
                old.get("id"),
                "value",
                "the report's value of a does-not-generalise claim is never rewritten",
            )
    if new_text != text:
        atomic_write_text(file, new_text)
    return changed


def updates_from_verdicts(
    verdicts: list[Mapping[str, Any]],
) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """pair -> ``(id, model)`` -> what :func:`regen_expected` writes, from ``regenerated`` verdict dicts."""
    by_pair: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for v in verdicts:
        if v["status"] not in ("golden", "does-not-generalise") or v["measured"] is None:
            continue
        if v["outcome"] == "error" or not v.get("measured_how"):
            continue
        by_pair.setdefault(v["pair"], {})[(v["id"], v["model"])] = {
            "measured_value": v["measured"],
            "measured_how": v["measured_how"],
            "texts_sha256": v.get("texts_sha256"),
            "protocol": v.get("protocol_identity"),
        }
    return by_pair


def measured_how_text(measurements: Mapping[str, Any], claim: Claim, origin: str = "") -> str:
    """How, where and with what settings a golden was measured, from the measurements' provenance."""
    tool = measurements.get("tool") or {}
    env = measurements.get("environment") or {}
    texts = measurements.get("texts") or {}
    roles = ("rope", "drope") if claim.model == "pair" else (claim.model,)
    models = []
    for role in roles:
        model = (measurements.get("models") or {}).get(role) or {}
        prov = model.get("provenance") or {}
        ident = prov.get("model_id", "?")
        rev = prov.get("revision") or prov.get("weights_sha256")
        if isinstance(rev, Mapping):
            rev = ",".join(f"{k}:{str(v)[:12]}" for k, v in sorted(rev.items()))
        elif isinstance(rev, str):
            rev = rev[:12]
        models.append(
            f"{role}={ident}{'@' + str(rev) if rev else ''} variant {model.get('variant', '?')}, dtype "
            f"{prov.get('dtype', '?')}, attention {prov.get('attention_path', '?')}, {prov.get('n_tokens', '?')} tokens"
        )
    protocol = json.dumps(measurements.get("protocol", {}), sort_keys=True, separators=(",", ":"))
    where = ", ".join(f"{k} {env[k]}" for k in ("device", "gpu", "platform") if k in env)
    libs = ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "transformers") if k in env)
    via = f" from {origin}" if origin else ""
    return (
        f"drope_check {tool.get('version', '?')} `pytest claims/ --pair {claim.pair} --regen-expected`{via}, "
        f"measured {measurements.get('created', '?')} on {where or '?'} ({libs}); "
        f"{'; '.join(models)}; texts {texts.get('name', '?')} n={texts.get('n_texts', '?')} "
        f"sha256 {str(texts.get('sha256', '?'))[:12]}; protocol {protocol}"
    )


def regen_verdict(claim: Claim, measurements: Mapping[str, Any], measured_how: str) -> Verdict:
    """Under ``--regen-expected``: the value to record for a golden or does-not-generalise claim.

    Pending claims are measured too (that is the point of regenerating). The outcome is
    ``regenerated``; for a does-not-generalise claim the reason says whether the report's claim
    still fails on this pair (as recorded) or now holds (then its status must change by hand).
    """
    if claim.status not in ("golden", "does-not-generalise"):
        raise ValueError(f"{claim.key}: only goldens and does-not-generalise claims are regenerated")
    try:
        measured = claim_value(claim, measurements)
    except MetricPathError as exc:
        return base_verdict(claim, outcome="error", reason=str(exc))
    bad = first_non_finite(measured)
    if bad is not None:
        return base_verdict(
            claim,
            measured=measured,
            outcome="error",
            reason=f"cannot record a non-finite value ({fmt(bad)}) as {claim.key}",
        )
    verdict = base_verdict(
        claim,
        measured=measured,
        outcome="regenerated",
        measured_how=measured_how,
        command=claim.regen_command(),
        texts_sha256=(measurements.get("texts") or {}).get("sha256"),
        protocol_identity=identity_for_claim(measurements, claim.model, claim.metrics),
    )
    moved = protocol_mismatch(claim, measurements) or text_set_mismatch(claim, measurements)
    note = (
        "; NOTE: the protocol or text set differs from the recorded one, the new one is recorded"
        if moved
        else ""
    )
    if claim.status == "golden":
        verdict.reason = f"golden regenerated: {fmt(measured)} (was {fmt(claim.value)}){note}"
        return verdict
    assert claim.band is not None
    result = claim.band.check(measured, claim.value)
    verdict.passed, verdict.margin, verdict.margin_text = result.passed, result.margin, result.margin_text
    if result.passed:
        verdict.reason = (
            f"recorded measured value {fmt(measured)}; WARNING: the report's claim now HOLDS on {claim.pair} "
            f'({result.margin_text}): change its status to "claim" in {Path(claim.source_file).name}'
        )
    else:
        verdict.reason = (
            f"recorded measured value {fmt(measured)}: still does not generalise ({result.margin_text})"
        )
    return verdict
