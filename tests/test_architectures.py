"""Tests of the architecture adapters (drope_check.engine.architectures) and of the engine on Gemma 3.

* The adapter's paths are pinned on tiny random models of both families (Llama, Gemma 3), so a
  transformers upgrade that moves a module fails here, not as a plausible wrong number.
* An unknown ``model_type`` is refused with the supported list (also by the loader, before weights).
* On a tiny random Gemma 3 (GQA, QK-norm per head, a sliding window smaller than T, random norm
  weights) the one-pass capture is compared with Gemma 3's own float64 *eager* attention
  (``output_attentions``) and ``output_hidden_states``: attention to BOS, residual statistics, the
  BOS write of the feed-forward branch after the post-feed-forward norm; queries past the window
  see no BOS on sliding layers; hooks are gone afterwards.
* nope-zeroshot Gemma 3: logits invariant to moved position ids (every layer type rotates by the
  identity), the BOS residual bitwise identical to the RoPE model's.
* The interventions hook what the adapter names: the BOS-MLP ablation removes exactly the
  post-feed-forward norm's BOS row; the ``report`` Q/K rule acts on q_proj/k_proj outputs (before
  Gemma's per-head norm), ``jin`` on the post-rotary q/k.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from helpers import layer_outputs
from test_attention_capture import MODEL_TOL, assert_no_hooks, residual_summaries, tiny_llama
from transformers import Gemma3ForCausalLM, MistralConfig, MistralForCausalLM

from drope_check.engine.architectures import (
    GEMMA3,
    LLAMA,
    IdentityRotaryEmbedding,
    LayerKind,
    UnsupportedArchitecture,
    architecture_for_model_type,
    architecture_of,
    supported_model_types,
)
from drope_check.engine.attention import attention_modules, decoder_layers
from drope_check.engine.bos_ablation import bos_mlp_ablation
from drope_check.engine.capture import LAYER_STATS, OnePassCapture
from drope_check.engine.protocol import Protocol
from drope_check.engine.qk_disruption import qk_disruption
from drope_check.models.loading import load_model
from drope_check.models.pairs import ModelLoadError, ModelSpec
from drope_check.models.qk_norm import apply_identity_rotation
from drope_check.models.tiny_models import build_gemma3, gemma3_config

#: Captured attention to BOS (float64 statistics from the float32 model's q/k) vs Gemma 3's own
#: eager attention of a float64 copy. Gemma3RMSNorm normalises in float32 even in a float64 model,
#: so the reference itself carries float32 rounding (~1e-7); the issue asks for 1e-5.
GEMMA_ATTN_TOL = 1e-5

N_LAYERS = 3
WINDOW = 5
T = 13  # > WINDOW: queries 5..12 cannot see BOS on the sliding layers
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]


def tiny_gemma3(kv_heads: int = 2, seed: int = 0, window: int = WINDOW) -> Gemma3ForCausalLM:
    """hidden 32, 4 query heads of dim 8 over ``kv_heads`` KV heads, 3 layers (sliding, full,
    sliding; window ``window``), QK-norm, vocab 64, switched to drope_check.

    Weights ``initializer_range=0.15`` and every RMSNorm weight drawn N(0, 0.5) (Gemma's norms scale
    by ``1 + w``; at the default w = 0 the per-head q/k norms make every logit small and attention
    nearly uniform), so a wrong mask, grouping, norm or rotation changes the attention visibly.
    """
    config = gemma3_config(
        kv_heads=kv_heads,
        sliding_window=window,
        layer_types=LAYER_TYPES,
        max_positions=4096,
        initializer_range=0.15,
    )
    return build_gemma3(config, seed=seed, norm_weight_std=0.5)


def random_ids(b: int, t: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (b, t), generator=g)
    ids[:, 0] = 2  # BOS
    return ids


def gemma_eager_reference(model: Gemma3ForCausalLM, input_ids, attention_mask=None):
    """Gemma 3's own eager attention and hidden states in float64, the raw last-layer residual and
    each layer's post-feed-forward-norm output (hooks written out here, not taken from the adapter)."""
    ref = copy.deepcopy(model).double()
    ref.set_attn_implementation("eager")
    raw_last: dict[str, torch.Tensor] = {}
    ffn_write: list[torch.Tensor] = []
    handles = [
        ref.model.layers[-1].register_forward_hook(
            lambda m, i, o: raw_last.__setitem__("x", o[0] if isinstance(o, tuple) else o)
        )
    ]
    handles += [
        layer.post_feedforward_layernorm.register_forward_hook(lambda m, i, o: ffn_write.append(o))
        for layer in ref.model.layers
    ]
    try:
        with torch.no_grad():
            out = ref(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_attentions=True,
                output_hidden_states=True,
            )
    finally:
        for handle in handles:
            handle.remove()
    return out, raw_last["x"], ffn_write


