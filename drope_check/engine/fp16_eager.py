"""Upstream's fp16 confound: attention to BOS with eager attention's arithmetic in float16.

Upstream ran both models with fp16 compute and ``attn_implementation="eager"``, which computes
``softmax(float32)(fp16(q @ k^T) * scaling + mask)`` and casts the weights back to fp16. DroPE
Llama-2's layer-1 q/k norms (~6.6e3 / 5.5e3) make ``q.k`` exceed fp16's maximum (65504) before the
scaling is applied: the logit becomes ``inf``, the softmax of a row holding ``inf`` is NaN, and the
head's sink score is NaN, which upstream's ``score >= 0.3`` then counted as "not a sink".

This module reproduces exactly that arithmetic (the variant ``fp16-eager`` of the confound audit);
the suite's own attention statistics never use it (:func:`drope_check.engine.capture.attention_to_position0`
is an exact log-sum-exp in float32/float64). The capture keeps the NaN, the sink statistics
(:mod:`drope_check.engine.sink_stats`) count a NaN head as a non-sink and report how many there were.
"""

from __future__ import annotations

import torch

#: Upper bound on the elements of one chunk of fp16 attention scores ([B, H, chunk, K]).
SCORE_CHUNK_ELEMENTS = 1 << 24


def attention_to_position0_fp16_eager(
    query: torch.Tensor,
    key: torch.Tensor,
    allowed: torch.Tensor,
    scaling: float,
    chunk_elements: int = SCORE_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Eager attention's weight on key 0 in float16 arithmetic, NaN where ``q.k`` overflowed.

    Shapes as :func:`drope_check.engine.capture.attention_to_position0`: ``query`` [B, H, Q, D], ``key``
    [B, KVH, K, D] (GQA: query head h reads KV head h // (H / KVH)), ``allowed`` bool
    [B, 1|H, Q, K]. Steps, as transformers' ``eager_attention_forward`` with fp16 inputs:
    ``w = fp16(q) @ fp16(k)^T`` (fp16 result), ``w = w * scaling`` (fp16), ``w = w + mask`` (fp16
    minimum where not allowed), ``softmax(w, dtype=float32)`` cast to fp16. Returns [B, H, Q] in
    float64 (the fp16 weights, exactly), NaN for rows whose logits overflowed to ``inf``.
    """
    b, h, q_len, d = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    if h % kv_heads:
        raise ValueError(f"{h} query heads are not a multiple of {kv_heads} key/value heads")
    groups = h // kv_heads
    q = query.to(torch.float16).view(b, kv_heads, groups, q_len, d)
    k = key.to(torch.float16)
    if allowed.shape[1] == 1:
        allowed = allowed.view(allowed.shape[0], 1, 1, q_len, k_len)
    else:
        allowed = allowed.reshape(allowed.shape[0], kv_heads, groups, q_len, k_len)
    minimum = torch.finfo(torch.float16).min
    chunk = max(1, min(q_len, chunk_elements // max(1, b * h * k_len)))
    out = torch.empty(b, kv_heads, groups, q_len, dtype=torch.float64, device=query.device)
    for start in range(0, q_len, chunk):
        stop = min(q_len, start + chunk)
        logits = torch.matmul(q[:, :, :, start:stop], k.unsqueeze(2).transpose(-1, -2))  # fp16, may be inf
        logits = logits * scaling
        bias = torch.zeros(allowed[:, :, :, start:stop].shape, dtype=torch.float16, device=query.device)
        bias = bias.masked_fill_(~allowed[:, :, :, start:stop], minimum)
        weights = torch.softmax(logits + bias, dim=-1, dtype=torch.float32).to(torch.float16)
        out[:, :, :, start:stop] = weights[..., 0].to(torch.float64)
    return out.view(b, h, q_len)


def nan_heads(attn_to_bos: torch.Tensor) -> torch.Tensor:
    """Bool [H]: heads of one sequence's ``attn_to_bos`` [H, T] with any non-finite weight."""
    return ~torch.isfinite(attn_to_bos).all(dim=-1)
