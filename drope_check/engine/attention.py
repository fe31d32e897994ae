"""The attention function drope_check registers with transformers' ``AttentionInterface``.

Why: the report's sink rates must come from the exact query/key tensors the model attends with.
In transformers 5 every Llama attention layer hands its *post-rotary* query and key (identity
rotation for DroPE, after QK-norm where present), its own ``scaling``, the GQA grouping (through
``module.num_key_value_groups``) and the causal/padding mask to one pluggable function. A model
switched to :data:`ATTN_IMPLEMENTATION` runs that function here, which

1. lets active *query/key transforms* rewrite the post-rotary q/k (Jin et al.'s Q/K disruption),
2. computes the layer's real output with the same SDPA kernel as ``attn_implementation="sdpa"``
   (where observers are registered, the kernel is called directly so its log-sum-exp comes too:
   :func:`sdpa_with_logsumexp`), and
3. shows the (possibly transformed) q/k, the mask, the scaling and that log-sum-exp to active
   *observers* as one :class:`AttentionCall` (the one-pass capture of attention to BOS).

Transforms and observers are registered per attention module through context managers that always
unregister in ``finally``; with none registered the function is exactly ``sdpa_attention_forward``.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch.nn.attention import SDPBackend
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward, use_gqa_in_sdpa
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from drope_check.engine.architectures import architecture_of

#: Name under which the function is registered; models are switched to it with
#: ``model.set_attn_implementation(ATTN_IMPLEMENTATION)``.
ATTN_IMPLEMENTATION = "drope_check"


class AttentionObserver(Protocol):
    """Sees one layer's attention call (:class:`AttentionCall`) after its output was computed."""

    def __call__(self, call: AttentionCall) -> None: ...