def capture(model, input_ids, rows, attention_mask=None, stats_dtype="float64", kernel_layers=None):
    """The one-pass capture's sequences. ``stats_dtype="float32"`` takes the SDPA kernel's
    log-sum-exp path (float32 CPU calls); ``kernel_layers`` asserts how many layer passes took it."""
    cap = OnePassCapture(model, Protocol(stats_dtype=stats_dtype), "tiny-gemma3")
    with torch.no_grad(), cap.batch(rows) as seqs:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    if kernel_layers is not None:
        assert cap.layers_from_kernel == kernel_layers
    return seqs


#: Both ways the capture computes attention to BOS: float64 recomputation, and the float32 SDPA
#: kernel's own log-sum-exp (every layer of the tiny model takes it).
STATS_PATHS = pytest.mark.parametrize(
    "stats_dtype,kernel_layers", [("float64", 0), ("float32", N_LAYERS)], ids=["float64", "kernel-lse"]
)


# --------------------------------------------------------------------------------------------------
# the records


def test_adapter_paths_pinned_on_tiny_llama():
    model = tiny_llama(2)
    arch = architecture_of(model)
    assert arch is LLAMA and architecture_for_model_type("llama_drope") is LLAMA
    assert decoder_layers(model) is model.model.layers
    assert attention_modules(model) == [layer.self_attn for layer in model.model.layers]
    assert arch.embedding(model) is model.model.embed_tokens
    assert arch.final_norm_module(model) is model.model.norm
    assert arch.rotary_module(model) is model.model.rotary_emb
    for layer in model.model.layers:
        assert arch.mlp_write(layer) is layer.mlp
        assert arch.projection(layer.self_attn, "q") is layer.self_attn.q_proj
        assert arch.projection(layer.self_attn, "k") is layer.self_attn.k_proj
    assert arch.layer_kinds(model) == [LayerKind("full")] * 3
    assert arch.qk_norm == "none-or-projection-hook"


def test_adapter_paths_pinned_on_tiny_gemma3():
    model = tiny_gemma3()
    arch = architecture_of(model)
    assert arch is GEMMA3 and model.config.model_type == "gemma3_text"
    assert decoder_layers(model) is model.model.layers
    assert attention_modules(model) == [layer.self_attn for layer in model.model.layers]
    assert arch.embedding(model) is model.model.embed_tokens
    assert arch.final_norm_module(model) is model.model.norm
    assert arch.rotary_module(model) is model.model.rotary_emb
    for layer in model.model.layers:
        # the feed-forward branch's write into the residual is the post-feed-forward norm's output
        assert arch.mlp_write(layer) is layer.post_feedforward_layernorm
        assert arch.projection(layer.self_attn, "q") is layer.self_attn.q_proj
        assert arch.projection(layer.self_attn, "k") is layer.self_attn.k_proj
    assert arch.layer_kinds(model) == [
        LayerKind("sliding", WINDOW),
        LayerKind("full"),
        LayerKind("sliding", WINDOW),
    ]
    # the record agrees with what each attention module itself uses
    for attn, kind in zip(attention_modules(model), arch.layer_kinds(model), strict=True):
        assert attn.sliding_window == kind.window
    prov = arch.provenance(model)
    assert prov["family"] == "gemma3" and prov["sliding_layers"] == [0, 2]
    assert prov["layer_kinds"] == ["sliding(5)", "full", "sliding(5)"]
    assert arch.qk_norm == "per-head-pre-rotary"


