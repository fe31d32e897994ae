"""End-to-end measurement of the embedded pair (SmolLM2-135M-Instruct, real weights, CPU).

``measure_pair`` on the first 4 WikiText-2 test lines longer than 100 characters, 128 tokens each,
is checked for completeness (every number finite), the RoPE model's massive BOS activation, exact
reproducibility, and against a float64 reference computed independently from the model's own
EAGER attention (``output_attentions``) and ``output_hidden_states`` (plus a hook for the raw last
layer), with the entropy taken from numpy's SVD rather than drope_check.engine.metrics.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from helpers import NO_WIKITEXT, wikitext_file

from drope_check.engine.protocol import Protocol
from drope_check.engine.texts import wikitext_lines
from drope_check.measurements.measure import MeasureOptions, measure_pair
from drope_check.models.availability import pair_available
from drope_check.models.loading import load_model
from drope_check.models.pairs import ModelSpec

PAIR = "smollm2-135m"
BOS = "<|im_start|>"
PROTOCOL = Protocol(n_texts=4, max_tokens=128)
# The engine (float32 model, float32/float64 statistics) vs the float64 eager reference: the issue
# promises 1e-4 relative. Measured here: largest relative differences 2.3e-6 (BOS norm, ratio),
# 1.5e-6 (entropy), 5e-6 (sink scores, smallest score 1.5e-3), i.e. >= 20x inside. (HF's eager
# softmax and RMSNorm run in float32 even in a float64 model, so the reference itself carries
# ~1e-7 relative rounding.)
REL_TOL = 1e-4


EMBEDDED_OK, EMBEDDED_WHY = pair_available(PAIR)
WIKITEXT = wikitext_file()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not EMBEDDED_OK, reason=f"embedded pair unavailable: {EMBEDDED_WHY}"),
    pytest.mark.skipif(WIKITEXT is None, reason=NO_WIKITEXT),
]


def run() -> dict[str, Any]:
    return measure_pair(PAIR, PROTOCOL, interventions="none", options=MeasureOptions(wikitext=str(WIKITEXT)))


@pytest.fixture(scope="module")
def measured(real_model: None) -> dict[str, Any]:
    return run()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return list(wikitext_lines(n=PROTOCOL.n_texts, min_chars=PROTOCOL.min_chars, path=str(WIKITEXT)).texts)


def walk_numbers(obj: Any, path: str = "$"):
    """Yield (path, value) for every number in a JSON-like object."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from walk_numbers(value, f"{path}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from walk_numbers(value, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def without_timings(result: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(result)
    out.pop("created")
    for model in out["models"].values():
        model["provenance"].pop("seconds")
    return out


def test_measure_pair_completes_and_every_number_is_finite(measured):
    assert set(measured["models"]) == {"rope", "drope"}
    assert measured["models"]["drope"]["variant"] == "nope-zeroshot"
    numbers = list(walk_numbers(measured))
    assert len(numbers) > 1000
    bad = [(p, v) for p, v in numbers if not math.isfinite(v)]
    assert not bad, bad[:10]
    for role, model in measured["models"].items():
        n_layers, n_heads = model["n_layers"], model["n_heads"]
        assert (n_layers, n_heads) == (30, 9), role
        for name, values in model["layers"].items():
            assert len(values) == n_layers, (role, name)
        for name, grid in model["heads"].items():
            grids = grid if name.endswith("_per_sequence") else [grid]  # [sequence][layer][head]
            if name.endswith("_per_sequence"):
                assert len(grids) == PROTOCOL.n_texts, (role, name)
            for per_layer in grids:
                assert len(per_layer) == n_layers and all(len(h) == n_heads for h in per_layer), (role, name)
        assert model["provenance"]["n_sequences"] == PROTOCOL.n_texts
        assert model["provenance"]["bos_token"] == BOS


def test_rope_model_shows_massive_bos_norm(measured):
    # Measured here (4 lines, 128 tokens): RoPE peak BOS norm 2.51e4 at layer 11, where the mean token
    # norm is 336 (BOS 75x the mean); largest BOS ratio (BOS / mean of the other tokens) 178 at layer
    # 11; BOS norm 3.3 after the embedding and ~100-800 in layers 0-10.
    rope = measured["models"]["rope"]
    scalars, layers = rope["scalars"], rope["layers"]
    assert scalars["max_bos_ratio"] > 50
    assert scalars["peak_bos_norm"] > 1e4
    peak = scalars["peak_bos_norm_layer"]
    assert scalars["peak_bos_norm"] == layers["bos_norm"][peak] == max(layers["bos_norm"])
    assert scalars["peak_bos_norm"] > 50 * layers["mean_token_norm"][peak]
    assert scalars["embedding_bos_norm"] < 10  # the spike is written by the blocks, not the embedding


def test_bos_stream_is_the_same_in_both_models(measured):
    """Position 0 attends only to itself and RoPE rotates position 0 by the identity, so the zero-shot
    identity-rotation model has the very same BOS residual at every layer (see test_models.py)."""
    rope, drope = measured["models"]["rope"]["layers"], measured["models"]["drope"]["layers"]
    assert rope["bos_norm"] == drope["bos_norm"]
    assert rope["bos_mlp_write_norm"] == drope["bos_mlp_write_norm"]
    assert rope["mean_token_norm"] != drope["mean_token_norm"]


def test_two_runs_give_identical_numbers(measured):
    again = run()
    assert without_timings(again) == without_timings(measured)


def eager_reference(loaded, seqs: list[list[int]]) -> dict[str, np.ndarray]:
    """Per-layer BOS norm, BOS ratio, mean token norm, entropy (numpy SVD) and per-head sink scores
    (t = 0 in and out), each sequence on its own, averaged over sequences, from a float64 deep copy
    running HF's eager attention."""
    ref = copy.deepcopy(loaded.model).double()
    ref.set_attn_implementation("eager")
    raw_last: list[torch.Tensor] = []
    handle = ref.model.layers[-1].register_forward_hook(
        lambda m, i, o: raw_last.append(o[0] if isinstance(o, tuple) else o)
    )
    per_seq: dict[str, list[np.ndarray]] = {
        k: [] for k in ("bos_norm", "bos_ratio", "mean_token_norm", "entropy", "sink", "sink_excl")
    }
    try:
        for seq in seqs:
            raw_last.clear()
            with torch.no_grad():
                out = ref(
                    input_ids=torch.tensor([seq]),
                    output_attentions=True,
                    output_hidden_states=True,
                    use_cache=False,
                )
            n_layers = len(out.attentions)
            residuals = [out.hidden_states[layer + 1][0] for layer in range(n_layers - 1)] + [raw_last[0][0]]
            stats = {k: [] for k in per_seq}
            for layer in range(n_layers):
                x = residuals[layer].numpy()
                norms = np.linalg.norm(x, axis=1)
                s2 = np.linalg.svd(x, compute_uv=False) ** 2
                p = s2 / s2.sum()
                p = p[p > 0]
                attn0 = out.attentions[layer][0, :, :, 0].numpy()  # [H, T]
                stats["bos_norm"].append(norms[0])
                stats["bos_ratio"].append(norms[0] / norms[1:].mean())
                stats["mean_token_norm"].append(norms.mean())
                stats["entropy"].append(-(p * np.log(p)).sum())
                stats["sink"].append(attn0.mean(axis=1))
                stats["sink_excl"].append(attn0[:, 1:].mean(axis=1))
            for k, v in stats.items():
                per_seq[k].append(np.array(v))
    finally:
        handle.remove()
    return {k: np.mean(v, axis=0) for k, v in per_seq.items()}


@pytest.mark.parametrize(
    "role,spec",
    [
        ("rope", ModelSpec("rope", "embedded", "rope")),
        ("drope", ModelSpec("drope", "embedded", "nope-zeroshot")),
    ],
)
def test_matches_float64_eager_reference(measured, texts, role, spec):
    loaded = load_model(spec, bos_token=BOS, device="cpu", dtype=torch.float32)
    # tokenized here, independently of drope_check.engine.batching: BOS + the text's tokens, 128 in total
    seqs = [
        ([loaded.bos_token_id] + loaded.tokenizer.encode(t, add_special_tokens=False))[: PROTOCOL.max_tokens]
        for t in texts
    ]
    assert sum(map(len, seqs)) == measured["texts"]["n_tokens"][role]
    ref = eager_reference(loaded, seqs)
    got = measured["models"][role]
    for name in ("bos_norm", "bos_ratio", "mean_token_norm", "entropy"):
        np.testing.assert_allclose(
            got["layers"][name], ref[name], rtol=REL_TOL, atol=0, err_msg=f"{role} {name}"
        )
    np.testing.assert_allclose(
        got["heads"]["sink_score"], ref["sink"], rtol=REL_TOL, atol=0, err_msg=f"{role} sink"
    )
    np.testing.assert_allclose(
        got["heads"]["sink_score_excl_self"],
        ref["sink_excl"],
        rtol=REL_TOL,
        atol=0,
        err_msg=f"{role} sink excl",
    )