class QueryKeyTransform(Protocol):
    """Returns replacement (query, key) for one layer; ``allowed`` marks which keys are real."""

    def __call__(
        self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, allowed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class AttentionArithmetic(Protocol):
    """Computes one layer's attention output ([B, Q, H, D], as ``sdpa_attention_forward`` returns it)
    in place of SDPA: another arithmetic for the same q/k/v, e.g. eager attention in fp16."""

    def __call__(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        allowed: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor: ...


_observers: weakref.WeakKeyDictionary[torch.nn.Module, list[AttentionObserver]] = weakref.WeakKeyDictionary()
_transforms: weakref.WeakKeyDictionary[torch.nn.Module, list[QueryKeyTransform]] = weakref.WeakKeyDictionary()
_arithmetic: weakref.WeakKeyDictionary[torch.nn.Module, list[AttentionArithmetic]] = (
    weakref.WeakKeyDictionary()
)


def allowed_mask(
    attention_mask: torch.Tensor | None, q_len: int, k_len: int, batch: int, device
) -> torch.Tensor:
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


def first_key_allowed(attention_mask: torch.Tensor | None, q_len: int, batch: int, device) -> torch.Tensor:
    """Column 0 of :func:`allowed_mask`: may each query attend to key position 0? [B, 1|H, Q] bool.

    Built without the [Q, K] mask: with ``None`` (SDPA's upper-left causal mask, or no mask for a
    single query) every query sees key 0.
    """
    if attention_mask is None:
        return torch.ones(batch, 1, q_len, dtype=torch.bool, device=device)
    return allowed_mask(attention_mask[..., :1], q_len, 1, batch, device)[..., 0]


@dataclass(eq=False)
class AttentionCall:
    """One layer's attention call as observers see it.

    ``query`` [B, H, Q, D] and ``key`` [B, KVH, K, D] are the tensors the layer attended with (post-
    rotary, post-QK-norm, after any active transform); ``attention_mask`` is what transformers handed
    over (``None``, bool or additive); ``scaling`` the softmax scale. ``lse`` [B, H, Q] (float32) is
    the natural log-sum-exp of ``scaling * q.k`` over each query's allowed keys, as returned by the
    SDPA kernel that computed the layer's output (:func:`sdpa_with_logsumexp`), or ``None`` when the
    output came from another path. Its value is only meaningful for queries with an allowed key.
    """

    module: torch.nn.Module
    query: torch.Tensor
    key: torch.Tensor
    attention_mask: torch.Tensor | None
    scaling: float
    lse: torch.Tensor | None = None
    _allowed: torch.Tensor | None = field(default=None, repr=False)

    def allowed(self) -> torch.Tensor:
        """The boolean [B, 1|H, Q, K] mask of :func:`allowed_mask` (built on first use)."""
        if self._allowed is None:
            self._allowed = allowed_mask(
                self.attention_mask,
                self.query.shape[2],
                self.key.shape[2],
                self.query.shape[0],
                self.query.device,
            )
        return self._allowed

    def first_key_allowed(self) -> torch.Tensor:
        """[B, 1|H, Q] bool: may each query attend to key 0 (see :func:`first_key_allowed`)."""
        if self._allowed is not None:
            return self._allowed[..., 0]
        return first_key_allowed(
            self.attention_mask, self.query.shape[2], self.query.shape[0], self.query.device
        )


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as SDPA turns it into an additive one: 0 where allowed, -inf elsewhere."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.full((), float("-inf"), dtype=dtype, device=allowed.device))


def sdpa_with_logsumexp(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The layer output of :func:`sdpa_attention_forward` AND its kernel's log-sum-exp, or ``None``.

    ``torch.nn.functional.scaled_dot_product_attention`` picks a fused kernel
    (``torch._fused_sdp_choice``); the CPU flash kernel and the CUDA flash / memory-efficient kernels
    also return the log-sum-exp of each query's scores, which the public function drops. When the
    call is one transformers' SDPA path would hand to such a kernel unchanged (a prefill with
    ``Q == K``, no dropout, mask ``None`` or boolean, no position bias / softcap), this calls that
    kernel directly with the same arguments, so the output is the same computation (tests compare
    it bit for bit on CPU), and returns ``(output [B, Q, H, D], lse [B, H, Q] float32)``. Any other
    case (math kernel, cuDNN, decoding, static-cache prefill, tracing) returns ``None`` and the
    caller uses :func:`sdpa_attention_forward`.
    """
    if (
        dropout
        or kwargs.get("softcap") is not None
        or kwargs.get("position_bias") is not None
        or kwargs.get("output_attentions", False)
        or kwargs.get("is_causal") is False
        or not getattr(module, "is_causal", True)
        or query.shape[2] < 2
        or query.shape[2] != key.shape[2]
        or (attention_mask is not None and attention_mask.dtype != torch.bool)
        or query.device.type not in ("cpu", "cuda")
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or query.requires_grad
    ):
        return None
    groups = getattr(module, "num_key_value_groups", 1)
    if query.shape[1] != key.shape[1] * groups:
        return None
    is_causal = attention_mask is None
    # the kernel choice F.scaled_dot_product_attention makes for the arguments transformers passes it
    # (unrepeated key/value with enable_gqa where transformers uses it, else repeat_kv first)
    gqa = groups > 1 and use_gqa_in_sdpa(attention_mask, key, value)
    if not gqa:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    backend = torch._fused_sdp_choice(
        query, key, value, attention_mask, 0.0, is_causal, scale=scaling, enable_gqa=gqa
    )
    if gqa:  # the kernels below take equal head counts (as SDPA hands them after its own repeat)
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    if query.device.type == "cpu":
        if backend != SDPBackend.FLASH_ATTENTION.value:
            return None
        mask = None if attention_mask is None else _additive_mask(attention_mask, query.dtype)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, is_causal, attn_mask=mask, scale=scaling
        )
    elif backend == SDPBackend.FLASH_ATTENTION.value and attention_mask is None and query.shape[-1] % 8 == 0:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, 0.0, is_causal, False, scale=scaling
        )[:2]
    elif backend == SDPBackend.EFFICIENT_ATTENTION.value:
        bias = None
        if attention_mask is not None:
            bias = _additive_mask(attention_mask, query.dtype).expand(
                query.shape[0], query.shape[1], query.shape[2], key.shape[2]
            )
        try:
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
                query, key, value, bias, True, 0.0, is_causal, scale=scaling
            )[:2]
        except RuntimeError:  # e.g. an alignment the kernel refuses: the plain path handles it
            return None
        lse = lse[..., : query.shape[2]]  # the kernel pads the query axis of lse
    else:
        return None
    return out.transpose(1, 2).contiguous(), lse


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
    """Attention with drope_check's transforms and observers, output computed by SDPA.

    With observers registered, the output comes from :func:`sdpa_with_logsumexp` where it applies
    (the same kernel, plus its log-sum-exp for the observers), else from ``sdpa_attention_forward``.
    """
    transforms = _transforms.get(module, ())
    observers = _observers.get(module, ())
    arithmetic = _arithmetic.get(module, ())
    if arithmetic:  # another arithmetic replaces SDPA (no observers: its statistics would not be SDPA's)
        if observers or transforms or len(arithmetic) > 1:
            raise RuntimeError(
                "an attention arithmetic override cannot be combined with observers, transforms "
                "or a second override"
            )
        allowed = allowed_mask(attention_mask, query.shape[2], key.shape[2], query.shape[0], query.device)
        effective = scaling if scaling is not None else query.shape[-1] ** -0.5
        return arithmetic[0](module, query, key, value, allowed, effective), None
    if not transforms and not observers:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    allowed = None
    if transforms:
        allowed = allowed_mask(attention_mask, query.shape[2], key.shape[2], query.shape[0], query.device)
        for transform in transforms:
            query, key = transform(module, query, key, allowed)
    fused = (
        sdpa_with_logsumexp(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        if observers
        else None
    )
    if fused is None:
        output, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        lse = None
    else:
        output, lse = fused
    if observers:
        effective_scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        call = AttentionCall(module, query, key, attention_mask, effective_scaling, lse, allowed)
        for observer in observers:
            observer(call)
    return output, None


AttentionInterface.register(ATTN_IMPLEMENTATION, drope_check_attention_forward)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention module of every decoder layer, in layer order (from the model's
    :class:`~drope_check.engine.architectures.Architecture`)."""
    return architecture_of(model).attention_modules(model)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a supported causal LM (from its architecture record); an unsupported
    ``model_type`` raises :class:`~drope_check.engine.architectures.UnsupportedArchitecture` with the supported list."""
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
            f"model.set_attn_implementation({ATTN_IMPLEMENTATION!r}) (drope_check.models.loading loaders do this)"
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


def override_arithmetic(
    model: torch.nn.Module, arithmetic: AttentionArithmetic, layers: list[int] | None = None
) -> contextlib.AbstractContextManager[None]:
    """Let ``arithmetic`` compute every (or the listed) layer's attention output while the context is open."""
    return _registered(_arithmetic, model, arithmetic, layers)


def active_registrations() -> int:
    """Number of (module, function) registrations currently active; 0 when nothing leaks."""
    return sum(len(v) for registry in (_observers, _transforms, _arithmetic) for v in registry.values())
