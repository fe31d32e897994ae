"""Architecture adapters: where each model family keeps the parts drope_check measures.

Every measurement and intervention needs the same handful of modules of a decoder-only LM: the
decoder blocks, the token embedding, each block's attention and its ``q_proj`` / ``k_proj``, the
module whose output the feed-forward branch adds to the residual stream, the final norm and the
rotary embedding. Their paths differ between families (Gemma 3 adds a norm *after* the MLP, so the
MLP's own output is not what enters the residual), and so do facts that are not paths: where a
QK-norm sits, which layers attend through a sliding window, how to replace the rotary step by the
identity. Those facts live here, one frozen :class:`Architecture` record per family, keyed by
``config.model_type``; every other module asks the record and never spells a path itself, so a
third family is a new record (plus its tiny-model tests), not edits across modules.

A model whose ``model_type`` has no record is refused with the supported list
(:class:`UnsupportedArchitecture`): silently hooking the wrong module would give plausible numbers
about the wrong tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

QkNormPlacement = Literal["none-or-projection-hook", "per-head-pre-rotary"]
LayerKindName = Literal["full", "sliding"]


class UnsupportedArchitecture(TypeError):
    """The model's ``config.model_type`` has no :class:`Architecture` record."""


@dataclass(frozen=True)
class LayerKind:
    """How one decoder layer attends: ``full`` causal attention, or ``sliding`` within ``window``
    tokens (a query at position t sees keys t - window + 1 .. t, so it sees BOS only for t < window)."""

    kind: LayerKindName
    window: int | None = None

    def describe(self) -> str:
        return "full" if self.kind == "full" else f"sliding({self.window})"


class IdentityRotaryEmbedding(nn.Module):
    """Drop-in for a rotary embedding module returning cos = 1, sin = 0: an exact identity rotation.

    ``q * 1 + rotate_half(q) * 0 == q`` bit for bit for finite q, so attention sees the (normed)
    projections, as in SakanaAI's DroPE attention. Serves Llama's ``forward(x, position_ids)`` and
    Gemma 3's ``forward(x, position_ids, layer_type)`` alike: every layer type (Gemma 3's local and
    global bases) gets the same identity.
    """

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim

    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor, layer_type: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (*position_ids.shape, self.head_dim)
        return (
            torch.ones(shape, dtype=x.dtype, device=x.device),
            torch.zeros(shape, dtype=x.dtype, device=x.device),
        )


