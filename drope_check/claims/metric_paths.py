"""Metric paths: where in a measurements dict (``docs/measurements-schema.md``) a claim reads its value.

``<root>:<steps>`` where ``<root>`` is ``rope`` or ``drope`` (that model's object,
``measurements["models"][root]``) or ``root`` (the whole measurements object). Steps: ``name``
(a dict key; keys may contain ``:`` and ``-``, e.g. ``bos_mlp_ablation:argmax-ratio``), ``.name``,
``["any key"]`` (a key with dots or brackets), ``[i]`` (list index, negative from the end) and
``[a:b]`` (a Python half-open slice; either bound may be omitted or negative). Examples:
``rope:scalars.sink_rate_average``, ``drope:layers.sink_rate[1]``, ``rope:layers.sink_rate[2:-1]``
(layers 2 .. L-2: for a 32-layer model, 2-30), ``drope:interventions.bos_mlp_ablation:argmax-ratio.ratio``.
Claim files may not count from the end (:mod:`drope_check.claims.claim_file` refuses ``[-1]``, ``[2:-1]``):
with explicit indices a model with another number of layers is an error, not a reading of other layers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PATH_ROOTS", "MetricPath", "MetricPathError", "parse_path", "resolve"]

PATH_ROOTS: tuple[str, ...] = ("rope", "drope", "root")


class MetricPathError(LookupError):
    """A metric path is not in the measurements (or has a bad syntax); names the claim and the path."""

    def __init__(
        self, path: str, detail: str, claim: str | None = None, missing_key: str | None = None
    ) -> None:
        self.path = path
        self.detail = detail
        self.claim = claim
        self.missing_key = missing_key  # the object key that is absent, when that is the problem
        prefix = f"claim {claim}: " if claim else ""
        super().__init__(f"{prefix}metric path {path!r}: {detail}")

    def __str__(self) -> str:  # LookupError would repr() a single argument
        return self.args[0]


# ----------------------------------------------------------------------------------------------
# metric paths


@dataclass(frozen=True)
class MetricPath:
    """A parsed metric path: the root and a tuple of steps ``("key", name)``, ``("index", i)``,
    ``("slice", start, stop)``."""

    text: str
    root: str
    steps: tuple[tuple[Any, ...], ...]

    @property
    def is_slice(self) -> bool:
        return any(step[0] == "slice" for step in self.steps)

    @property
    def is_ratio(self) -> bool:
        """Whether the path reads a ratio field (``....ratio``: a perplexity over its baseline)."""
        return bool(self.steps) and self.steps[-1] == ("key", "ratio")

    def layer_series(self) -> tuple[str, tuple[Any, ...]] | None:
        """``("sink_rate", step)`` when the path is ``layers.<series>[i]`` or ``layers.<series>[a:b]``."""
        if len(self.steps) == 3 and self.steps[0] == ("key", "layers") and self.steps[1][0] == "key":
            if self.steps[2][0] in ("index", "slice"):
                return self.steps[1][1], self.steps[2]
        return None


def _parse_int(text: str, path: str) -> int | None:
    text = text.strip()
    if text == "":
        return None
    if not re.fullmatch(r"[+-]?\d+", text):
        raise MetricPathError(path, f"{text!r} is not an integer index")
    return int(text)


def parse_path(path: str) -> MetricPath:
    """Parse ``<root>:<steps>`` (see the module docstring); raise :class:`MetricPathError` on bad syntax."""
    if not isinstance(path, str):
        raise MetricPathError(repr(path), "a metric path must be a string")
    root, sep, rest = path.partition(":")
    if not sep or root not in PATH_ROOTS:
        raise MetricPathError(path, f"must start with one of {', '.join(r + ':' for r in PATH_ROOTS)}")
    if not rest:
        raise MetricPathError(path, "nothing after the root")
    steps: list[tuple[Any, ...]] = []
    i, n = 0, len(rest)
    expect_key = True  # at the start and after "."
    while i < n:
        ch = rest[i]
        if ch == "[":
            if rest.startswith('["', i):
                end = rest.find('"]', i + 2)
                if end < 0:
                    raise MetricPathError(path, f'unterminated ["..."] at offset {i}')
                try:
                    key = json.loads(rest[i + 1 : end + 1])
                except json.JSONDecodeError as exc:
                    raise MetricPathError(path, f"bad quoted key at offset {i}: {exc}") from None
                steps.append(("key", key))
                i = end + 2
            else:
                end = rest.find("]", i)
                if end < 0:
                    raise MetricPathError(path, f"unterminated [ at offset {i}")
                inner = rest[i + 1 : end]
                if ":" in inner:
                    a, _, b = inner.partition(":")
                    steps.append(("slice", _parse_int(a, path), _parse_int(b, path)))
                else:
                    index = _parse_int(inner, path)
                    if index is None:
                        raise MetricPathError(path, f"empty [] at offset {i}")
                    steps.append(("index", index))
                i = end + 1
            expect_key = False
        elif ch == ".":
            if expect_key:
                raise MetricPathError(path, f"empty key at offset {i}")
            expect_key = True
            i += 1
        else:
            if not expect_key:
                raise MetricPathError(path, f"expected '.' or '[' at offset {i}")
            j = i
            while j < n and rest[j] not in ".[]" and not rest[j].isspace():
                j += 1
            if j == i:
                raise MetricPathError(path, f"unexpected {rest[i]!r} at offset {i}")
            steps.append(("key", rest[i:j]))
            i = j
            expect_key = False
    if expect_key:
        raise MetricPathError(path, "ends with '.'")
    return MetricPath(path, root, tuple(steps))


def _describe_step(step: tuple[Any, ...]) -> str:
    if step[0] == "key":
        return f".{step[1]}"
    if step[0] == "index":
        return f"[{step[1]}]"
    a = "" if step[1] is None else step[1]
    b = "" if step[2] is None else step[2]
    return f"[{a}:{b}]"


def resolve(
    measurements: Mapping[str, Any], path: str | MetricPath, claim: str | None = None, text: bool = False
) -> Any:
    """The value at ``path``: a number, or a list of numbers for a slice or a list-valued leaf;
    with ``text``, a non-empty string (a fact written as text, read by an ``equals`` band).

    Raises :class:`MetricPathError` naming the claim, the path and the first step that is missing.
    """
    parsed = path if isinstance(path, MetricPath) else parse_path(path)
    if parsed.root == "root":
        node: Any = measurements
        where = "root:"
    else:
        models = measurements.get("models") if isinstance(measurements, Mapping) else None
        if not isinstance(models, Mapping) or parsed.root not in models:
            have = sorted(models) if isinstance(models, Mapping) else []
            raise MetricPathError(
                parsed.text, f"no model {parsed.root!r} in the measurements (have {have})", claim
            )
        node = models[parsed.root]
        where = f"{parsed.root}:"
    for step in parsed.steps:
        shown = where
        if step[0] == "key":
            if not isinstance(node, Mapping):
                raise MetricPathError(
                    parsed.text, f"{shown} is a {type(node).__name__}, not an object", claim
                )
            if step[1] not in node:
                keys = sorted(map(str, node))
                more = "" if len(keys) <= 25 else f" (+{len(keys) - 25} more)"
                raise MetricPathError(
                    parsed.text,
                    f"no key {step[1]!r} under {shown}; available: {', '.join(keys[:25])}{more}",
                    claim,
                    missing_key=str(step[1]),
                )
            node = node[step[1]]
        else:
            if not isinstance(node, list):
                raise MetricPathError(parsed.text, f"{shown} is a {type(node).__name__}, not a list", claim)
            if step[0] == "index":
                if not -len(node) <= step[1] < len(node):
                    raise MetricPathError(
                        parsed.text, f"index {step[1]} out of range for {shown} (length {len(node)})", claim
                    )
                node = node[step[1]]
            else:
                node = node[step[1] : step[2]]
                if not node:
                    raise MetricPathError(
                        parsed.text, f"slice {_describe_step(step)} of {shown} is empty", claim
                    )
        shown_step = _describe_step(step)
        where += shown_step[1:] if where.endswith(":") and shown_step.startswith(".") else shown_step
    if node is None and parsed.steps and parsed.steps[-1][0] == "key":  # null: the source says "not measured"
        raise MetricPathError(
            parsed.text,
            "is null in the measurements (not measured)",
            claim,
            missing_key=str(parsed.steps[-1][1]),
        )
    if text:
        if not isinstance(node, str) or not node.strip():
            raise MetricPathError(
                parsed.text, f"is a {type(node).__name__}, not a text fact (a non-empty string)", claim
            )
        return node
    _check_numeric(node, parsed.text, claim)
    return node


def _check_numeric(node: Any, path: str, claim: str | None) -> None:
    if node is None:
        raise MetricPathError(path, "is null in the measurements (not measured?)", claim)
    if isinstance(node, bool) or not isinstance(node, (int, float, list)):
        raise MetricPathError(path, f"is a {type(node).__name__}, not a number or a list of numbers", claim)
    if isinstance(node, list):
        for item in node:
            _check_numeric(item, path, claim)
