"""The attention function drope_check registers with transformers' ``AttentionInterface``.

Why: the report's sink rates must come from the exact query/key tensors the model attends with.
In transformers 5 every Llama attention layer hands its *post-rotary* query and key (identity
rotation for DroPE, after QK-norm where present), its own ``scaling``, the GQA grouping (through
``module.num_key_value_groups``) and the causal/padding mask to one pluggable function. A model
switched to :data:`ATTN_IMPLEMENTATION` runs that function here, which

1. lets active *query/key transforms* rewrite the post-rotary q/k (Jin et al.'s Q/K disruption),
2. shows the (possibly transformed) q/k, the mask and the scaling to active *observers*
   (the one-pass capture of attention-to-BOS), and
3. computes the layer's real output with transformers' own SDPA path, so the forward pass is the
   same computation as ``attn_implementation="sdpa"``.

Transforms and observers are registered per attention module through context managers that always
unregister in ``finally``; with none registered the function is exactly ``sdpa_attention_forward``.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from drope_check.architectures import architecture_of

#: Name under which the function is registered; models are switched to it with
#: ``model.set_attn_implementation(ATTN_IMPLEMENTATION)``.
ATTN_IMPLEMENTATION = "drope_check"


class AttentionObserver(Protocol):
    """Sees one layer's attention inputs: ``query`` [B, H, Q, D], ``key`` [B, KVH, K, D], the
    boolean ``allowed`` mask [B, 1 or H, Q, K] (True = may attend) and the softmax ``scaling``."""

    def __call__(
        self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor, scaling: float
    ) -> None: ...


class QueryKeyTransform(Protocol):
    """Returns replacement (query, key) for one layer; ``allowed`` marks which keys are real."""

    def __call__(
        self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


_observers: weakref.WeakKeyDictionary[torch.nn.Module, list[AttentionObserver]] = weakref.WeakKeyDictionary()
_transforms: weakref.WeakKeyDictionary[torch.nn.Module, list[QueryKeyTransform]] = weakref.WeakKeyDictionary()


def allowed_mask(attention_mask: torch.Tensor | None, q_len: int, k_len: int, batch: int, device) -> torch.Tensor:
    """The boolean "may attend" mask [B, 1|H, Q, K] that the model's attention applies.

    ``None`` is what the SDPA path then does: transformers skips building the mask when nothing
    is padded, and SDPA applies ``is_causal`` (an upper-left aligned causal mask) when
    ``q_len > 1`` and no mask at all for a single query. (A prefill into an empty static cache
    hands over ``q_len < k_len`` with no mask; the upper-left alignment keeps the empty cache
    slots out, as SDPA does.) Additive float masks count a position as allowed when its bias is
    above half the dtype's minimum (transformers writes ``finfo.min`` for masked positions).
    """
    if attention_mask is None:
        if q_len == 1:
            return torch.ones(batch, 1, 1, k_len, dtype=torch.bool, device=device)
        rows = torch.arange(q_len, device=device)[:, None]
        cols = torch.arange(k_len, device=device)[None, :]
        return (cols <= rows).view(1, 1, q_len, k_len).expand(batch, 1, q_len, k_len)
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask > torch.finfo(attention_mask.dtype).min / 2


def drope_check_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention with drope_check's transforms and observers, output computed by SDPA."""
    transforms = _transforms.get(module, ())
    observers = _observers.get(module, ())
    if transforms or observers:
        allowed = allowed_mask(attention_mask, query.shape[2], key.shape[2], query.shape[0], query.device)
        for transform in transforms:
            query, key = transform(module, query, key, allowed)
        effective_scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        for observer in observers:
            observer(module, query, key, allowed, effective_scaling)
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


AttentionInterface.register(ATTN_IMPLEMENTATION, drope_check_attention_forward)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention module of every decoder layer, in layer order (from the model's
    :class:`~drope_check.architectures.Architecture`)."""
    return architecture_of(model).attention_modules(model)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a supported causal LM (from its architecture record); an unsupported
    ``model_type`` raises :class:`~drope_check.architectures.UnsupportedArchitecture` with the supported list."""
    return architecture_of(model).decoder_layers(model)


def require_capture_attention(model: torch.nn.Module) -> None:
    """Raise unless ``model`` runs its attention through :data:`ATTN_IMPLEMENTATION`.

    Observers and transforms would otherwise silently see nothing.
    """
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != ATTN_IMPLEMENTATION:
        name = getattr(model.config, "_name_or_path", type(model).__name__)
        raise RuntimeError(
            f"model {name!r} uses attn_implementation={impl!r}; call "
            f"model.set_attn_implementation({ATTN_IMPLEMENTATION!r}) (drope_check.models loaders do this)"
        )


@contextlib.contextmanager
def _registered(
    registry: weakref.WeakKeyDictionary, model: torch.nn.Module, fn: Callable, layers: list[int] | None
) -> Iterator[None]:
    require_capture_attention(model)
    modules = attention_modules(model)
    chosen = range(len(modules)) if layers is None else layers
    added: list[torch.nn.Module] = []
    try:
        for idx in chosen:
            module = modules[idx]
            registry.setdefault(module, []).append(fn)
            added.append(module)
        yield
    finally:
        for module in added:
            fns = registry.get(module, [])
            if fn in fns:
                fns.remove(fn)
            if not fns:
                registry.pop(module, None)


def observe_attention(
    model: torch.nn.Module, observer: AttentionObserver, layers: list[int] | None = None
) -> contextlib.AbstractContextManager[None]:
    """Show every (or the listed) layer's attention inputs to ``observer`` while the context is open."""
    return _registered(_observers, model, observer, layers)


def transform_query_key(
    model: torch.nn.Module, transform: QueryKeyTransform, layers: list[int] | None = None
) -> contextlib.AbstractContextManager[None]:
    """Let ``transform`` rewrite every (or the listed) layer's post-rotary q/k while the context is open."""
    return _registered(_transforms, model, transform, layers)


def active_registrations() -> int:
    """Number of (module, function) registrations currently active; 0 when nothing leaks."""
    return sum(len(v) for v in _observers.values()) + sum(len(v) for v in _transforms.values())
