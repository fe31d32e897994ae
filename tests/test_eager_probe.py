"""The eager-fp16 probe (the report's "DroPE produces NaN ... with eager attention").

Claimed: the probe's arithmetic is transformers' own eager attention with fp16 q/k/v, to the bit; on
a model whose layer-1 q.k overflows fp16 it finds the first non-finite layer at 1 and every later
layer non-finite, as a whole-model fp16 eager run of the same weights does, while the faithful
measurement of the same model stays finite; a model without overflow gives zero; the model is left
exactly as it was.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.models.llama.modeling_llama import eager_attention_forward

from drope_check.engine.attention import active_registrations
from drope_check.engine.eager_probe import EAGER_FP16, eager_fp16_attention, eager_fp16_probe
from drope_check.models.qk_norm import apply_identity_rotation
from drope_check.models.tiny_models import build_llama, llama_config

SEQS = [[1, 5, 9, 13, 17, 21, 25, 29], [1, 7, 11, 3, 4], [1, 30, 31, 32, 33, 34, 35]]


def overflowing(layers: int = 4, at: int = 1) -> torch.nn.Module:
    """A tiny identity-rotation (DroPE-like) Llama whose layer-``at`` q.k exceeds fp16's 65504:
    k_proj = q_proj there (q.k = |q|^2 >= 0, aligned as DroPE's massive q/k are), scaled so |q| ~ 1e3."""
    model = build_llama(llama_config(layers=layers, heads=4, kv_heads=4), seed=3)
    apply_identity_rotation(model)
    attn = model.model.layers[at].self_attn
    with torch.no_grad():
        attn.q_proj.weight.mul_(300.0)
        attn.k_proj.weight.copy_(attn.q_proj.weight)
    return model.eval()


def test_the_arithmetic_is_transformers_eager_attention_in_fp16() -> None:
    torch.manual_seed(0)
    b, h, kvh, t, d = 2, 4, 2, 6, 8
    query, key, value = (
        torch.randn(b, h, t, d) * 40,
        torch.randn(b, kvh, t, d) * 40,
        torch.randn(b, kvh, t, d),
    )
    allowed = torch.ones(t, t, dtype=torch.bool).tril().expand(b, 1, t, t)
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = h // kvh, False
    ours = eager_fp16_attention()(module, query, key, value, allowed, d**-0.5)
    mask = torch.zeros(b, 1, t, t, dtype=torch.float16).masked_fill_(~allowed, torch.finfo(torch.float16).min)
    theirs, _ = eager_attention_forward(module, query.half(), key.half(), value.half(), mask, scaling=d**-0.5)
    assert ours.dtype == torch.float32 and torch.equal(ours, theirs.float())
    # a q.k beyond fp16's maximum: inf logits, NaN weights, NaN output, as eager itself gives
    big = query * 1e3
    ours = eager_fp16_attention()(module, big, repeat_kv(big, 1)[:, :kvh], value, allowed, d**-0.5)
    assert not torch.isfinite(ours).all()


def test_an_overflowing_layer_is_found_and_everything_after_it() -> None:
    model = overflowing(layers=4, at=1)
    before = copy.deepcopy(model.state_dict())
    out = eager_fp16_probe(model, SEQS, pad_token_id=0, batch_size=2)
    assert out["eager_fp16_first_nonfinite_layer"] == 1
    assert out["eager_fp16_nonfinite_layers"] == 3  # layers 1, 2, 3: NaN flows on
    assert out["eager_fp16_nonfinite_attention_heads"] > 0
    # nothing was left behind: same weights, no registration, a finite float32 forward
    assert active_registrations() == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([SEQS[0]])).logits).all()


def test_a_whole_model_fp16_eager_run_agrees_on_where_it_breaks() -> None:
    """The same weights as an fp16 model with attn_implementation="eager": hidden states non-finite
    from the same layer on (an independent reading of the claim on the model's own eager path)."""
    model = overflowing(layers=4, at=1)
    half = copy.deepcopy(model).half()
    half.set_attn_implementation("eager")
    with torch.no_grad():
        hidden = half(torch.tensor([SEQS[0]]), output_hidden_states=True).hidden_states
    bad = [i for i, h in enumerate(hidden[1:]) if not torch.isfinite(h).all()]
    assert (
        bad
        and bad[0] == eager_fp16_probe(model, SEQS[:1], pad_token_id=0)["eager_fp16_first_nonfinite_layer"]
    )


def test_no_overflow_no_count() -> None:
    model = build_llama(llama_config(layers=3), seed=1).eval()
    out = eager_fp16_probe(model, SEQS, pad_token_id=0)
    assert out == {"eager_fp16_nonfinite_layers": 0, "eager_fp16_nonfinite_attention_heads": 0}


def test_measure_model_writes_the_probe_beside_a_finite_faithful_measurement() -> None:
    from drope_check.measurements.measure import measure_model
    from drope_check.measurements.validate import validate_measurements
    from drope_check.models.loading import LoadedModel
    from drope_check.models.pairs import ModelSpec

    model = overflowing(layers=4, at=1)
    spec = ModelSpec(role="drope", source="tiny", variant="drope")
    loaded = LoadedModel(
        model=model,
        tokenizer=None,
        spec=spec,
        bos_token_id=1,
        pad_token_id=0,
        provenance={"model_id": "tiny"},
    )
    result = measure_model(loaded, SEQS, interventions=(EAGER_FP16,))
    assert result["scalars"]["eager_fp16_nonfinite_layers"] == 3
    assert result["scalars"]["eager_fp16_first_nonfinite_layer"] == 1
    assert "interventions" not in result  # a probe, not a perplexity intervention
    doc = {
        "schema_version": 1,
        "pair": "custom",
        "models": {"rope": {**result, "role": "rope", "variant": "rope"}, "drope": result},
    }
    validate_measurements(doc, "probe")  # the faithful statistics are finite: the file is valid


@pytest.mark.parametrize("name", [EAGER_FP16])
def test_the_probe_is_requested_like_an_intervention(name: str) -> None:
    from drope_check.audit.cells import needed_interventions
    from drope_check.claims.claim_file import load_claims
    from drope_check.engine.protocol import FAITHFUL
    from drope_check.measurements.measure import ALL_INTERVENTIONS, resolve_interventions

    assert name in ALL_INTERVENTIONS and resolve_interventions(name) == (name,)
    llama = load_claims("llama2-7b")
    assert name in needed_interventions(llama, "drope", FAITHFUL)  # eager_attention_nan[drope] reads it
    assert name not in needed_interventions(llama, "rope", FAITHFUL)
    assert name not in needed_interventions(load_claims("smollm2-135m"), "drope", FAITHFUL)
