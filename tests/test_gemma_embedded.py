"""The embedded Gemma-3-270M pair on real weights (CPU, extra ``[gemma]``).

Marked ``slow`` and ``gemma`` (deselect with ``-m 'not gemma'``); skipped with the reason when the
extra is not installed. The first load on a machine dequantises the Q4_K_M GGUF and caches the float32
weights (drope_check.models.gguf_cache.dequantized_cache_path); measured on the 2-core workplace machine shared
with five other jobs (load average 4-8): 341 s for that cold load, then 13 s and 189 s for the two
tests after it, 9.5 min in all. On an idle machine expect a fraction of that.

* the pair loads with its provenance (architecture record, sliding layers, licence, one weight file);
* nope-zeroshot: the BOS residual of every layer is bitwise the RoPE model's (position 0 never sees
  a rotation, on sliding and global layers alike), later positions differ;
* a short measurement of both models with every intervention completes, every number is finite,
  and a second run gives the identical result.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from helpers import layer_outputs

from drope_check.engine.architectures import GEMMA3, IdentityRotaryEmbedding
from drope_check.engine.protocol import Protocol
from drope_check.measurements.measure import ALL_INTERVENTIONS, measure_model
from drope_check.models.availability import pair_available
from drope_check.models.loading import load_model
from drope_check.models.pairs import PAIRS

pytestmark = [pytest.mark.slow, pytest.mark.gemma]

OK, WHY = pair_available("gemma3-270m")
needs_gemma = pytest.mark.skipif(not OK, reason=f"gemma3-270m unavailable: {WHY}")

TEXTS = [
    " Robert Boulter is an English film , television and theatre actor . He had a guest @-@ starring role on "
    "the television series The Bill in 2000 .",
    " The game 's battle system , the BliTZ system , is carried over directly from Valkyira Chronicles .",
]


@pytest.fixture(scope="module")
def gemma_pair(real_model: None):
    pair = PAIRS["gemma3-270m"]
    return {
        spec.variant: load_model(spec, bos_token=pair.bos_token, device="cpu", dtype=torch.float32)
        for spec in pair.models()
    }


def sequences(loaded) -> list[list[int]]:
    return [[loaded.bos_token_id, *loaded.tokenizer.encode(t, add_special_tokens=False)] for t in TEXTS]


@needs_gemma
def test_gemma_pair_loads_with_provenance(gemma_pair):
    rope, nope = gemma_pair["rope"], gemma_pair["nope-zeroshot"]
    for loaded in (rope, nope):
        prov = loaded.provenance
        assert prov["architecture"]["family"] == "gemma3"
        assert prov["architecture"]["sliding_layers"] == [i for i in range(18) if i not in (5, 11, 17)]
        assert set(prov["architecture"]["layer_kinds"]) == {"full", "sliding(512)"}
        assert "Gemma Terms of Use" in prov["licence"]
        assert prov["bos_token"] == "<bos>" and loaded.bos_token_id == 2
        assert len(prov["weights_sha256"]) == 64
    assert rope.provenance["weights_sha256"] == nope.provenance["weights_sha256"]
    assert isinstance(nope.model.model.rotary_emb, IdentityRotaryEmbedding)
    assert not isinstance(rope.model.model.rotary_emb, IdentityRotaryEmbedding)
    assert (
        GEMMA3.mlp_write(rope.model.model.layers[0]) is rope.model.model.layers[0].post_feedforward_layernorm
    )


@needs_gemma
def test_gemma_nope_bos_stream_identical_later_positions_differ(gemma_pair):
    rope, nope = gemma_pair["rope"], gemma_pair["nope-zeroshot"]
    ids = torch.tensor([sequences(rope)[0]])
    assert ids.shape[1] > 16
    for layer, (r, n) in enumerate(
        zip(layer_outputs(rope.model, ids), layer_outputs(nope.model, ids), strict=True)
    ):
        assert torch.equal(r[0, 0], n[0, 0]), f"layer {layer}: BOS residual differs"
        later = float((r[0, 1:] - n[0, 1:]).norm(dim=-1).max() / r[0, 1:].norm(dim=-1).max())
        assert later > 1e-3, f"layer {layer}: later positions identical (relative difference {later:.2e})"


def numbers(value: Any, path: str = "") -> list[tuple[str, float]]:
    """Every number in a measurements object, with its path."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [(path, float(value))]
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in numbers(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [n for i, v in enumerate(value) for n in numbers(v, f"{path}[{i}]")]
    return []


@needs_gemma
def test_gemma_measurement_finite_and_repeatable(gemma_pair):
    protocol = Protocol(n_texts=2, max_tokens=128, batch_size=2)
    for variant, loaded in gemma_pair.items():
        seqs = sequences(loaded)
        runs = []
        for _ in range(2):
            result = measure_model(loaded, seqs, protocol, interventions=ALL_INTERVENTIONS)
            result.pop("provenance")  # holds the wall-clock seconds
            runs.append(result)
        values = numbers(runs[0])
        assert len(values) > 100, variant
        bad = [(p, v) for p, v in values if not math.isfinite(v)]
        assert not bad, f"{variant}: non-finite values {bad[:5]}"
        assert runs[0] == runs[1], f"{variant}: two runs differ"
        assert runs[0]["n_layers"] == 18 and runs[0]["n_heads"] == 4