def test_unknown_architecture_is_refused_with_the_supported_list(tmp_path):
    config = MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    )
    model = MistralForCausalLM(config)
    for call in (
        lambda: architecture_of(model),
        lambda: decoder_layers(model),
        lambda: OnePassCapture(model, Protocol(), "m"),
    ):
        with pytest.raises(UnsupportedArchitecture, match=r"model_type 'mistral' is not supported") as info:
            call()
        for supported in ("gemma3_text", "llama"):
            assert supported in str(info.value)
    assert supported_model_types() == ["gemma3_text", "llama", "llama_drope"]
    # a config without model_type
    with pytest.raises(UnsupportedArchitecture, match="supported model types: gemma3_text, llama"):
        architecture_of(SimpleNamespace(config=SimpleNamespace()))
    # the loader refuses from config.json alone, before any weights are read (there are none here)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    with pytest.raises(
        ModelLoadError, match=r"model_type 'mistral' is not supported.*supported: gemma3_text"
    ):
        load_model(ModelSpec("rope", str(tmp_path), "rope"), device="cpu")


def test_features_the_engine_does_not_apply_are_refused():
    model = tiny_gemma3()
    model.config.attn_logit_softcapping = 50.0
    with pytest.raises(UnsupportedArchitecture, match=r"attn_logit_softcapping=50\.0"):
        GEMMA3.check_supported(model)


# --------------------------------------------------------------------------------------------------
# the capture on Gemma 3


@STATS_PATHS
@pytest.mark.parametrize("kv_heads", [2, 1], ids=["gqa2", "gqa4"])
def test_gemma3_attention_to_bos_equals_eager_output_attentions(kv_heads, stats_dtype, kernel_layers):
    model = tiny_gemma3(kv_heads)
    ids = random_ids(2, T)
    seqs = capture(model, ids, [T, T], stats_dtype=stats_dtype, kernel_layers=kernel_layers)
    ref, _, _ = gemma_eager_reference(model, ids)
    assert len(ref.attentions) == N_LAYERS
    for b, seq in enumerate(seqs):
        for layer in range(N_LAYERS):
            got = seq.attn_to_bos[layer]
            assert got.shape == (4, T)
            torch.testing.assert_close(got, ref.attentions[layer][b, :, :, 0], atol=GEMMA_ATTN_TOL, rtol=0)
        # sliding layers: a query at t >= window cannot see BOS (exactly 0); t < window can
        for layer in (0, 2):
            assert bool((seq.attn_to_bos[layer][:, WINDOW:] == 0).all()), layer
            assert bool((seq.attn_to_bos[layer][:, 1:WINDOW] > 0).all()), layer
        # the full layer sees BOS from every query
        assert bool((seq.attn_to_bos[1] > 0).all())
    # the attention is far from uniform, so the comparison has power
    assert float(ref.attentions[1][0, :, 1:, 0].std()) > 0.05
    assert_no_hooks(model)


@STATS_PATHS
def test_gemma3_right_padded_batch_equals_eager_on_real_rows(stats_dtype, kernel_layers):
    """Padding composes with the sliding window: the mask the capture sees is the model's own."""
    model = tiny_gemma3(2)
    lengths = [T, 4, 9]
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    g = torch.Generator().manual_seed(4)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(3, 64, (n,), generator=g)
        ids[b, 0] = 2
        mask[b, :n] = 1
    seqs = capture(
        model, ids, lengths, attention_mask=mask, stats_dtype=stats_dtype, kernel_layers=kernel_layers
    )
    # Reference: each sequence alone, unpadded. (Gemma's float64 eager path on the padded batch is
    # not one: a pad query of a sliding layer with no real key in its window gets finfo.min + score
    # = -inf on every key, a NaN row, whose NaN values then reach real rows through 0 * NaN.)
    for b, n in enumerate(lengths):
        ref, _, _ = gemma_eager_reference(model, ids[b : b + 1, :n])
        for layer in range(N_LAYERS):
            torch.testing.assert_close(
                seqs[b].attn_to_bos[layer], ref.attentions[layer][0, :, :, 0], atol=GEMMA_ATTN_TOL, rtol=0
            )
    assert_no_hooks(model)


