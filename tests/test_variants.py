"""Named protocol variants of the confound audit (drope_check.audit.variants): each changes exactly the
protocol fields the issue names, per model where upstream treated the models differently."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drope_check.audit.variants import (
    VARIANTS,
    compose,
    get_variants,
    measurement_key,
    variant,
    variants_table,
)
from drope_check.engine.protocol import FAITHFUL, STATISTICS_FIELDS, Protocol
from drope_check.measurements.measure import cut_to_prompt_tokens

PAD = {"pad_to": 512, "padding_in_stats": True}
#: The issue's definitions, written out independently of variants.py: role -> {field: value}.
EXPECTED: dict[str, dict[str, dict]] = {
    "suite": {"rope": {}, "drope": {}},
    "no-rotary": {"rope": {"attention_source": "projections"}, "drope": {"attention_source": "projections"}},
    "padded-rope": {"rope": PAD, "drope": {}},
    "padded": {"rope": PAD, "drope": PAD},
    "fp16-eager": {"rope": {"stats_dtype": "fp16-eager"}, "drope": {"stats_dtype": "fp16-eager"}},
    "short-prompts": {"rope": {"prompt_tokens": (6, 12)}, "drope": {"prompt_tokens": (6, 12)}},
    "self-excluded": {"rope": {"sink_self_term": False}, "drope": {"sink_self_term": False}},
    "tau-0.2": {"rope": {"sink_tau": 0.2}, "drope": {"sink_tau": 0.2}},
    "tau-0.5": {"rope": {"sink_tau": 0.5}, "drope": {"sink_tau": 0.5}},
    "strict": {"rope": {"sink_strict": True}, "drope": {"sink_strict": True}},
    "spike-max-write": {"rope": {"spike_rule": "max-write"}, "drope": {"spike_rule": "max-write"}},
    "upstream": {
        "rope": {
            "attention_source": "projections",
            **PAD,
            "stats_dtype": "fp16-eager",
            "prompt_tokens": (6, 12),
        },
        "drope": {"attention_source": "projections", "stats_dtype": "fp16-eager", "prompt_tokens": (6, 12)},
    },
    "4bit-nf4": {"rope": {}, "drope": {}},
    "4bit-fp4": {"rope": {}, "drope": {}},
}


def changed_fields(protocol: Protocol) -> dict:
    return {
        f.name: getattr(protocol, f.name)
        for f in dataclasses.fields(Protocol)
        if f.name != "name" and getattr(protocol, f.name) != getattr(FAITHFUL, f.name)
    }


def test_every_variant_is_listed_and_in_the_issues_order():
    assert list(VARIANTS) == list(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("role", ["rope", "drope"])
def test_variant_changes_exactly_the_fields_it_names(name, role):
    protocol = VARIANTS[name].protocol(role)
    assert changed_fields(protocol) == EXPECTED[name][role]
    assert VARIANTS[name].fields(role) == EXPECTED[name][role]


def test_kinds_statistics_only_and_gpu():
    kinds = {name: v.kind for name, v in VARIANTS.items()}
    assert {n for n, k in kinds.items() if k == "statistics"} == {
        "self-excluded",
        "tau-0.2",
        "tau-0.5",
        "strict",
        "spike-max-write",
    }
    assert {n for n, k in kinds.items() if k == "gpu"} == {"4bit-nf4", "4bit-fp4"}
    assert VARIANTS["4bit-nf4"].quantization == "nf4" and VARIANTS["4bit-fp4"].quantization == "fp4"


def test_suite_is_the_faithful_protocol_and_others_are_named():
    assert VARIANTS["suite"].protocol("rope") is FAITHFUL
    assert VARIANTS["tau-0.5"].protocol("drope").name == "tau-0.5"


def test_composition_and_conflicts():
    both = compose("x", "tau and strict", [VARIANTS["tau-0.5"], VARIANTS["strict"]])
    assert changed_fields(both.protocol("rope")) == {"sink_tau": 0.5, "sink_strict": True}
    with pytest.raises(ValueError, match="sink_tau"):
        compose("y", "two taus", [VARIANTS["tau-0.2"], VARIANTS["tau-0.5"]])
    with pytest.raises(ValueError, match="unknown protocol field"):
        variant("z", "bad", {"sink_threshold": 0.1})
    with pytest.raises(ValueError, match="pad_to"):  # invalid protocol caught at definition time
        variant("w", "bad", {"padding_in_stats": True})


def test_get_variants_puts_suite_first_and_refuses_unknown_names():
    assert [v.name for v in get_variants("tau-0.5, no-rotary")] == ["suite", "no-rotary", "tau-0.5"]
    assert [v.name for v in get_variants(None)] == list(VARIANTS)
    with pytest.raises(ValueError, match="unknown variant.*tau-9"):
        get_variants("tau-9")


def test_measurement_key_drops_statistics_fields_only():
    up = VARIANTS["upstream"].protocol("rope")
    key = measurement_key(up.replace(sink_tau=0.5, sink_strict=True))
    assert key == measurement_key(up)
    assert all(getattr(key, f) == getattr(FAITHFUL, f) for f in STATISTICS_FIELDS)
    assert key.pad_to == 512 and key.attention_source == "projections"
    assert measurement_key(VARIANTS["padded-rope"].protocol("drope")) == FAITHFUL


def test_variant_table_in_the_audit_doc_is_in_sync():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "audit.md").read_text(encoding="utf-8")
    assert variants_table() in doc


def test_protocol_validates_new_fields():
    with pytest.raises(ValueError, match="spike_rule"):
        Protocol(spike_rule="first-above-2x")
    with pytest.raises(ValueError, match="prompt_tokens"):
        Protocol(prompt_tokens=(12, 6))
    with pytest.raises(ValueError, match="stats_dtype"):
        Protocol(stats_dtype="float16")
    assert Protocol(prompt_tokens=[6, 12]).prompt_tokens == (6, 12)  # as read back from JSON


@given(st.lists(st.integers(1, 40), min_size=1, max_size=20), st.integers(1, 8), st.integers(0, 6))
def test_cut_to_prompt_tokens(lengths, lo, extra):
    hi = lo + extra
    seqs = [[0] + list(range(1, n + 1)) for n in lengths]
    cut = cut_to_prompt_tokens(seqs, (lo, hi))
    for i, (s, c) in enumerate(zip(seqs, cut, strict=True)):
        want = lo + i % (hi - lo + 1)
        assert c == s[: 1 + want]  # BOS kept, a prefix
        assert len(c) - 1 == min(want, len(s) - 1)
    assert cut_to_prompt_tokens(seqs, None) is seqs
