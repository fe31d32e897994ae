"""The report's "DroPE produces NaN values in hidden states and attention weights when using eager
attention": measured, with its cause.

transformers' eager attention computes ``softmax(float32)(q @ k^T * scaling + mask)`` in the model's
dtype. With fp16 compute (upstream ran both models in 4-bit with fp16 compute) DroPE Llama-2's
layer-1 q/k norms (~6.6e3 / 5.5e3) make ``q.k`` exceed fp16's maximum (65504) before the scaling:
the logit is ``inf``, its softmax row NaN, the layer's output NaN, and NaN flows through every later
layer. This probe runs the model once more over the measured sequences with exactly that arithmetic
in every attention layer (:func:`eager_fp16_attention`: q, k, v in fp16, transformers' own
``repeat_kv``, fp16 product, then the scaling, an fp16 mask, a float32 softmax cast back to fp16 and
an fp16 product with v), everything else in the model's own dtype, and counts

* ``eager_fp16_nonfinite_layers``: decoder layers whose output (the raw residual after the block)
  holds a non-finite value at a real (non-pad) position, and ``eager_fp16_first_nonfinite_layer``
  (present only when there is one);
* ``eager_fp16_nonfinite_attention_heads``: (sequence, layer, head) triples with a non-finite
  attention weight on a real query.

Nothing else of the suite uses this arithmetic: every other statistic comes from the faithful pass
(:mod:`drope_check.engine.capture`), which stays finite where this one does not. The model is not modified:
the arithmetic is swapped in through :func:`drope_check.engine.attention.override_arithmetic`, which always
restores it, and the counts say what an fp16 eager run of the same weights does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.integrations.sdpa_attention import repeat_kv

from drope_check.engine.architectures import architecture_of
from drope_check.engine.attention import override_arithmetic
from drope_check.engine.batching import make_batches

__all__ = ["EAGER_FP16", "FIELDS", "eager_fp16_attention", "eager_fp16_probe"]

#: The probe's name, as requested in the interventions list of a measurement.
EAGER_FP16 = "eager_fp16"
#: The scalars it writes (drope_check.measurements.validate.OPTIONAL_FIELDS).
FIELDS: tuple[str, ...] = (
    "eager_fp16_nonfinite_layers",
    "eager_fp16_first_nonfinite_layer",
    "eager_fp16_nonfinite_attention_heads",
)


class _HeadCounter:
    """Counts, per layer, heads with a non-finite weight on a real query of each sequence."""

    def __init__(self, query_real: torch.Tensor) -> None:
        self.query_real = query_real  # [B, Q] bool
        self.count = 0

    def add(self, weights: torch.Tensor) -> None:  # [B, H, Q, K]
        bad = (~torch.isfinite(weights)).any(dim=-1) & self.query_real[:, None, :]  # [B, H, Q]
        self.count += int(bad.any(dim=-1).sum())


def eager_fp16_attention(counter: _HeadCounter | None = None):
    """The attention arithmetic of transformers' eager path with fp16 q/k/v (see the module docstring)."""

    def compute(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        allowed: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        groups = query.shape[1] // key.shape[1]
        q = query.to(torch.float16)
        k = repeat_kv(key.to(torch.float16), groups)
        v = repeat_kv(value.to(torch.float16), groups)
        weights = torch.matmul(q, k.transpose(2, 3)) * scaling  # fp16: inf where q.k overflowed
        bias = torch.zeros(allowed.shape, dtype=torch.float16, device=query.device)
        bias = bias.masked_fill_(~allowed, torch.finfo(torch.float16).min)
        weights = torch.softmax(weights + bias, dim=-1, dtype=torch.float32).to(torch.float16)
        if counter is not None:
            counter.add(weights)
        out = torch.matmul(weights, v).to(query.dtype)
        return out.transpose(1, 2).contiguous()

    return compute


def eager_fp16_probe(
    model: torch.nn.Module,
    seqs: Sequence[Sequence[int]],
    pad_token_id: int,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Run ``model`` over ``seqs`` with eager fp16 attention arithmetic; the counts of :data:`FIELDS`."""
    layers = architecture_of(model).decoder_layers(model)
    bad_layers: set[int] = set()
    real: dict[str, torch.Tensor] = {}

    def watch(index: int):
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            rows = (~torch.isfinite(hidden)).any(dim=-1) & real["tokens"]  # [B, T]
            if bool(rows.any()):
                bad_layers.add(index)

        return hook

    split = architecture_of(model).split_forward(model)
    forward = split[0] if split is not None else model  # the decoder body: no [B, T, V] logits needed
    handles = [layer.register_forward_hook(watch(i)) for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    heads = 0
    try:
        with torch.inference_mode():
            for batch in make_batches([list(s) for s in seqs], batch_size, pad_token_id):
                mask = batch.attention_mask.to(device)
                real["tokens"] = mask.bool()
                counter = _HeadCounter(real["tokens"])
                with override_arithmetic(model, eager_fp16_attention(counter)):
                    forward(input_ids=batch.input_ids.to(device), attention_mask=mask, use_cache=False)
                heads += counter.count
    finally:
        for handle in handles:
            handle.remove()
    out: dict[str, Any] = {
        "eager_fp16_nonfinite_layers": len(bad_layers),
        "eager_fp16_nonfinite_attention_heads": heads,
    }
    if bad_layers:
        out["eager_fp16_first_nonfinite_layer"] = min(bad_layers)
    return out