def _get(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _set(root: nn.Module, path: str, value: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = _get(root, parent_path) if parent_path else root
    setattr(parent, name, value)


def _layer_kinds_from_config(config: Any) -> list[LayerKind]:
    """``config.layer_types`` (``full_attention`` / ``sliding_attention``) with ``sliding_window``;
    a config without ``layer_types`` and without a sliding window attends fully in every layer."""
    n = int(config.num_hidden_layers)
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if types is None:
        if window is not None and getattr(config, "use_sliding_window", True):
            raise UnsupportedArchitecture(
                f"config has sliding_window={window} but no layer_types: which layers slide is unknown"
            )
        return [LayerKind("full")] * n
    kinds = []
    for i, name in enumerate(types[:n]):
        if name == "full_attention":
            kinds.append(LayerKind("full"))
        elif name == "sliding_attention":
            if window is None:
                raise UnsupportedArchitecture(
                    f"layer {i} is sliding_attention but the config has no sliding_window"
                )
            kinds.append(LayerKind("sliding", int(window)))
        else:
            raise UnsupportedArchitecture(
                f"layer {i}: unknown layer type {name!r} (known: full_attention, sliding_attention)"
            )
    return kinds


@dataclass(frozen=True)
class Architecture:
    """Where one family keeps what drope_check measures, and what is not a path.

    Paths are dotted attribute paths: ``layers``, ``embed``, ``final_norm`` and ``rotary`` from the
    causal-LM model; ``attn`` and ``block_mlp_write`` from a decoder block; ``q_proj`` / ``k_proj``
    from the attention module.

    Attributes:
        family: short name recorded in provenance (``llama``, ``gemma3``).
        model_types: the ``config.model_type`` values this record serves.
        block_mlp_write: the module whose output the block adds to the residual stream (what the
            BOS write of the feed-forward branch is measured on, and what the BOS-MLP ablation zeroes).
        block_mlp_write_note: what that module is, in words, for provenance.
        qk_norm: where a QK-norm sits. ``none-or-projection-hook``: none in the stock model; DroPE's
            ``qk_norm_nope`` variants apply an RMSNorm over the whole projection output as a forward
            hook on ``q_proj`` / ``k_proj`` (the ``report`` Q/K rule's hooks are prepended, so they see
            the raw projection). ``per-head-pre-rotary``: an RMSNorm per head inside attention before
            the rotary step (Gemma 3): the ``report`` rule acts on the raw projection, before it.
        unsupported: config attributes that must be None/False for the engine's assumptions to hold
            (e.g. attention logit soft-capping, which the SDPA path and the capture do not apply).
        body / lm_head: the decoder stack (returns the final-normed hidden states) and the output
            projection of the causal-LM model.
        causal_lm_classes: the causal-LM classes whose ``forward`` is exactly ``lm_head(body(...))``
            (plus the final soft-capping where ``final_logit_softcapping``); only for those may
            :meth:`split_forward` replace the model's own forward. Any other class (remote code)
            is run whole.
        final_logit_softcapping: the class applies ``cap * tanh(logits / cap)`` with
            ``config.final_logit_softcapping`` when that is set (Gemma 2/3).
    """

    family: str
    model_types: tuple[str, ...]
    layers: str
    embed: str
    final_norm: str
    rotary: str
    attn: str
    q_proj: str
    k_proj: str
    block_mlp_write: str
    block_mlp_write_note: str
    qk_norm: QkNormPlacement
    identity_rotary: Callable[[nn.Module], nn.Module]
    layer_kinds_of: Callable[[Any], list[LayerKind]] = _layer_kinds_from_config
    unsupported: tuple[str, ...] = ()
    body: str = "model"
    lm_head: str = "lm_head"
    causal_lm_classes: tuple[str, ...] = ()
    final_logit_softcapping: bool = False

    # -- lookups ---------------------------------------------------------------------------------

    def _require(self, root: nn.Module, path: str, what: str) -> Any:
        found = _get(root, path)
        if found is None:
            name = getattr(getattr(root, "config", None), "_name_or_path", None) or type(root).__name__
            raise UnsupportedArchitecture(
                f"model {name!r} ({self.family} adapter) has no `{path}` ({what}); its module layout is not the "
                f"one the {self.family} adapter knows"
            )
        return found

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return self._require(model, self.layers, "decoder layers")

    def embedding(self, model: nn.Module) -> nn.Module:
        return self._require(model, self.embed, "token embedding")

    def final_norm_module(self, model: nn.Module) -> nn.Module:
        return self._require(model, self.final_norm, "final norm")

    def rotary_module(self, model: nn.Module) -> nn.Module:
        return self._require(model, self.rotary, "rotary embedding")

    def attention(self, block: nn.Module) -> nn.Module:
        return self._require(block, self.attn, "attention")

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        return [self.attention(block) for block in self.decoder_layers(model)]

    def projection(self, attn: nn.Module, which: Literal["q", "k"]) -> nn.Module:
        return self._require(attn, self.q_proj if which == "q" else self.k_proj, f"{which} projection")

    def mlp_write(self, block: nn.Module) -> nn.Module:
        return self._require(block, self.block_mlp_write, "feed-forward write into the residual")

    def layer_kinds(self, model_or_config: Any) -> list[LayerKind]:
        config = getattr(model_or_config, "config", model_or_config)
        return self.layer_kinds_of(config)

    def split_forward(
        self, model: nn.Module
    ) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]] | None:
        """``(body, head)`` with ``head(body(input_ids=..., attention_mask=...).last_hidden_state)`` equal
        to ``model(...).logits``, or None when this class's forward is not known to be exactly that.

        Why: a 262k-token vocabulary (Gemma 3) makes ``[B, T, V]`` logits ~2 GB per batch of 4 x 512;
        with the body and head apart, perplexity projects only the positions it scores, in chunks.
        """
        if type(model).__name__ not in self.causal_lm_classes:
            return None
        body, head = _get(model, self.body), _get(model, self.lm_head)
        if body is None or head is None:
            return None
        cap = getattr(model.config, "final_logit_softcapping", None) if self.final_logit_softcapping else None

        def project(hidden: torch.Tensor) -> torch.Tensor:
            logits = head(hidden)
            if cap is not None:
                logits = torch.tanh(logits / cap) * cap
            return logits

        return body, project

    # -- what is not a path ----------------------------------------------------------------------

    def apply_identity_rotation(self, model: nn.Module) -> nn.Module:
        """Replace the rotary step by the identity for every layer (type) of ``model``, in place."""
        self.rotary_module(model)  # refuse a layout without one
        _set(model, self.rotary, self.identity_rotary(model))
        return model

    def check_supported(self, model_or_config: Any) -> None:
        """Raise if the config uses a feature the engine does not reproduce (named in the message)."""
        config = getattr(model_or_config, "config", model_or_config)
        used = [f"{key}={getattr(config, key)!r}" for key in self.unsupported if getattr(config, key, None)]
        if used:
            raise UnsupportedArchitecture(
                f"{self.family} model with {', '.join(used)}: drope_check's attention path (SDPA) and capture do not "
                "apply this; refusing rather than measuring a different computation"
            )

    def provenance(self, model: nn.Module) -> dict[str, Any]:
        """What a measurement records about the architecture: family, the write point, QK-norm, layer kinds."""
        kinds = self.layer_kinds(model)
        return {
            "family": self.family,
            "model_type": getattr(model.config, "model_type", None),
            "block_mlp_write": f"{self.layers}[l].{self.block_mlp_write} ({self.block_mlp_write_note})",
            "qk_norm": self.qk_norm,
            "layer_kinds": [k.describe() for k in kinds],
            "sliding_layers": [i for i, k in enumerate(kinds) if k.kind == "sliding"],
        }


