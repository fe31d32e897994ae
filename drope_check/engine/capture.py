"""One-pass capture: everything the phase metrics need, from ONE forward pass over a batch.

For every decoder layer and every sequence of the batch, the capture keeps

* summaries of the raw residual stream after the block (the output of the decoder layer, i.e.
  HF ``hidden_states[l + 1]`` for l < L - 1 and, for the last layer, the residual *before* the
  final RMSNorm, which ``hidden_states`` does not expose): BOS norm, BOS ratio, Queipo's c and
  alpha, matrix entropy (raw and normalised), anisotropy, mean token norm;
* the norm of the feed-forward branch's write at position 0, as it enters the residual (the
  architecture's ``block_mlp_write``: Llama's MLP output, Gemma 3's post-feed-forward norm output);
* each head's attention to position 0 for every query, computed from the exact query/key tensors
  the model attends with (post-rotary, post-QK-norm, GQA-grouped, the model's own scaling and
  mask) as handed to :mod:`drope_check.engine.attention`. Two paths, chosen per layer and batch:

  - **from the kernel's log-sum-exp** (the default where it applies): the SDPA kernel that computes
    the layer's output also returns each query's log-sum-exp, so ``a_0 = exp(s q.k_0 - lse)``
    costs O(H T D) on top of the forward (:func:`attention_to_position0_from_lse`). Used when the
    float32 logits are accurate enough by the rounding bound (:data:`AUTO_FLOAT32_BOUND`, or
    ``stats_dtype="float32"``) and the kernel path applied
    (:func:`drope_check.engine.attention.sdpa_with_logsumexp`);
  - **chunked exact log-sum-exp** (:func:`attention_to_position0`) in float64 (or float32),
    a chunk of queries at a time so no [heads, T, T] tensor larger than a chunk ever exists: for
    layers the bound flags (e.g. DroPE Llama-2-7B layer 1), ``stats_dtype="float64"``, upstream's
    projection-based Q/K, and any call the kernel path cannot take.

Only each sequence's real tokens enter its statistics (right padding never changes them), unless
the protocol deliberately keeps pad rows (upstream's RoPE confound). Any non-finite value raises
:class:`CaptureError` naming the model, the layer and the quantity.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn

from drope_check.engine import residual_stats
from drope_check.engine.architectures import architecture_of
from drope_check.engine.attention import AttentionCall, observe_attention
from drope_check.engine.fp16_eager import attention_to_position0_fp16_eager
from drope_check.engine.metric_table import CAPTURED_SERIES, MOMENT_STATS, SPECTRUM_STATS
from drope_check.engine.protocol import Protocol

#: Upper bound on the elements of one chunk of attention scores ([B, H, chunk, K]).
SCORE_CHUNK_ELEMENTS = 1 << 24

#: ``stats_dtype="auto"`` computes a layer's attention to BOS in float32 when the rounding bound
#: 2 * scaling * max||q|| * max||k|| * 2**-24 on the float32 logits is at most this (measured on the
#: embedded pair: actual relative error <= 0.6x the bound, so <= ~1e-5 relative, inside the 1e-4
#: the suite promises), and in float64 otherwise (e.g. DroPE Llama-2-7B layer 1, q/k norms ~6.6e3/5.5e3,
#: where float32 logits would be off by ~0.4).
AUTO_FLOAT32_BOUND = 2e-5

#: (device type, q/k dtype) whose SDPA-kernel log-sum-exp the capture uses for attention to BOS.
#: Measured on CPU (torch 2.13, tests/test_attention_capture.py): float32 q/k give the log-sum-exp of
#: float32 logits (abs. error ~1e-5 at logits ~35, so a_0 within 1e-4 relative wherever the rounding
#: bound allows float32); bfloat16 / float16 q/k give a constant ~5e-5 error even for tiny logits
#: (the kernel's reduced-precision exp), too close to the promised 1e-4, so those use the chunked
#: path. CUDA kernels are not listed until benchmarks/gpu_smoke.py has measured their error on a GPU
#: (it reports it as ``kernel_lse_max_rel_error``).
KERNEL_LSE_TRUSTED: frozenset[tuple[str, torch.dtype]] = frozenset(
    {("cpu", torch.float32), ("cpu", torch.float64)}
)

#: Per-layer residual statistics a sequence gets, in this order (names of ``SequenceCapture.layers``;
#: :data:`drope_check.engine.metric_table.CAPTURED_SERIES`).
LAYER_STATS = CAPTURED_SERIES


#: Residual statistics from the moments of a residual (:func:`drope_check.engine.residual_stats.residual_moments`)
#: and those from its spectrum (:func:`drope_check.engine.residual_stats.gram_entropies`).
RESIDUAL_STATS = MOMENT_STATS + SPECTRUM_STATS

#: Name of a residual matrix in the errors of :func:`drope_check.engine.residual_stats.residual_moments`.
RESIDUAL = "residual"

#: CPU: residual rows (copies, in the model's dtype) kept before their statistics are solved as one
#: batch on the capture's threads: 64 MiB = 28 layers x 4 rows at T = 512, d = 576 (float32), 3
#: layers at T = 8192. Solving a few rows per layer inside the forward cost more than the work
#: itself: torch's OpenMP threads spin on the cores for milliseconds after each of the layer's
#: kernels, so the rows' threads waited for them (measured, docs/performance.md).
ROW_BUFFER_BYTES = 64 << 20

#: Other devices: pending Gram matrices (float64, on the device) kept before their eigenproblems
#: are solved as one batch: 64 MiB = 32 sequences x layers at n = 512.
GRAM_BUFFER_BYTES = 64 << 20


class CaptureError(RuntimeError):
    """A captured quantity was non-finite or inconsistent; the message names model, layer, quantity."""


def attention_to_position0(
    query: torch.Tensor,
    key: torch.Tensor,
    allowed: torch.Tensor,
    scaling: float,
    dtype: torch.dtype = torch.float64,
    chunk_elements: int = SCORE_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Attention weight of every query on key position 0: ``softmax(q k^T * scaling + mask)[..., 0]``.

    ``query`` [B, H, Q, D]; ``key`` [B, KVH, K, D] with H a multiple of KVH (query head h reads KV
    head h // (H / KVH), transformers' ``repeat_kv`` grouping); ``allowed`` bool [B, 1|H, Q, K].
    Computed in ``dtype`` by an exact log-sum-exp over the allowed keys, a chunk of queries at a
    time. Query rows with no allowed key (left padding) get 0. Returns [B, H, Q] in ``dtype``.
    """
    b, h, q_len, d = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    if h % kv_heads:
        raise ValueError(f"{h} query heads are not a multiple of {kv_heads} key/value heads")
    groups = h // kv_heads
    q = query.to(dtype).view(b, kv_heads, groups, q_len, d)
    k = key.to(dtype)
    # Broadcast, never materialise: a shared [B, 1, Q, K] mask stays one mask for all heads.
    if allowed.shape[1] == 1:
        allowed = allowed.view(allowed.shape[0], 1, 1, q_len, k_len)
    else:
        allowed = allowed.reshape(allowed.shape[0], kv_heads, groups, q_len, k_len)
    chunk = max(1, min(q_len, chunk_elements // max(1, b * h * k_len)))
    out = torch.empty(b, kv_heads, groups, q_len, dtype=dtype, device=query.device)
    for start in range(0, q_len, chunk):
        stop = min(q_len, start + chunk)
        scores = torch.einsum("bkgqd,bksd->bkgqs", q[:, :, :, start:stop], k) * scaling
        mask = allowed[:, :, :, start:stop]
        scores = scores.masked_fill_(~mask, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)
        weight0 = torch.exp(scores[..., 0] - lse)
        # rows with no allowed key (left padding) have lse = -inf: 0, not NaN
        out[:, :, :, start:stop] = torch.where(torch.isneginf(lse), torch.zeros_like(weight0), weight0)
    return out.view(b, h, q_len)


def attention_to_position0_from_lse(
    query: torch.Tensor, key: torch.Tensor, lse: torch.Tensor, first_key_allowed: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Attention weight of every query on key 0 from the kernel's log-sum-exp, in O(B H Q D).

    ``softmax(s q k^T + mask)[..., 0] = exp(s q.k_0 - lse)`` where ``lse`` [B, H, Q] is the
    log-sum-exp of each query's allowed scores (returned by the SDPA kernel that computed the
    layer's output, :func:`drope_check.engine.attention.sdpa_with_logsumexp`) and key 0 is allowed
    (``first_key_allowed`` [B, 1|H, Q]); 0 where it is not. ``q.k_0`` is computed in float64, so
    the error is the kernel's float32 log-sum-exp (~2^-24 relative to the largest logit; the
    capture's rounding bound decides when that is good enough). GQA as in
    :func:`attention_to_position0`. Returns float64 [B, H, Q].
    """
    b, h, q_len, d = query.shape
    kv_heads = key.shape[1]
    if h % kv_heads:
        raise ValueError(f"{h} query heads are not a multiple of {kv_heads} key/value heads")
    if lse.shape != (b, h, q_len):
        raise ValueError(f"lse has shape {tuple(lse.shape)}, expected {(b, h, q_len)}")
    q = query.to(torch.float64).view(b, kv_heads, h // kv_heads, q_len, d)
    k0 = key[:, :, 0].to(torch.float64)  # [B, KVH, D]
    logit0 = torch.einsum("bkgqd,bkd->bkgq", q, k0).reshape(b, h, q_len) * scaling
    weight0 = torch.exp(logit0 - lse.to(torch.float64))
    return torch.where(
        first_key_allowed, weight0, torch.zeros((), dtype=torch.float64, device=weight0.device)
    )


@dataclass
class SequenceCapture:
    """What one sequence contributes: per-layer residual statistics and attention to BOS.

    ``layers[stat][l]`` is filled by :meth:`record` (NaN until then: layers may be solved out of
    order, e.g. the spectra after the forward)."""

    n_rows: int
    embedding_bos_norm: float = float("nan")
    layers: dict[str, list[float]] = field(default_factory=dict)
    attn_to_bos: list[torch.Tensor] = field(default_factory=list)  # per layer [H, n_rows]

    def record(self, stat: str, layer: int, value: float) -> None:
        self.layers[stat][layer] = value

    def check_complete(self, n_layers: int, model_name: str) -> None:
        for stat in LAYER_STATS:
            values = self.layers.get(stat, [])
            got = sum(1 for v in values if v == v)  # recorded (non-NaN) entries
            if got != n_layers or len(values) != n_layers:
                raise CaptureError(f"{model_name}: captured {got} of {n_layers} layers for {stat!r}")
        if len(self.attn_to_bos) != n_layers or any(
            a is None for a in self.attn_to_bos
        ):  # a layer never attended
            raise CaptureError(
                f"{model_name}: attention to BOS missing for some layers (attention path not used?)"
            )


def _check_finite(value: torch.Tensor, model_name: str, layer: int | str, quantity: str, row: int) -> None:
    if not torch.isfinite(value).all():
        raise CaptureError(f"{model_name}: layer {layer}: non-finite {quantity} in sequence row {row}")


class OnePassCapture:
    """Installs the capture on ``model``; use :meth:`batch` around each forward pass.

    ``rows`` passed to :meth:`batch` are the number of rows of each batch row that enter the
    statistics (the real length; the padded length when the protocol keeps pad rows).
    """

    def __init__(self, model: nn.Module, protocol: Protocol, model_name: str) -> None:
        self.model = model
        self.protocol = protocol
        self.model_name = model_name
        self.architecture = architecture_of(model)
        self.n_layers = len(self.architecture.decoder_layers(model))
        self.layers_in_float64 = 0
        self.layers_from_kernel = 0
        self._seqs: list[SequenceCapture] = []
        self._projections: dict[tuple[int, str], torch.Tensor] = {}
        self._pending: list[tuple[int, int, residual_stats.ResidualMoments]] = []  # (layer, row, moments)
        self._pending_bytes = 0
        self._rows: list[tuple[int, int, torch.Tensor]] = []  # (layer, row, residual) queued on CPU
        self._rows_bytes = 0
        self._pool: ThreadPoolExecutor | None = None

    # -- hooks ---------------------------------------------------------------------------------

    def _embedding_hook(self, _m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        for row, seq in enumerate(self._seqs):
            value = out[row, 0].detach().to(torch.float64).norm()
            _check_finite(value, self.model_name, "embedding", "BOS embedding norm", row)
            seq.embedding_bos_norm = float(value)

    def _layer_hook(self, layer: int):
        def hook(_m: nn.Module, _i: tuple, out) -> None:
            hidden = (out[0] if isinstance(out, tuple) else out).detach()
            rows = [hidden[row, : seq.n_rows] for row, seq in enumerate(self._seqs)]
            if hidden.device.type == "cpu":
                self._queue_rows(layer, rows)
            else:
                self._collect_moments(layer, rows)

        return hook

    def _queue_rows(self, layer: int, rows: list[torch.Tensor]) -> None:
        """CPU: keep a copy of each row (float64 where numpy cannot read the dtype, converted here on
        the forward's thread); solve them when the buffer is full and after the forward."""
        for row, x in enumerate(rows):
            x = x.clone() if residual_stats.numpy_ready(x) else x.to(torch.float64)
            self._rows.append((layer, row, x))
            self._rows_bytes += x.nbytes
        if self._rows_bytes > ROW_BUFFER_BYTES:
            self._solve_rows()

    def _solve_rows(self) -> None:
        """Every statistic of the queued rows (:func:`drope_check.engine.residual_stats.residual_summary`: numpy
        only, so torch's thread pool stays out of the capture's threads), one task per row."""
        if not self._rows:
            return
        assert self._pool is not None
        futures = [self._pool.submit(residual_stats.residual_summary, x, RESIDUAL) for _, _, x in self._rows]
        try:
            for (layer, row, _), future in zip(self._rows, futures, strict=True):
                summary = self._checked(layer, row, future.result)
                for name in RESIDUAL_STATS:
                    self._seqs[row].record(name, layer, getattr(summary, name))
        finally:
            self._rows.clear()
            self._rows_bytes = 0

    def _checked(self, layer: int, row: int, solve):
        try:
            return solve()
        except ValueError as exc:
            what = "non-finite residual" if "non-finite" in str(exc) else "unusable residual"
            raise CaptureError(
                f"{self.model_name}: layer {layer}: {what} in sequence row {row} ({exc})"
            ) from exc

    def _collect_moments(self, layer: int, rows: list[torch.Tensor]) -> None:
        """Other devices: each row's moments now, on the device; its Gram matrix queued for the
        batched eigenproblems (:meth:`_finish_spectra`)."""
        for row, x in enumerate(rows):
            moments = self._checked(
                layer, row, functools.partial(residual_stats.residual_moments, x, RESIDUAL)
            )
            for name in MOMENT_STATS:
                self._seqs[row].record(name, layer, getattr(moments, name))
            self._pending.append((layer, row, moments))
            self._pending_bytes += moments.gram.nbytes
        if self._pending_bytes > GRAM_BUFFER_BYTES:
            self._finish_spectra()

    def _finish_spectra(self) -> None:
        """Solve what is pending: queued CPU rows, and the device Gram matrices' eigenproblems in one
        batch."""
        self._solve_rows()
        if not self._pending:
            return
        entropies = residual_stats.gram_entropies([m.gram for _, _, m in self._pending])
        for (layer, row, _), ent in zip(self._pending, entropies, strict=True):
            for name in SPECTRUM_STATS:
                self._seqs[row].record(name, layer, getattr(ent, name))
        self._pending.clear()
        self._pending_bytes = 0

    def _mlp_hook(self, layer: int):
        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
            for row, seq in enumerate(self._seqs):
                value = out[row, 0].detach().to(torch.float64).norm()
                _check_finite(value, self.model_name, layer, "BOS MLP output", row)
                seq.record("bos_mlp_write_norm", layer, float(value))

        return hook

    def _projection_hook(self, layer: int, which: str):
        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
            self._projections[(layer, which)] = out.detach()

        return hook

    def _observer(self, call: AttentionCall) -> None:
        module, query, key, scaling = call.module, call.query, call.key, call.scaling
        layer = int(module.layer_idx)
        from_kernel = call.lse is not None and (query.device.type, query.dtype) in KERNEL_LSE_TRUSTED
        if self.protocol.attention_source == "projections":
            # Upstream's "manual Q/K": raw projection outputs, no rotary step (not what the kernel used).
            b, t = query.shape[0], query.shape[2]
            raw_query = self._projections.pop((layer, "q")).view(b, t, -1, module.head_dim).transpose(1, 2)
            raw_key = self._projections.pop((layer, "k")).view(b, t, -1, module.head_dim).transpose(1, 2)
            # The kernel's log-sum-exp belongs to the q/k it attended with; it serves the raw projections
            # only where they are those very tensors (an identity rotation and no QK-norm).
            from_kernel = from_kernel and torch.equal(raw_query, query) and torch.equal(raw_key, key)
            query, key = raw_query, raw_key
        fp16_eager = self.protocol.stats_dtype == "fp16-eager"  # upstream's confound: NaN heads kept
        if fp16_eager:
            weights = attention_to_position0_fp16_eager(query, key, call.allowed(), scaling)
        else:
            dtype = self._stats_dtype(query, key, scaling)
            if from_kernel and dtype == torch.float32:
                weights = attention_to_position0_from_lse(
                    query, key, call.lse, call.first_key_allowed(), scaling
                )
                self.layers_from_kernel += 1
            else:
                weights = attention_to_position0(query, key, call.allowed(), scaling, dtype=dtype)
        weights = weights.to("cpu")
        for row, seq in enumerate(self._seqs):
            a0 = weights[row, :, : seq.n_rows]
            if not fp16_eager:
                _check_finite(a0, self.model_name, layer, "attention to BOS", row)
            seq.attn_to_bos[layer] = a0

    def _stats_dtype(self, query: torch.Tensor, key: torch.Tensor, scaling: float) -> torch.dtype:
        """float64 when the protocol asks for it, or (``auto``) when float32 logits could be off by
        more than :data:`AUTO_FLOAT32_BOUND`; float32 otherwise (then the kernel's float32
        log-sum-exp, where available, is as good as a float32 recomputation)."""
        choice = self.protocol.stats_dtype
        if choice == "auto":
            bound = (
                2.0
                * abs(scaling)
                * float(query.float().norm(dim=-1).max())
                * float(key.float().norm(dim=-1).max())
                * 2.0**-24
            )
            choice = "float32" if bound <= AUTO_FLOAT32_BOUND else "float64"
        if choice == "float64":
            self.layers_in_float64 += 1
            return torch.float64
        return torch.float32

    # -- context -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self, rows: list[int]) -> Iterator[list[SequenceCapture]]:
        """Capture one forward pass over a batch whose row ``i`` contributes ``rows[i]`` rows.

        Yields the list of :class:`SequenceCapture` that the forward pass fills. All hooks and
        observer registrations are removed when the context exits, also on error.
        """
        if any(r < 2 for r in rows):
            raise CaptureError(f"{self.model_name}: every sequence needs >= 2 tokens, got row lengths {rows}")
        self._seqs = [
            SequenceCapture(
                n_rows=r,
                layers={stat: [float("nan")] * self.n_layers for stat in LAYER_STATS},
                attn_to_bos=[None] * self.n_layers,  # type: ignore[list-item]
            )
            for r in rows
        ]
        self._projections.clear()
        self._pending.clear()
        self._pending_bytes = 0
        self._rows.clear()
        self._rows_bytes = 0
        handles: list[torch.utils.hooks.RemovableHandle] = []
        try:
            arch = self.architecture
            handles.append(arch.embedding(self.model).register_forward_hook(self._embedding_hook))
            for idx, layer in enumerate(arch.decoder_layers(self.model)):
                handles.append(layer.register_forward_hook(self._layer_hook(idx)))
                handles.append(arch.mlp_write(layer).register_forward_hook(self._mlp_hook(idx)))
            if self.protocol.attention_source == "projections":
                for idx, attn in enumerate(arch.attention_modules(self.model)):
                    for which in ("q", "k"):
                        proj = arch.projection(attn, which)
                        handles.append(
                            proj.register_forward_hook(self._projection_hook(idx, which), prepend=True)
                        )
            threads = max(1, torch.get_num_threads())  # the forward's share of the cores, after it the rows'
            with (
                residual_stats.single_threaded_blas(),
                ThreadPoolExecutor(threads) as self._pool,
                observe_attention(self.model, self._observer),
            ):
                yield self._seqs
                self._finish_spectra()
            for seq in self._seqs:
                seq.check_complete(self.n_layers, self.model_name)
        finally:
            for handle in handles:
                handle.remove()
            self._projections.clear()
            self._pending.clear()
            self._pending_bytes = 0
            self._rows.clear()
            self._rows_bytes = 0
            self._pool = None