def test_gemma3_residuals_equal_hidden_states_and_bos_write_is_after_post_ffn_norm():
    model = tiny_gemma3(2)
    ids = random_ids(2, T, seed=5)
    seqs = capture(model, ids, [T, T])
    ref, raw_last, ffn_write = gemma_eager_reference(model, ids)
    hidden = ref.hidden_states
    assert len(hidden) == N_LAYERS + 1
    for b, seq in enumerate(seqs):
        # hidden_states[0] is the scaled embedding (Gemma multiplies by sqrt(hidden) inside embed_tokens)
        assert seq.embedding_bos_norm == pytest.approx(float(hidden[0][b, 0].norm()), rel=MODEL_TOL)
        for layer in range(N_LAYERS):
            x = raw_last[b] if layer == N_LAYERS - 1 else hidden[layer + 1][b]
            for stat, value in residual_summaries(x).items():
                assert seq.layers[stat][layer] == pytest.approx(value, rel=MODEL_TOL, abs=MODEL_TOL), (
                    stat,
                    layer,
                )
            expected = float(ffn_write[layer][b, 0].norm())
            assert seq.layers["bos_mlp_write_norm"][layer] == pytest.approx(expected, rel=MODEL_TOL)
        assert set(seq.layers) == set(LAYER_STATS)
        # last layer: the raw residual, not HF's post-final-norm entry
        assert not torch.allclose(raw_last[b], hidden[-1][b])
    assert_no_hooks(model)


@STATS_PATHS
def test_gemma3_sliding_window_hides_bos_beyond_the_window_at_long_t(stats_dtype, kernel_layers):
    """The same at T well past the window: nothing leaks through."""
    model = tiny_gemma3(1, window=16)
    t = 80
    seqs = capture(model, random_ids(1, t, seed=9), [t], stats_dtype=stats_dtype, kernel_layers=kernel_layers)
    ref, _, _ = gemma_eager_reference(model, random_ids(1, t, seed=9))
    for layer in range(N_LAYERS):
        torch.testing.assert_close(
            seqs[0].attn_to_bos[layer], ref.attentions[layer][0, :, :, 0], atol=GEMMA_ATTN_TOL, rtol=0
        )
    for layer in (0, 2):
        assert bool((seqs[0].attn_to_bos[layer][:, 16:] == 0).all())
        assert bool((seqs[0].attn_to_bos[layer][:, :16] > 0).all())


# --------------------------------------------------------------------------------------------------
# nope-zeroshot Gemma 3


def logits(model, ids, position_ids=None) -> torch.Tensor:
    with torch.no_grad():
        return model(
            input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=position_ids, use_cache=False
        ).logits


def test_gemma3_identity_rotation_every_layer_type_and_logits_invariant_to_positions():
    model = apply_identity_rotation(tiny_gemma3(2))
    rot = model.model.rotary_emb
    assert isinstance(rot, IdentityRotaryEmbedding)
    for layer_type in ("sliding_attention", "full_attention"):  # local and global bases alike
        cos, sin = rot(torch.zeros(1, 3, 32), torch.arange(3)[None] + 7, layer_type)
        assert bool((cos == 1).all()) and bool((sin == 0).all()) and cos.shape == (1, 3, 8)
    ids = random_ids(2, 11, seed=3)
    base = logits(model, ids)
    moved = {
        "shift+1": torch.arange(11)[None] + 1,
        "shift+1000": torch.arange(11)[None] + 1000,
        "stretched x3+5": torch.arange(11)[None] * 3 + 5,
    }
    for name, position_ids in moved.items():
        assert torch.equal(logits(model, ids, position_ids), base), name
    # the RoPE model: stretched positions change its logits (the invariance check has power)
    rope = tiny_gemma3(2)
    assert float((logits(rope, ids) - logits(rope, ids, moved["stretched x3+5"])).abs().max()) > 1e-3
    assert float((logits(rope, ids) - base).abs().max()) > 1e-3


