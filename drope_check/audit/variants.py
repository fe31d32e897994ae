"""Named protocol variants of the confound audit: each a preset of :class:`~drope_check.engine.protocol.Protocol`.

Every variant is a set of protocol field changes, per model where upstream treated the two models
differently (``padded-rope`` pads only the RoPE model, as upstream did). Variants compose
(:func:`compose`): ``upstream`` is the composition of upstream's single choices. ``suite`` changes
nothing. A variant whose changes are all :data:`~drope_check.engine.protocol.STATISTICS_FIELDS` (tau, the
strict comparison, the t = 0 self term, the spike rule) is *statistics-only*: the audit derives it
from the ``suite`` pass's per-sequence scores and never re-runs a model for it.

The table of variants in docs/audit.md lists the same presets as :data:`VARIANTS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from drope_check.engine.protocol import FAITHFUL, STATISTICS_FIELDS, Protocol

ROLES: tuple[str, ...] = ("rope", "drope")

#: Kinds of variant: measured on any machine, derived from another pass's statistics, or GPU-only.
KINDS: tuple[str, ...] = ("measured", "statistics", "gpu")


def _frozen(changes: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(changes))


@dataclass(frozen=True)
class Variant:
    """One named measurement choice.

    ``changes`` maps each role (``rope``, ``drope``) to the protocol fields it sets; ``quantization``
    is the bitsandbytes load the variant needs (GPU only); ``upstream_choice`` says whether this is
    one of the choices upstream actually made (used for the robustness verdict "holds only under
    upstream's choices").
    """

    name: str
    description: str
    changes: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {r: _frozen({}) for r in ROLES})
    quantization: str | None = None
    upstream_choice: bool = False

    def __post_init__(self) -> None:
        if set(self.changes) != set(ROLES):
            raise ValueError(
                f"variant {self.name!r}: changes must name exactly the roles {ROLES}, got {sorted(self.changes)}"
            )
        known = {f.name for f in dataclasses.fields(Protocol)} - {"name"}
        for role, fields in self.changes.items():
            unknown = set(fields) - known
            if unknown:
                raise ValueError(
                    f"variant {self.name!r}, {role}: unknown protocol field(s) {sorted(unknown)}"
                )
        for role in ROLES:  # fail at definition time, not after a model has loaded
            self.protocol(role)

    @property
    def kind(self) -> str:
        """``gpu`` (needs bitsandbytes), ``statistics`` (derived, no forward) or ``measured``."""
        if self.quantization is not None:
            return "gpu"
        changed = {f for role in ROLES for f in self.changes[role]}
        return "statistics" if changed and changed <= set(STATISTICS_FIELDS) else "measured"

    def fields(self, role: str) -> dict[str, Any]:
        """The protocol fields this variant sets for ``role``."""
        return dict(self.changes[role])

    def protocol(self, role: str, base: Protocol = FAITHFUL) -> Protocol:
        """``base`` with this variant's fields for ``role``; named after the variant unless it changes nothing."""
        fields = self.fields(role)
        if not fields and self.quantization is None:
            return base
        return base.replace(name=self.name, **fields)


def variant(
    name: str,
    description: str,
    both: Mapping[str, Any] | None = None,
    *,
    rope: Mapping[str, Any] | None = None,
    drope: Mapping[str, Any] | None = None,
    quantization: str | None = None,
    upstream_choice: bool = False,
) -> Variant:
    """A :class:`Variant` from changes for both models (``both``) and/or per model."""
    per = {r: {**(both or {}), **((rope if r == "rope" else drope) or {})} for r in ROLES}
    return Variant(name, description, {r: _frozen(per[r]) for r in ROLES}, quantization, upstream_choice)


def compose(name: str, description: str, parts: Iterable[Variant], upstream_choice: bool = False) -> Variant:
    """The variant making every choice of ``parts`` at once; two parts setting one field differently is an error."""
    parts = list(parts)
    per: dict[str, dict[str, Any]] = {r: {} for r in ROLES}
    quantization = None
    for part in parts:
        for role in ROLES:
            for key, value in part.changes[role].items():
                if key in per[role] and per[role][key] != value:
                    raise ValueError(
                        f"variant {name!r}: {part.name!r} sets {role}.{key} = {value!r}, another part "
                        f"{per[role][key]!r}"
                    )
                per[role][key] = value
        if part.quantization is not None:
            if quantization not in (None, part.quantization):
                raise ValueError(
                    f"variant {name!r}: two quantizations {quantization!r} and {part.quantization!r}"
                )
            quantization = part.quantization
    return Variant(name, description, {r: _frozen(per[r]) for r in ROLES}, quantization, upstream_choice)


UPSTREAM_PAD_TO = 512
UPSTREAM_PROMPT_TOKENS = (6, 12)

SUITE = variant("suite", "the suite's default protocol (drope_check.engine.protocol.FAITHFUL)")
NO_ROTARY = variant(
    "no-rotary",
    "attention to BOS from raw q_proj / k_proj outputs, no rotary step (upstream's manual Q/K), both models",
    {"attention_source": "projections"},
    upstream_choice=True,
)
PADDED_ROPE = variant(
    "padded-rope",
    f"RoPE right-padded to {UPSTREAM_PAD_TO} with pad rows kept in entropy, BOS ratio and sink "
    "statistics; DroPE unpadded (upstream)",
    rope={"pad_to": UPSTREAM_PAD_TO, "padding_in_stats": True},
    upstream_choice=True,
)
PADDED = variant(
    "padded",
    f"both models right-padded to {UPSTREAM_PAD_TO} with pad rows kept in the statistics",
    {"pad_to": UPSTREAM_PAD_TO, "padding_in_stats": True},
)
FP16_EAGER = variant(
    "fp16-eager",
    "attention weights with eager's fp16 arithmetic (q.k^T in fp16, then scaling, then softmax); "
    "NaN heads count as non-sinks, their number reported (scalars.attention_nan_heads)",
    {"stats_dtype": "fp16-eager"},
    upstream_choice=True,
)
SHORT_PROMPTS = variant(
    "short-prompts",
    "each sequence cut to 6-12 tokens after BOS (the report's sink prompts), both models",
    {"prompt_tokens": UPSTREAM_PROMPT_TOKENS},
    upstream_choice=True,
)
SELF_EXCLUDED = variant(
    "self-excluded", "query t = 0 left out of every sink score and rate", {"sink_self_term": False}
)
TAU_02 = variant("tau-0.2", "sink threshold tau = 0.2 (>=)", {"sink_tau": 0.2})
TAU_05 = variant("tau-0.5", "sink threshold tau = 0.5 (>=)", {"sink_tau": 0.5})
STRICT = variant("strict", "a sink is score > tau (Gu et al.) instead of >=", {"sink_strict": True})
SPIKE_MAX_WRITE = variant(
    "spike-max-write",
    "the spike-layer and BOS-MLP ablation claims read the max-write layer instead of argmax-ratio",
    {"spike_rule": "max-write"},
)
UPSTREAM = compose(
    "upstream",
    "all of upstream's choices at once, per model as upstream applied them: no-rotary + padded-rope + "
    "fp16-eager + short-prompts (tau 0.3 with >=, t = 0 included and argmax-ratio are the suite's defaults too)",
    [NO_ROTARY, PADDED_ROPE, FP16_EAGER, SHORT_PROMPTS],
    upstream_choice=True,
)
NF4 = variant(
    "4bit-nf4",
    "bitsandbytes 4-bit NF4, fp16 compute and activations (upstream's phase-metrics load); CUDA GPU only",
    quantization="nf4",
    upstream_choice=True,
)
FP4 = variant(
    "4bit-fp4",
    "bitsandbytes 4-bit FP4, fp16 compute and activations (upstream's ablation / sink-fix load); CUDA GPU only",
    quantization="fp4",
    upstream_choice=True,
)

#: Every named variant, in the audit's column order.
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        SUITE,
        NO_ROTARY,
        PADDED_ROPE,
        PADDED,
        FP16_EAGER,
        SHORT_PROMPTS,
        SELF_EXCLUDED,
        TAU_02,
        TAU_05,
        STRICT,
        SPIKE_MAX_WRITE,
        UPSTREAM,
        NF4,
        FP4,
    )
}


