"""The report's Q/K disruption: massive q/k dims replaced by their mean, under upstream's rule (raw
projections, threshold) or Jin et al.'s (post-rotary, top-1); see :mod:`drope_check.engine.interventions`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from drope_check.engine.architectures import architecture_of
from drope_check.engine.attention import decoder_layers, transform_query_key

if TYPE_CHECKING:
    pass
from drope_check.engine.intervention_record import InterventionRecord, check_layer, module_names, track_calls

#: Q/K disruption rules: name -> what it does.
QK_RULES: dict[str, str] = {
    "report": "upstream code: raw q_proj/k_proj outputs (pre-rotary), top-k dims per head replaced by "
    "their sequence mean when the dim's L2 norm > threshold x the head's mean dim norm (default 5.0)",
    "jin": "Jin et al. (ICML 2025): post-rotary q/k as attended, top-k (default 1) dims per head "
    "replaced by their sequence mean, no threshold",
}


@dataclass
class ColumnReplacement:
    """Result of :func:`replace_massive_columns`.

    Attributes:
        output: the tensor with the selected columns replaced, same shape and dtype as the input.
        replaced: bool [B, H, D], which (sequence, head, dim) columns were replaced.
        norms: float32 [B, H, D], L2 norm over the sequence's real positions of every column.
        head_mean_norm: float32 [B, H], mean over dims of ``norms``.
        examined: bool [B], sequences with at least one real position (the others are untouched).
    """

    output: torch.Tensor
    replaced: torch.Tensor
    norms: torch.Tensor
    head_mean_norm: torch.Tensor
    examined: torch.Tensor


def replace_massive_columns(
    x: torch.Tensor, real: torch.Tensor | None, threshold: float | None, top_k: int = 1
) -> ColumnReplacement:
    """Replace each head's massive dims by their mean over the sequence (both Q/K disruption rules).

    For every sequence ``b`` and head ``h`` of ``x`` [B, T, H, D]: the L2 norm over the sequence's
    real positions of each dim (column) is computed; of the ``top_k`` dims with the largest norm,
    those whose norm exceeds ``threshold`` x the mean of the head's ``D`` dim norms (all of them when
    ``threshold`` is None) have every real position set to that column's mean over the real
    positions. Padded positions (``real[b, t]`` False) enter no statistic and are returned unchanged,
    as is every value not selected (bit for bit). Statistics are computed in float32, so fp16 inputs
    whose column norms exceed 65504 (DroPE's layer-1 q/k) do not overflow.

    Args:
        x: activations [B, T, H, D].
        real: bool [B, T] (True = real token) or None for "all real".
        threshold: multiple of the head's mean dim norm a dim must exceed, or None for no threshold.
        top_k: how many of the largest-norm dims per head are candidates (clipped to ``D``).
    """
    if x.dim() != 4:
        raise ValueError(f"expected activations [B, T, H, D], got shape {tuple(x.shape)}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    batch, length, heads, dims = x.shape
    if real is None:
        real = torch.ones(batch, length, dtype=torch.bool, device=x.device)
    real = real.to(device=x.device, dtype=torch.bool)
    if real.shape != (batch, length):
        raise ValueError(
            f"real mask {tuple(real.shape)} does not match activations [B, T] = {(batch, length)}"
        )
    xf = torch.where(real[:, :, None, None], x.float(), 0.0)
    counts = real.sum(dim=1)  # [B]
    norms = torch.linalg.vector_norm(xf, dim=1)  # [B, H, D]
    means = xf.sum(dim=1) / counts.clamp(min=1).to(xf.dtype)[:, None, None]  # [B, H, D]
    head_mean = norms.mean(dim=-1)  # [B, H]
    top_vals, top_idx = norms.topk(min(top_k, dims), dim=-1)
    examined = counts > 0
    chosen = examined[:, None, None].expand_as(top_vals)
    if threshold is not None:
        chosen = chosen & (top_vals > threshold * head_mean[..., None])
    replaced = torch.zeros_like(norms, dtype=torch.bool).scatter(-1, top_idx, chosen)
    where = replaced[:, None, :, :] & real[:, :, None, None]
    output = torch.where(where, means[:, None, :, :].to(x.dtype), x)
    return ColumnReplacement(output, replaced, norms, head_mean, examined)


def _record_columns(record: InterventionRecord, layer: int, tensor: str, result: ColumnReplacement) -> None:
    record.examined[tensor] = (
        record.examined.get(tensor, 0) + int(result.examined.sum()) * result.replaced.shape[1]
    )
    hits = result.replaced.nonzero().tolist()
    if not hits:
        return
    norms = result.norms[result.replaced].tolist()
    head_means = result.head_mean_norm[[h[0] for h in hits], [h[1] for h in hits]].tolist()
    for (_, head, dim), norm, head_mean in zip(hits, norms, head_means, strict=True):
        record._add_column(layer, tensor, head, dim, norm, head_mean)


@contextlib.contextmanager
def qk_disruption(
    model: torch.nn.Module,
    rule: str = "report",
    threshold: float | None = 5.0,
    top_k: int = 1,
    layers: Sequence[int] | None = None,
) -> Iterator[InterventionRecord]:
    """Replace massive Q/K dims by their per-sequence mean while open (the report's "Q/K disruption").

    ``rule="report"`` (upstream code): forward hooks on every layer's ``q_proj`` and ``k_proj``
    (registered with ``prepend=True`` so they act on the raw projection, before any QK-norm hook a
    DroPE loader put on the same module, as upstream did). The output [B, T, H*D] is viewed as
    [B, T, heads, head_dim] with the query-head count for q and the KV-head count for k (GQA), and
    :func:`replace_massive_columns` is applied with ``threshold`` (upstream 5.0) and ``top_k``
    (upstream 1). This acts BEFORE the rotary step, which for a RoPE model is not the q/k the
    model attends with (confound 2 of the notes).

    ``rule="jin"`` (Jin et al., ICML 2025): the same replacement on the post-rotary (and post-QK-norm)
    q [B, H, Q, D] and k [B, KVH, K, D] inside the attention function, through
    :func:`drope_check.engine.attention.transform_query_key`; pass ``threshold=None`` for Jin's rule (no
    threshold; any value given is applied as for "report"). The model must run
    ``attn_implementation="drope_check"``. During cached decoding the keys include the cache, so
    key statistics cover the whole context; query statistics cover the new tokens only.

    Padding (from the 2-D ``attention_mask`` of the call) is excluded from every statistic and left
    untouched. Statistics are per sequence: identical to upstream's "over batch and positions" at
    upstream's batch size 1, and a padded batch gives the per-sequence result.

    Yields:
        An :class:`InterventionRecord` (kind ``"qk_disruption"``) listing every replaced column with
        its norm and its head's mean dim norm.

    Raises:
        ValueError: unknown ``rule`` (the message lists the rules), a layer out of range, or a
            projection whose width is not a multiple of ``head_dim``.
        RuntimeError: ``rule="jin"`` on a model not using the drope_check attention function.
    """
    if rule not in QK_RULES:
        raise ValueError(
            f"unknown Q/K disruption rule {rule!r}; known rules: "
            + "; ".join(f"{k!r} ({v})" for k, v in QK_RULES.items())
        )
    if threshold is not None and (not isinstance(threshold, (int, float)) or threshold < 0):
        raise ValueError(f"threshold must be a non-negative number or None, got {threshold!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    n_layers = len(decoder_layers(model))
    chosen = list(range(n_layers)) if layers is None else [check_layer(model, i) for i in layers]
    record = InterventionRecord(
        kind="qk_disruption",
        rule=rule,
        layers=chosen,
        params={
            "threshold": threshold,
            "top_k": top_k,
            "position": "pre-rotary" if rule == "report" else "post-rotary",
        },
    )
    names = module_names(model)
    arch = architecture_of(model)
    blocks = arch.decoder_layers(model)

    with track_calls(model) as state:
        if rule == "report":
            handles = []

            def make_hook(layer: int, tensor: str, head_dim: int, name: str):
                def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
                    record._count_call(name)
                    batch, length, width = output.shape
                    if width % head_dim:
                        raise ValueError(
                            f"{name} output width {width} is not a multiple of head_dim {head_dim}"
                        )
                    real = state.real_positions(batch, length, output.device)
                    result = replace_massive_columns(
                        output.view(batch, length, width // head_dim, head_dim), real, threshold, top_k
                    )
                    _record_columns(record, layer, tensor, result)
                    return result.output.view(batch, length, width)

                return hook

            try:
                for i in chosen:
                    attn = arch.attention(blocks[i])
                    head_dim = int(attn.head_dim)
                    for tensor in ("q", "k"):
                        proj = arch.projection(attn, tensor)
                        name = names.get(id(proj), f"layers.{i}.{arch.attn}.{tensor}_proj")
                        handles.append(
                            proj.register_forward_hook(make_hook(i, tensor, head_dim, name), prepend=True)
                        )
                yield record
            finally:
                for handle in handles:
                    handle.remove()
        else:
            layer_of = {id(arch.attention(blocks[i])): i for i in chosen}

            def transform(
                module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
                layer = layer_of.get(id(module), getattr(module, "layer_idx", -1))
                record._count_call(names.get(id(module), f"layers.{layer}.self_attn"))
                batch = query.shape[0]
                new = []
                for tensor, x in (("q", query), ("k", key)):
                    real = state.real_positions(batch, x.shape[2], x.device)
                    result = replace_massive_columns(x.transpose(1, 2), real, threshold, top_k)
                    _record_columns(record, layer, tensor, result)
                    new.append(result.output.transpose(1, 2))
                return new[0], new[1]

            with transform_query_key(model, transform, chosen):
                yield record
