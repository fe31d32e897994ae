"""Native DroPE's attention changes on a stock model: the identity rotation, QK-norm modules and hooks, the softmax scale."""

from __future__ import annotations

import torch
from torch import nn

from drope_check.engine.architectures import (
    architecture_of,
)
from drope_check.engine.attention import attention_modules

#: DroPE attention variants and which projections get the RMSNorm (SakanaAI/DroPE custom_models/attention.py).
QK_NORM_VARIANTS: dict[str, tuple[bool, bool]] = {
    "nope": (False, False),
    "qk_norm_nope": (True, True),
    "q_norm_nope": (True, False),
    "k_norm_nope": (False, True),
}


def apply_identity_rotation(model: nn.Module) -> nn.Module:
    """Replace the model's rotary step by the identity (:class:`IdentityRotaryEmbedding`), in place,
    for every layer type its architecture has (see :mod:`drope_check.engine.architectures`)."""
    return architecture_of(model).apply_identity_rotation(model)


def _norm_hook(norm: nn.Module):
    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return norm(output)

    return hook


def qk_norm_variant(attention_type: str) -> tuple[bool, bool]:
    if attention_type not in QK_NORM_VARIANTS:
        raise ValueError(
            f"unknown DroPE attention_type {attention_type!r}; known: {', '.join(sorted(QK_NORM_VARIANTS))}"
        )
    return QK_NORM_VARIANTS[attention_type]


def add_qk_norm_modules(model: nn.Module, attention_type: str) -> None:
    """Give every attention module DroPE's ``q_norm`` / ``k_norm`` (RMSNorm over the whole
    projection output), unless the variant is ``nope`` or they exist already. Both norms exist in
    every QK-norm variant's state dict; only the selected ones are applied (:func:`install_qk_norm`)."""
    qk_norm_variant(attention_type)
    if attention_type == "nope":
        return
    config = model.config
    param = next(model.parameters())
    for attn in attention_modules(model):
        if not hasattr(attn, "q_norm"):
            attn.q_norm = nn.RMSNorm(
                config.num_attention_heads * attn.head_dim,
                eps=config.rms_norm_eps,
                device=param.device,
                dtype=param.dtype,
            )
        if not hasattr(attn, "k_norm"):
            attn.k_norm = nn.RMSNorm(
                config.num_key_value_heads * attn.head_dim,
                eps=config.rms_norm_eps,
                device=param.device,
                dtype=param.dtype,
            )


def install_qk_norm(model: nn.Module, attention_type: str) -> None:
    """Attach DroPE's QK-norm modules (:func:`add_qk_norm_modules`) and apply them to the
    projection outputs through forward hooks (registered first, so interventions that hook the
    projections with ``prepend=True`` see the pre-norm values, as upstream's hooks did)."""
    use_q, use_k = qk_norm_variant(attention_type)
    add_qk_norm_modules(model, attention_type)
    for attn in attention_modules(model):
        if use_q:
            attn.q_proj.register_forward_hook(_norm_hook(attn.q_norm))
        if use_k:
            attn.k_proj.register_forward_hook(_norm_hook(attn.k_norm))


def set_softmax_scale(model: nn.Module, scale: float) -> None:
    for attn in attention_modules(model):
        attn.scaling = float(scale)
