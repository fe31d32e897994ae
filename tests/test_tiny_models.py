"""drope_check.models.tiny_models: the tests' random models are a pure function of config, seed and re-draws,
and the re-draws and switches do what the builders say."""

from __future__ import annotations

import torch

from drope_check.engine.attention import ATTN_IMPLEMENTATION
from drope_check.models.tiny_models import (
    GEMMA3_LAYER_TYPES,
    build_gemma3,
    build_llama,
    gemma3_config,
    llama_config,
)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_llama_is_a_function_of_config_and_seed():
    config = llama_config(layers=3, kv_heads=1, pad_token_id=0)
    first, again, other = (
        build_llama(config, seed=4),
        build_llama(config, seed=4),
        build_llama(config, seed=5),
    )
    assert same_weights(first, again)
    assert not same_weights(first, other)
    assert not first.training
    assert first.config._attn_implementation == ATTN_IMPLEMENTATION
    assert len(first.model.layers) == 3
    assert first.model.layers[0].self_attn.k_proj.weight.shape == (8, 32)  # 1 KV head of dim 8
    assert torch.equal(first.model.embed_tokens.weight[0], torch.zeros(32))  # the padding row


def test_llama_qk_redraw_touches_only_q_and_k():
    config = llama_config(initializer_range=0.02)
    plain, redrawn = build_llama(config, attn=None), build_llama(config, attn=None, qk_weight_std=0.5)
    for name, tensor in redrawn.state_dict().items():
        if "q_proj" in name or "k_proj" in name:
            assert 0.4 < float(tensor.std()) < 0.6, name  # drawn N(0, 0.5); 0.02 before
        else:
            assert torch.equal(tensor, plain.state_dict()[name]), name
    assert plain.config._attn_implementation != ATTN_IMPLEMENTATION  # attn=None keeps transformers' choice


def test_gemma3_layers_follow_layer_types_and_norms_are_redrawn():
    config = gemma3_config(kv_heads=1, sliding_window=3)
    model, again = build_gemma3(config, seed=2), build_gemma3(config, seed=2)
    assert same_weights(model, again)
    assert len(model.model.layers) == len(GEMMA3_LAYER_TYPES)
    assert model.config.layer_types == list(GEMMA3_LAYER_TYPES)
    assert model.config.sliding_window == 3
    q_norm = "model.layers.0.self_attn.q_norm.weight"
    assert float(model.state_dict()[q_norm].abs().max()) > 0  # transformers initialises Gemma norms at 0
    untouched = build_gemma3(config, seed=2, norm_weight_std=None)
    assert float(untouched.state_dict()[q_norm].abs().max()) == 0
