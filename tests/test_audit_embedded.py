"""The confound audit's invariants on the embedded pair (SmolLM2-135M vs its identity-rotation twin).

* ``no-rotary`` and ``padded-rope`` leave every DroPE-side (nope-zeroshot) number identical to
  ``suite``: raw projections ARE the attention of an identity-rotation model, and upstream padded
  only the RoPE model;
* a statistics-only variant (tau 0.5) equals a full re-measurement under that protocol.

A few short texts keep it to about a minute of model time on 2 cores.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import NO_WIKITEXT, wikitext_file  # tests/ is on sys.path (rootdir conftest-less prepend import)

from drope_check.audit import run as audit
from drope_check.engine.protocol import Protocol
from drope_check.measurements.measure import MeasureOptions, measure_pair
from drope_check.models.availability import pair_available

PAIR = "smollm2-135m"
BASE = Protocol(n_texts=3, max_tokens=96)
OK, WHY = pair_available(PAIR)
WIKITEXT = wikitext_file()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not OK, reason=f"embedded pair unavailable: {WHY}"),
    pytest.mark.skipif(WIKITEXT is None, reason=NO_WIKITEXT),
]


def comparable(model: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(model))
    for key in ("provenance", "protocol"):
        out.pop(key, None)
    return out


@pytest.fixture(scope="module")
def result(real_model: None) -> dict[str, Any]:
    options = MeasureOptions(wikitext=str(WIKITEXT))
    return audit.run_audit(
        PAIR,
        "no-rotary,padded-rope,tau-0.5",
        options=options,
        base=BASE,
        source=audit.default_source(PAIR, options, BASE),
    )


def test_no_rotary_and_padded_rope_leave_the_drope_side_identical(result):
    docs = result["measurements"]
    suite = comparable(docs["suite"]["models"]["drope"])
    for name in ("no-rotary", "padded-rope"):
        assert comparable(docs[name]["models"]["drope"]) == suite, name
    status = {v["name"]: v for v in result["audit"]["variants"]}
    assert "drope" in status["no-rotary"]["seconds"]  # a real second pass, not a shared one
    # ... while the RoPE side does change under both
    rope = comparable(docs["suite"]["models"]["rope"])
    assert comparable(docs["no-rotary"]["models"]["rope"])["heads"] != rope["heads"]
    assert comparable(docs["padded-rope"]["models"]["rope"])["layers"]["entropy"] != rope["layers"]["entropy"]


def test_statistics_only_variant_equals_a_full_remeasurement(result):
    remeasured = measure_pair(
        PAIR, BASE.replace(sink_tau=0.5), interventions="none", options=MeasureOptions(wikitext=str(WIKITEXT))
    )
    for role in ("rope", "drope"):
        derived = result["measurements"]["tau-0.5"]["models"][role]
        direct = remeasured["models"][role]
        assert derived["heads"] == direct["heads"]
        for key in ("sink_rate", "sink_rate_excl_self"):
            assert derived["layers"][key] == direct["layers"][key]
        assert derived["scalars"]["sink_rate_average"] == direct["scalars"]["sink_rate_average"]