def _head_dim(model: nn.Module, arch_layers: str, arch_attn: str) -> int:
    block = _get(model, arch_layers)[0]
    return int(_get(block, arch_attn).head_dim)


LLAMA = Architecture(
    family="llama",
    # llama_drope: SakanaAI's DroPE checkpoints loaded through their remote code keep Llama's module
    # layout (their attention calls the stock Llama attention); natively they load as `llama`.
    model_types=("llama", "llama_drope"),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    rotary="model.rotary_emb",
    attn="self_attn",
    q_proj="q_proj",
    k_proj="k_proj",
    block_mlp_write="mlp",
    block_mlp_write_note="the MLP output, added to the residual as is",
    qk_norm="none-or-projection-hook",
    identity_rotary=lambda model: IdentityRotaryEmbedding(_head_dim(model, "model.layers", "self_attn")),
    causal_lm_classes=("LlamaForCausalLM",),
)

GEMMA3 = Architecture(
    family="gemma3",
    model_types=("gemma3_text",),
    layers="model.layers",
    embed="model.embed_tokens",  # Gemma3TextScaledWordEmbedding: its output already carries sqrt(hidden)
    final_norm="model.norm",
    rotary="model.rotary_emb",  # one module, forward(x, position_ids, layer_type): local and global bases
    attn="self_attn",
    q_proj="q_proj",
    k_proj="k_proj",
    block_mlp_write="post_feedforward_layernorm",
    block_mlp_write_note="the MLP output after the post-feed-forward RMSNorm, as it enters the residual",
    qk_norm="per-head-pre-rotary",
    identity_rotary=lambda model: IdentityRotaryEmbedding(_head_dim(model, "model.layers", "self_attn")),
    unsupported=("attn_logit_softcapping", "use_bidirectional_attention"),
    causal_lm_classes=("Gemma3ForCausalLM",),
    final_logit_softcapping=True,
)

#: Every supported family.
ARCHITECTURES: tuple[Architecture, ...] = (LLAMA, GEMMA3)

_BY_MODEL_TYPE: dict[str, Architecture] = {t: arch for arch in ARCHITECTURES for t in arch.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def architecture_for_model_type(model_type: str | None) -> Architecture:
    """The record serving ``model_type``; :class:`UnsupportedArchitecture` with the supported list otherwise."""
    try:
        return _BY_MODEL_TYPE[model_type]  # type: ignore[index]
    except KeyError:
        raise UnsupportedArchitecture(
            f"model_type {model_type!r} is not supported by drope_check; supported: {', '.join(supported_model_types())} "
            "(a new family is a new Architecture record in drope_check/engine/architectures.py)"
        ) from None


def architecture_of(model_or_config: Any) -> Architecture:
    """The record of a model (or its config), chosen by ``config.model_type``."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        name = type(model_or_config).__name__
        raise UnsupportedArchitecture(
            f"{name} has no config.model_type; supported model types: {', '.join(supported_model_types())}"
        )
    return architecture_for_model_type(model_type)
