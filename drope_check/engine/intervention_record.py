"""What an intervention did (:class:`InterventionRecord`), and the helpers both interventions share: the
model's name, a layer index checked, module names, and the forward calls tracked."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from drope_check.engine.architectures import architecture_of
from drope_check.engine.attention import decoder_layers

if TYPE_CHECKING:
    pass


@dataclass
class InterventionRecord:
    """What one intervention context did, JSON-able through :meth:`to_dict`.

    Attributes:
        kind: ``"bos_mlp_ablation"`` or ``"qk_disruption"``.
        rule: ablation: ``"bos"`` (first real token, cached steps skipped) or ``"every-call"``
            (upstream: row 0 of every call); disruption: ``"report"`` or ``"jin"``.
        layers: the decoder layers hooked.
        params: the parameters (threshold, top_k, ...).
        calls: hook name (module path) -> how often that hook fired.
        skipped_calls: ablation: calls that contained no sequence's first token (cached decoding
            steps), left untouched.
        touched: ablation: one entry per zeroed row ``{layer, call, row, position,
            bos_mlp_output_norm}``; disruption: one entry per replaced column ``{layer, tensor ("q" or
            "k"), head, dim, sequences (how many sequences had it replaced), norm and head_mean_norm
            (means over those sequences), max_ratio}``.
        examined: disruption: per tensor ``"q"`` / ``"k"``, how many (sequence, head) pairs were
            examined; with ``touched`` this gives how selective the threshold was.
    """

    kind: str
    rule: str
    layers: list[int]
    params: dict[str, Any] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    skipped_calls: int = 0
    touched: list[dict[str, Any]] = field(default_factory=list)
    examined: dict[str, int] = field(default_factory=dict)
    _index: dict[tuple, dict[str, Any]] = field(default_factory=dict, repr=False, compare=False)

    def _count_call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _add_column(
        self, layer: int, tensor: str, head: int, dim: int, norm: float, head_mean: float
    ) -> None:
        key = (layer, tensor, head, dim)
        entry = self._index.get(key)
        ratio = norm / head_mean if head_mean > 0 else math.inf
        if entry is None:
            entry = {
                "layer": layer,
                "tensor": tensor,
                "head": head,
                "dim": dim,
                "sequences": 0,
                "norm": 0.0,
                "head_mean_norm": 0.0,
                "max_ratio": 0.0,
            }
            self._index[key] = entry
            self.touched.append(entry)
        entry["sequences"] += 1
        n = entry["sequences"]
        entry["norm"] += (norm - entry["norm"]) / n
        entry["head_mean_norm"] += (head_mean - entry["head_mean_norm"]) / n
        entry["max_ratio"] = max(entry["max_ratio"], ratio)

    def summary(self) -> dict[str, Any]:
        """A few headline numbers: rows / columns touched and the size of what was changed."""
        out: dict[str, Any] = {"hook_calls": sum(self.calls.values()), "touched": len(self.touched)}
        if self.kind == "bos_mlp_ablation":
            norms = [t["bos_mlp_output_norm"] for t in self.touched]
            out["rows_zeroed"] = len(norms)
            out["skipped_calls"] = self.skipped_calls
            out["bos_mlp_output_norm_mean"] = sum(norms) / len(norms) if norms else 0.0
            out["bos_mlp_output_norm_max"] = max(norms) if norms else 0.0
        else:
            for tensor in ("q", "k"):
                rows = [t for t in self.touched if t["tensor"] == tensor]
                out[f"{tensor}_replacements"] = sum(t["sequences"] for t in rows)
                out[f"{tensor}_examined"] = self.examined.get(tensor, 0)
            ratios = [t["max_ratio"] for t in self.touched if math.isfinite(t["max_ratio"])]
            out["max_ratio"] = max(ratios) if ratios else 0.0
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (no tensors; infinities written as the string ``"inf"``)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        return clean(
            {
                "kind": self.kind,
                "rule": self.rule,
                "layers": list(self.layers),
                "params": dict(self.params),
                "calls": dict(self.calls),
                "skipped_calls": self.skipped_calls,
                "examined": dict(self.examined),
                "summary": self.summary(),
                "touched": [dict(t) for t in self.touched],
            }
        )


def model_name(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or type(model).__name__


def check_layer(model: torch.nn.Module, layer: Any) -> int:
    n = len(decoder_layers(model))
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(
            f"layer {layer!r} is out of range for model {model_name(model)!r}, which has {n} decoder "
            f"layers: give an int in 0..{n - 1} (spike-layer rules index decoder blocks from 0)"
        )
    return layer


def module_names(model: torch.nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules()}


def call_arg(args: tuple, kwargs: dict, name: str, index: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


class CallState:
    """What the outermost decoder stack saw at the start of the current forward call.

    ``mask2d`` is the 2-D ``attention_mask`` [B, past + T] (1 = real) the caller passed, or None;
    ``past`` is the number of tokens already in the KV cache. Both come from a forward pre-hook on
    ``model.model`` and are cleared by a forward hook that always runs (also when the call raises).
    When the stack was bypassed (a decoder layer called directly) nothing is known: no padding, no
    cache.
    """

    def __init__(self) -> None:
        self.mask2d: torch.Tensor | None = None
        self.past: int = 0

    def real_positions(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        """Bool [batch, length]: which of the last ``length`` positions of the call are real tokens."""
        mask = self.mask2d
        if mask is None or mask.shape[0] != batch or mask.shape[1] < length:
            return torch.ones(batch, length, dtype=torch.bool, device=device)
        return mask[:, mask.shape[1] - length :].to(device=device) != 0


@contextlib.contextmanager
def track_calls(model: torch.nn.Module) -> Iterator[CallState]:
    # The module holding the decoder layers (``model.model`` for both families): it sees the 2-D mask.
    layers_path = architecture_of(model).layers
    base = model.get_submodule(layers_path.rpartition(".")[0]) if "." in layers_path else model
    state = CallState()

    def pre(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        mask = call_arg(args, kwargs, "attention_mask", 1)
        state.mask2d = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        state.past = (
            int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        )

    def post(module: torch.nn.Module, args: tuple, output: Any) -> None:
        state.mask2d = None
        state.past = 0

    handles = []
    try:
        handles.append(base.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(base.register_forward_hook(post, always_call=True))
        yield state
    finally:
        for handle in handles:
            handle.remove()
