"""The report's two functional interventions, as context managers that record what they did.

Claims under test (report, "BOS-MLP Ablation" and "Q/K Disruption" sections): zeroing the BOS
token's MLP output at the "BOS spike layer" raises RoPE's perplexity 1249x and leaves DroPE's
unchanged; replacing massive Q/K values by their mean costs RoPE 6.7x and DroPE 1.29x.

Both interventions are implemented exactly as upstream's code defined them, next to the principled
variant, because the numbers hinge on the details:

* :func:`bos_mlp_ablation` zeroes the feed-forward branch's write into the residual at the BOS row
  (the architecture's ``block_mlp_write``: ``layers[L].mlp`` for Llama, ``layers[L].post_feedforward_layernorm``
  for Gemma 3, whose MLP output is normed before it is added). Upstream's hook zeroed
  row 0 of *every* forward call, which during cached generation is the newly generated token, not
  the BOS (confound documented below; ``every_call=True`` reproduces it). Which ``L`` is used matters
  more than anything else here: the notes' confound 4 shows DroPE's massive BOS write happens at
  layer 1 while upstream's ``argmax-ratio`` rule picks layer 2, whose BOS MLP output is ~70x smaller.
  The record therefore stores the norm of what was zeroed, so an ablation of a near-silent MLP is
  visibly near-silent.
* :func:`qk_disruption` replaces, per head, the top-k dims of q and k by their mean over the
  sequence. ``rule="report"`` is upstream's code: hooks on the raw ``q_proj`` / ``k_proj`` outputs
  (before the rotary step and before any per-head QK-norm, e.g. Gemma 3's), replacement only where the dim's L2 norm over the sequence exceeds
  ``threshold`` (5.0) x the mean of that head's dim norms. (The report's prose says ">10 std"; no
  such rule exists in the code.) ``rule="jin"`` is Jin et al. (ICML 2025): the same replacement on
  the *post-rotary* q/k the model attends with, top-1 per head, no threshold, through
  :func:`drope_check.engine.attention.transform_query_key`. For an identity-rotation (DroPE) model without
  QK-norm the two positions coincide; for a RoPE model they do not.

Statistics are per sequence over its real (unpadded) positions. Upstream ran batch size 1 and
averaged "over batch and positions", so per-sequence statistics equal upstream's there and make a
padded batch give exactly the per-sequence result (tests prove both).

Every context manager yields an :class:`InterventionRecord` that counts how often each hook fired,
which rows / heads / dims it touched and with what norms; hooks and registrations are removed in
``finally``, also when the body raises.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from drope_check.engine import metrics
from drope_check.engine.architectures import architecture_of
from drope_check.engine.attention import decoder_layers, transform_query_key

if TYPE_CHECKING:
    from drope_check.engine.perplexity import PerplexityResult

__all__ = [
    "INTERVENTIONS",
    "QK_RULES",
    "ColumnReplacement",
    "InterventionRecord",
    "bos_mlp_ablation",
    "measure_interventions",
    "qk_disruption",
    "replace_massive_columns",
]

#: Q/K disruption rules: name -> what it does.
QK_RULES: dict[str, str] = {
    "report": "upstream code: raw q_proj/k_proj outputs (pre-rotary), top-k dims per head replaced by "
    "their sequence mean when the dim's L2 norm > threshold x the head's mean dim norm (default 5.0)",
    "jin": "Jin et al. (ICML 2025): post-rotary q/k as attended, top-k (default 1) dims per head "
    "replaced by their sequence mean, no threshold",
}

#: Default intervention names understood by :func:`measure_interventions`.
INTERVENTIONS: tuple[str, ...] = (
    "bos_mlp_ablation:argmax-ratio",
    "bos_mlp_ablation:max-write",
    "qk_disruption:report",
    "qk_disruption:jin",
)


# --------------------------------------------------------------------------------------------------
# the record


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

    def _add_column(self, layer: int, tensor: str, head: int, dim: int, norm: float, head_mean: float) -> None:
        key = (layer, tensor, head, dim)
        entry = self._index.get(key)
        ratio = norm / head_mean if head_mean > 0 else math.inf
        if entry is None:
            entry = {
                "layer": layer, "tensor": tensor, "head": head, "dim": dim, "sequences": 0,
                "norm": 0.0, "head_mean_norm": 0.0, "max_ratio": 0.0,
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

        return clean({
            "kind": self.kind,
            "rule": self.rule,
            "layers": list(self.layers),
            "params": dict(self.params),
            "calls": dict(self.calls),
            "skipped_calls": self.skipped_calls,
            "examined": dict(self.examined),
            "summary": self.summary(),
            "touched": [dict(t) for t in self.touched],
        })


# --------------------------------------------------------------------------------------------------
# helpers


def _model_name(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", None) or type(model).__name__


def _check_layer(model: torch.nn.Module, layer: Any) -> int:
    n = len(decoder_layers(model))
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(
            f"layer {layer!r} is out of range for model {_model_name(model)!r}, which has {n} decoder "
            f"layers: give an int in 0..{n - 1} (spike-layer rules index decoder blocks from 0)"
        )
    return layer


def _module_names(model: torch.nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules()}


def _call_arg(args: tuple, kwargs: dict, name: str, index: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


class _CallState:
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
def _track_calls(model: torch.nn.Module) -> Iterator[_CallState]:
    # The module holding the decoder layers (``model.model`` for both families): it sees the 2-D mask.
    layers_path = architecture_of(model).layers
    base = model.get_submodule(layers_path.rpartition(".")[0]) if "." in layers_path else model
    state = _CallState()

    def pre(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        mask = _call_arg(args, kwargs, "attention_mask", 1)
        state.mask2d = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        state.past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0

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


# --------------------------------------------------------------------------------------------------
# BOS-MLP ablation


@contextlib.contextmanager
def bos_mlp_ablation(
    model: torch.nn.Module, layer: int, every_call: bool = False
) -> Iterator[InterventionRecord]:
    """Zero the feed-forward write of ``layers[layer]`` at each sequence's BOS row while open.

    What is claimed: the report's "BOS-MLP ablation" = a forward hook on ``layers[L].mlp`` setting
    ``output[:, 0, :] = 0``. The hooked module is the architecture's ``block_mlp_write`` (the output
    that is added to the residual): Llama's ``mlp``; Gemma 3's ``post_feedforward_layernorm``. (Zeroing
    Gemma's MLP output instead has the same effect, as the RMSNorm of a zero row is zero, but the
    recorded norm would then be of the pre-norm tensor, not of what the block wrote into BOS.) For right-padded batches (this suite's convention) and any uncached call
    that is exactly what happens here: row 0 of every sequence is its BOS. Two deliberate differences:

    * With LEFT padding (a 2-D ``attention_mask`` whose rows start with zeros) the row zeroed is each
      sequence's first real token, not the pad at index 0.
    * During cached generation a call holds only new tokens; it contains no sequence's first token
      and is left untouched (counted in ``record.skipped_calls``). Upstream's hook zeroed row 0 of
      every call, i.e. also every newly generated token, which ablates a different position at each
      decoding step (a bias of generation-based numbers). ``every_call=True`` reproduces upstream's
      hook exactly (row 0 of every call, whatever it holds) so the confound can be measured.

    The position of the first token is read from a forward pre-hook on ``model.model``: the KV
    cache's length and the 2-D attention mask of the call.

    Yields:
        An :class:`InterventionRecord` (kind ``"bos_mlp_ablation"``) with one ``touched`` entry per
        zeroed row holding the L2 norm of the MLP output that was removed.

    Raises:
        ValueError: ``layer`` outside ``0..num_layers-1`` (the message names the model and range).
    """
    layer = _check_layer(model, layer)
    arch = architecture_of(model)
    mlp = arch.mlp_write(arch.decoder_layers(model)[layer])
    name = _module_names(model).get(id(mlp), f"layers.{layer}.{arch.block_mlp_write}")
    record = InterventionRecord(
        kind="bos_mlp_ablation",
        rule="every-call" if every_call else "bos",
        layers=[layer],
        params={"layer": layer, "every_call": every_call},
    )
    calls = 0

    with _track_calls(model) as state:

        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            call = calls
            calls += 1
            record._count_call(name)
            batch, length = output.shape[0], output.shape[1]
            if every_call:
                rows = [(b, 0) for b in range(batch)]
            else:
                if state.mask2d is not None and state.mask2d.shape[0] == batch:
                    mask = state.mask2d != 0
                    first = mask.to(torch.int8).argmax(dim=1).tolist()
                    has_real = mask.any(dim=1).tolist()
                    offset = state.past + length - mask.shape[1]  # absolute index of mask column 0
                    firsts = [f + offset if ok else None for f, ok in zip(first, has_real, strict=True)]
                else:
                    firsts = [0] * batch
                rows = [
                    (b, f - state.past)
                    for b, f in enumerate(firsts)
                    if f is not None and 0 <= f - state.past < length
                ]
            if not rows:
                record.skipped_calls += 1
                return output
            b_idx = torch.tensor([r[0] for r in rows], device=output.device)
            t_idx = torch.tensor([r[1] for r in rows], device=output.device)
            removed = torch.linalg.vector_norm(output[b_idx, t_idx].float(), dim=-1).tolist()
            new = output.clone()
            new[b_idx, t_idx] = 0
            for (b, t), norm in zip(rows, removed, strict=True):
                record.touched.append(
                    {"layer": layer, "call": call, "row": b, "position": t, "bos_mlp_output_norm": norm}
                )
            return new

        handle = mlp.register_forward_hook(hook)
        try:
            yield record
        finally:
            handle.remove()


# --------------------------------------------------------------------------------------------------
# Q/K disruption


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
        raise ValueError(f"real mask {tuple(real.shape)} does not match activations [B, T] = {(batch, length)}")
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
    record.examined[tensor] = record.examined.get(tensor, 0) + int(result.examined.sum()) * result.replaced.shape[1]
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
    chosen = list(range(n_layers)) if layers is None else [_check_layer(model, i) for i in layers]
    record = InterventionRecord(
        kind="qk_disruption",
        rule=rule,
        layers=chosen,
        params={"threshold": threshold, "top_k": top_k, "position": "pre-rotary" if rule == "report" else "post-rotary"},
    )
    names = _module_names(model)
    arch = architecture_of(model)
    blocks = arch.decoder_layers(model)

    with _track_calls(model) as state:
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


# --------------------------------------------------------------------------------------------------
# perplexity under interventions


def _parse_intervention(name: str, spike_layers: dict[str, int]) -> tuple[str, str, int | None]:
    kind, _, arg = name.partition(":")
    if kind == "bos_mlp_ablation":
        if arg in spike_layers:
            return kind, arg, spike_layers[arg]
        if arg.isdigit():
            return kind, "explicit", int(arg)
        raise ValueError(
            f"intervention {name!r}: no layer for spike rule {arg!r}; spike_layers has "
            f"{sorted(spike_layers)} (or name a layer explicitly, e.g. 'bos_mlp_ablation:1')"
        )
    if kind == "qk_disruption":
        if arg in QK_RULES:
            return kind, arg, None
        raise ValueError(f"intervention {name!r}: unknown Q/K rule {arg!r}; known rules: {sorted(QK_RULES)}")
    raise ValueError(
        f"unknown intervention {name!r}; use 'bos_mlp_ablation:<spike rule or layer>' or "
        f"'qk_disruption:<{'|'.join(QK_RULES)}>', e.g. {list(INTERVENTIONS)}"
    )


def measure_interventions(
    model: torch.nn.Module,
    seqs: list[list[int]],
    pad_token_id: int,
    spike_layers: dict[str, int],
    which: Sequence[str] = INTERVENTIONS,
    batch_size: int = 4,
    baseline: PerplexityResult | None = None,
) -> dict[str, dict[str, Any]]:
    """Perplexity (``lines`` protocol) under each named intervention, with its ratio to the baseline.

    Names: ``"bos_mlp_ablation:<rule>"`` ablates at ``spike_layers[<rule>]`` (e.g. ``argmax-ratio``,
    upstream's rule, or ``max-write``), ``"bos_mlp_ablation:<int>"`` at that layer;
    ``"qk_disruption:report"`` uses upstream's threshold 5.0 / top-1 on raw projections and
    ``"qk_disruption:jin"`` Jin's top-1 post-rotary replacement without threshold.

    Returns, per name: ``ppl``, ``baseline_ppl``, ``ratio`` = ppl / baseline_ppl, ``protocol``,
    ``kind``, ``rule``, ``spike_rule`` and ``layer`` (ablation), ``perplexity`` (the full
    :class:`~drope_check.engine.perplexity.PerplexityResult`) and ``record`` (what was touched). The
    baseline is computed here with the same protocol and batch size when not given; a given
    baseline must be a ``lines`` result on the same sequences.
    """
    from drope_check.engine.perplexity import perplexity_lines

    parsed = [(name, *_parse_intervention(name, spike_layers)) for name in which]
    for _, _, _, layer in parsed:
        if layer is not None:
            _check_layer(model, layer)
    if baseline is None:
        baseline = perplexity_lines(model, seqs, pad_token_id, batch_size=batch_size)
    elif baseline.protocol != "lines" or len(baseline.per_sequence) != len(seqs):
        raise ValueError(
            f"baseline is a {baseline.protocol!r} result on {len(baseline.per_sequence)} sequences; "
            f"need a 'lines' result on the same {len(seqs)} sequences (or pass baseline=None)"
        )
    results: dict[str, dict[str, Any]] = {}
    # Two spike rules often pick the same layer (both L11 on the embedded pair): one ablation
    # pass serves both names instead of repeating the same forwards.
    ablations: dict[int, tuple[PerplexityResult, Any]] = {}
    for name, kind, rule, layer in parsed:
        if kind == "bos_mlp_ablation":
            assert layer is not None
            if layer not in ablations:
                with bos_mlp_ablation(model, layer) as record:
                    ablations[layer] = (perplexity_lines(model, seqs, pad_token_id, batch_size=batch_size), record)
            result, record = ablations[layer]
        else:
            context = qk_disruption(model, rule, threshold=5.0 if rule == "report" else None, top_k=1)
            with context as record:
                result = perplexity_lines(model, seqs, pad_token_id, batch_size=batch_size)
        results[name] = {
            "intervention": name,
            "kind": kind,
            "rule": record.rule,
            "spike_rule": rule if kind == "bos_mlp_ablation" else None,
            "layer": layer,
            "protocol": result.protocol,
            "ppl": result.ppl,
            "baseline_ppl": baseline.ppl,
            "ratio": metrics.perplexity_ratio(result.ppl, baseline.ppl),
            "n_sequences": len(seqs),
            "n_predicted": result.n_predicted,
            "perplexity": result.to_dict(),
            "record": record.to_dict(),
        }
    return results