def test_gemma3_nope_bos_stream_identical_to_rope_later_positions_differ():
    """Position 0 sees only itself and RoPE's rotation at position 0 is the identity."""
    rope = tiny_gemma3(2)
    nope = apply_identity_rotation(copy.deepcopy(rope))
    ids = random_ids(1, T, seed=6)
    for layer, (r, n) in enumerate(zip(layer_outputs(rope, ids), layer_outputs(nope, ids), strict=True)):
        assert torch.equal(r[0, 0], n[0, 0]), f"layer {layer}: BOS residual differs"
        assert float((r[0, 1:] - n[0, 1:]).abs().max()) > 1e-4, layer


# --------------------------------------------------------------------------------------------------
# interventions on Gemma 3


def test_gemma3_bos_mlp_ablation_removes_the_post_ffn_norm_bos_row():
    model = tiny_gemma3(2)
    ids = random_ids(2, T, seed=8)
    layer = 1
    plain = layer_outputs(model, ids)
    _, _, ffn_write = gemma_eager_reference(model, ids)
    with bos_mlp_ablation(model, layer) as record:
        ablated = layer_outputs(model, ids)
    # the block's BOS output loses exactly its feed-forward write; other rows are untouched
    torch.testing.assert_close(
        ablated[layer][:, 0].double(),
        plain[layer][:, 0].double() - ffn_write[layer][:, 0],
        atol=1e-5,
        rtol=1e-5,
    )
    assert torch.equal(ablated[layer][:, 1:], plain[layer][:, 1:])
    assert [t["row"] for t in record.touched] == [0, 1]
    for t in record.touched:
        assert t["bos_mlp_output_norm"] == pytest.approx(
            float(ffn_write[layer][t["row"], 0].norm()), rel=1e-5
        )
    assert "post_feedforward_layernorm" in next(iter(record.calls))
    assert_no_hooks(model)


def test_gemma3_qk_report_rule_acts_before_the_per_head_norm_and_jin_after_the_rotary():
    model = tiny_gemma3(2)
    ids = random_ids(1, T, seed=10)
    seen_norm_input: list[torch.Tensor] = []
    proj_out: list[torch.Tensor] = []
    attn = model.model.layers[0].self_attn
    h1 = attn.q_norm.register_forward_hook(lambda m, i, o: seen_norm_input.append(i[0].detach().clone()))
    h2 = attn.q_proj.register_forward_hook(lambda m, i, o: proj_out.append(o.detach().clone()))
    try:
        with qk_disruption(model, rule="report", threshold=0.0, layers=[0]) as record:
            with torch.no_grad():
                model(input_ids=ids, use_cache=False)
    finally:
        h1.remove()
        h2.remove()
    # threshold 0: top-1 dim of every head replaced in the raw projection; the per-head norm sees it
    assert record.examined == {"q": 4, "k": 2}
    replaced = proj_out[0].view(1, T, 4, 8)
    normed_in = seen_norm_input[0].transpose(1, 2)  # [B, T, H, D]
    assert torch.equal(normed_in, replaced)
    for head in range(4):
        cols = [c for c in record.touched if c["tensor"] == "q" and c["head"] == head]
        assert len(cols) == 1
        col = normed_in[0, :, head, cols[0]["dim"]]
        assert torch.allclose(col, col[0].expand_as(col))  # constant over the sequence = its mean
    with qk_disruption(model, rule="jin", threshold=None, layers=[0]) as record:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    assert record.examined == {"q": 4, "k": 2} and record.params["position"] == "post-rotary"
    assert_no_hooks(model)