def get_variants(names: str | Iterable[str] | None = None) -> list[Variant]:
    """Variants by name (comma-separated string or list), ``suite`` always first; ``None`` = all."""
    if names is None:
        return list(VARIANTS.values())
    wanted = (
        [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
    )
    wanted = [n for n in wanted if n]
    unknown = [n for n in wanted if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    ordered = ["suite"] + [n for n in VARIANTS if n in wanted and n != "suite"]
    return [VARIANTS[n] for n in ordered]


def measurement_key(protocol: Protocol, base: Protocol = FAITHFUL) -> Protocol:
    """The protocol a forward pass is run under: statistics fields and the name reset to ``base``'s.

    Two variants with the same key share one pass (``padded-rope``'s DroPE side is the suite's).
    """
    return protocol.replace(name=base.name, **{f: getattr(base, f) for f in STATISTICS_FIELDS})


def variants_table() -> str:
    """The variants table of docs/audit.md (kept in sync by a test)."""
    lines = ["| variant | kind | RoPE model | DroPE model | what it is |", "| --- | --- | --- | --- | --- |"]

    def show(fields: Mapping[str, Any]) -> str:
        return ", ".join(f"`{k}={v}`" for k, v in fields.items()) or "-"

    for v in VARIANTS.values():
        extra = f"`quantization={v.quantization}`" if v.quantization else ""
        rope = " ".join(x for x in (show(v.fields("rope")) if v.fields("rope") else "", extra) if x) or "-"
        drope = " ".join(x for x in (show(v.fields("drope")) if v.fields("drope") else "", extra) if x) or "-"
        lines.append(f"| `{v.name}` | {v.kind} | {rope} | {drope} | {v.description} |")
    return "\n".join(lines)
