"""Tiny random Llama and Gemma 3 models with fixed seeds, for tests that need a real module tree.

drope_check's unit tests (``tests/``) and the method claim (``claims/test_method_claim.py``, a
finding about upstream's method that holds or fails on any weights) build small random models of
the two supported families. They are built here, once, so that a test names only the numbers it
depends on. The module lives in the package, not in ``tests/``, so it imports the same way under
``pytest``, ``pytest claims/``, ``pytest tests/x.py`` and from an installed drope_check.

A model is a pure function of its config, its seed and the re-draws asked for: the same arguments
give bitwise the same weights (``torch.manual_seed`` immediately before construction; re-draws use
the global generator right after it, in module order).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from drope_check.engine.attention import ATTN_IMPLEMENTATION

__all__ = [
    "GEMMA3_LAYER_TYPES",
    "build_gemma3",
    "build_llama",
    "gemma3_config",
    "llama_config",
]

#: Sliding, full, sliding: both Gemma 3 layer kinds in three layers.
GEMMA3_LAYER_TYPES: tuple[str, ...] = ("sliding_attention", "full_attention", "sliding_attention")


def llama_config(
    *,
    vocab_size: int = 64,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 8,
    max_positions: int = 2048,
    initializer_range: float = 0.15,
    rope_theta: float = 10_000.0,
    attention_bias: bool = False,
    pad_token_id: int | None = None,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
) -> LlamaConfig:
    """A small ``LlamaConfig`` with untied embeddings and the default rotary type at ``rope_theta``.

    ``head_dim`` is given explicitly, so ``hidden_size`` need not be ``heads * head_dim``.
    ``initializer_range`` defaults to 0.15 (transformers: 0.02): attention far from uniform, so a
    wrong mask, grouping, scale, norm or rotation changes what a test measures visibly, while
    float32 rounding stays near 1e-7. ``pad_token_id`` matters for the weights: the embedding row of
    the padding id is initialised to zero. ``max_positions``, ``bos_token_id``, ``eos_token_id`` and
    ``rope_theta`` default to transformers' own Llama defaults.
    """
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
        rope_parameters={"rope_theta": rope_theta, "rope_type": "default"},  # transformers' own key order
        attention_bias=attention_bias,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )


def build_llama(
    config: LlamaConfig,
    *,
    seed: int = 0,
    attn: str | None = ATTN_IMPLEMENTATION,
    qk_weight_std: float | None = None,
) -> LlamaForCausalLM:
    """A ``LlamaForCausalLM`` of ``config`` in eval mode, weights drawn after ``torch.manual_seed(seed)``.

    ``qk_weight_std``: re-draw every layer's ``q_proj`` then ``k_proj`` weight N(0, std) (layer by
    layer), for attention far from uniform at transformers' default initializer range.
    ``attn``: the attention implementation to switch to (default drope_check's capture function);
    None keeps the one transformers picks.
    """
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    if qk_weight_std is not None:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.normal_(0.0, qk_weight_std)
                layer.self_attn.k_proj.weight.normal_(0.0, qk_weight_std)
    if attn is not None:
        model.set_attn_implementation(attn)
    return model


def gemma3_config(
    *,
    vocab_size: int = 64,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 8,
    sliding_window: int = 5,
    layer_types: Sequence[str] = GEMMA3_LAYER_TYPES,
    max_positions: int = 4096,
    initializer_range: float = 0.15,
    pad_token_id: int = 0,
    bos_token_id: int = 2,
    eos_token_id: int = 1,
) -> Gemma3TextConfig:
    """A small ``Gemma3TextConfig``: one layer per entry of ``layer_types``, QK-norm per head (as
    every Gemma 3), ``query_pre_attn_scalar = head_dim`` (the usual 1/sqrt(head_dim) scale), the
    sliding layers' window ``sliding_window`` tokens, transformers' default rotary parameters.

    ``initializer_range`` 0.15 as in :func:`llama_config`; the token ids are Gemma's (pad 0, eos 1,
    bos 2).
    """
    return Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=len(layer_types),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        sliding_window=sliding_window,
        layer_types=list(layer_types),
        max_position_embeddings=max_positions,
        initializer_range=initializer_range,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )


def build_gemma3(
    config: Gemma3TextConfig,
    *,
    seed: int = 0,
    attn: str | None = ATTN_IMPLEMENTATION,
    norm_weight_std: float | None = 0.5,
) -> Gemma3ForCausalLM:
    """A ``Gemma3ForCausalLM`` of ``config`` in eval mode, weights drawn after ``torch.manual_seed(seed)``.

    ``norm_weight_std``: re-draw every RMSNorm weight N(0, std), in parameter order. Gemma's norms
    scale by ``1 + w`` and initialise w = 0; left there, the per-head q/k norms make every logit
    small and the attention nearly uniform, so a wrong mask, grouping, norm or rotation would not
    show. None keeps transformers' initialisation. ``attn`` as in :func:`build_llama`.
    """
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config).eval()
    if norm_weight_std is not None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.normal_(0.0, norm_weight_std)
    if attn is not None:
        model.set_attn_implementation(attn)
    return model
