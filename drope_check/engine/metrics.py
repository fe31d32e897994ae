"""Pure tensor -> number metrics used by the DroPE / RoPE reproducibility checks.

Nothing in this module touches a model: every function takes activations, attention weights or
per-layer summaries that another module has already extracted, and returns a number (or a small
float64 tensor). All arithmetic is done in float64, whatever the input dtype, so that fp16 / bf16 /
fp32 activations give the same answer up to their own rounding, and so that the tiny tail of a
spectrum dominated by a massive BOS row is not lost.

Conventions (see ``shared/notes/claims-and-provenance.md``):

* "Layer l" is the output of decoder block ``l``; callers pass one ``[T, d]`` residual matrix per
  layer and per sequence. Position 0 is the BOS token.
* BOS norm / BOS ratio follow the upstream report's code (DavidDemitriAfrica/drope-activations):
  ``||x_0||`` and ``||x_0|| / mean_{i>=1} ||x_i||``.
* Matrix entropy follows Queipo-de-Llano et al., "Attention Sinks and Compression Valleys in LLMs
  are Two Sides of the Same Coin" (arXiv 2510.06477): ``p_j = s_j^2 / ||X||_F^2`` over the singular
  values of the UNCENTERED residual matrix of one sequence, ``H = -sum_j p_j ln p_j`` (nats).
  Upstream reports the raw ``H``; Queipo-de-Llano et al. plot ``H / ln r``. Both are returned.
* The bound quantities ``M, R, c, alpha`` and the inequalities ``s_1^2 >= M + alpha R`` and
  ``p_1 >= (c + alpha) / (c + 1)`` are Queipo-de-Llano et al.'s.
* Sink score / sink rate follow Gu et al., "When Attention Sink Emerges in Language Models"
  (ICLR 2025) with threshold ``epsilon = 0.3``. Gu et al. use a strict ``>``; the upstream code uses
  ``>=`` and also averages over query position ``t = 0`` (which always attends 1.0 to itself under a
  causal mask). Both conventions are selectable here.

Every function validates its input and raises ``ValueError`` with a message naming the argument on
wrong dimensionality, too few rows, empty input or non-finite values; no function returns NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

from drope_check.engine.tensor_checks import as_float64, as_matrix, as_vector, check_finite, finite_scalar

__all__ = [
    "SpectrumEntropy",
    "argmax_layer",
    "argmin_layer",
    "bos_norm",
    "bos_ratio",
    "bos_ratio_from_norms",
    "layer_mean",
    "matrix_entropy",
    "mean_over_sequences",
    "perplexity_ratio",
    "queipo_c_alpha",
    "sink_rate",
    "sink_scores",
    "spectrum_entropy",
    "spike_layer_argmax_ratio",
    "spike_layer_max_write",
    "squared_singular_values",
    "token_norms",
]

#: Tolerance for attention weights slightly outside [0, 1] (fp16 softmax round-off).
ATTENTION_TOLERANCE: float = 1e-4

#: Default sink threshold epsilon of Gu et al. (ICLR 2025), also used upstream.
DEFAULT_SINK_TAU: float = 0.3


# --------------------------------------------------------------------------------------------------
# BOS norm, BOS ratio, Queipo-de-Llano bound quantities
# --------------------------------------------------------------------------------------------------


def token_norms(x: Tensor) -> Tensor:
    """Return the float64 L2 norm of every row (token) of a ``[T, d]`` residual matrix.

    ``out[t] = ||x_t||_2`` computed in float64. Shape ``[T]``, same device as ``x``.
    """
    x64 = as_matrix(x, "x")
    norms = torch.linalg.vector_norm(x64, ord=2, dim=1)
    check_finite(norms, "token_norms(x) (overflow in float64)")
    return norms


def bos_norm(x: Tensor) -> float:
    """Return ``||x_0||_2``, the L2 norm of the BOS (position-0) row, in float64.

    This is the "BOS norm" of the upstream code and of Queipo-de-Llano et al. (arXiv 2510.06477).
    """
    return float(token_norms(x)[0])


def bos_ratio_from_norms(norms: Tensor | Sequence[float]) -> float:
    """Return ``norms[0] / mean(norms[1:])`` from precomputed per-token L2 norms.

    This is the upstream report's "BOS ratio" (BOS norm over the mean norm of the other positions).
    Needs at least two tokens, non-negative finite norms, and a strictly positive mean of the
    non-BOS norms (otherwise the ratio is undefined and ``ValueError`` is raised).

    Note that every row passed in is counted: upstream's RoPE numbers included EOS padding rows in
    the mean, so callers must strip padding before calling if they want the unpadded ratio.
    """
    n = as_vector(norms, "norms", min_len=2)
    if bool((n < 0).any()):
        raise ValueError("norms: L2 norms must be non-negative")
    mean_rest = n[1:].mean()
    if float(mean_rest) == 0.0:
        raise ValueError("norms: mean norm of the non-BOS positions is 0; the BOS ratio is undefined")
    return float(n[0] / mean_rest)


def bos_ratio(x: Tensor) -> float:
    """Return the BOS ratio ``||x_0|| / mean_{i>=1} ||x_i||`` of a ``[T, d]`` residual (T >= 2).

    Thin wrapper: ``bos_ratio_from_norms(token_norms(x))`` (one implementation of the ratio).
    """
    x64 = as_matrix(x, "x", min_rows=2)
    return bos_ratio_from_norms(token_norms(x64))


def queipo_c_alpha(x: Tensor) -> tuple[float, float]:
    """Return Queipo-de-Llano et al.'s ``(c, alpha)`` for a ``[T, d]`` residual matrix (T >= 2).

    With ``M = ||x_0||^2`` (BOS energy), ``R = sum_{i>=1} ||x_i||^2`` (energy of the other rows),
    ``u = x_0 / ||x_0||``:

    * ``c = M / R``;
    * ``alpha = (1 / R) * sum_{i>=1} <x_i, u>^2`` -- the fraction of the other rows' energy that lies
      along the BOS direction, in ``[0, 1]``.

    Since ``s_1^2 = max_{|v|=1} ||X v||^2 >= ||X u||^2 = M + alpha R``, these give the bounds
    (arXiv 2510.06477) ``s_1^2 >= M + alpha R`` and ``p_1 = s_1^2 / (M + R) >= (c + alpha) / (c + 1)``.

    Raises ``ValueError`` if ``x_0 = 0`` (no BOS direction) or if ``R = 0``.
    """
    x64 = as_matrix(x, "x", min_rows=2)
    x0 = x64[0]
    rest = x64[1:]
    m = float(x0 @ x0)
    r = float((rest * rest).sum())
    if not (math.isfinite(m) and math.isfinite(r)):
        raise ValueError("x: squared norms overflow float64")
    if m == 0.0:
        raise ValueError("x: the BOS row x_0 is zero, so the BOS direction u = x_0/||x_0|| is undefined")
    if r == 0.0:
        raise ValueError("x: all non-BOS rows are zero (R = 0), so c = M/R and alpha are undefined")
    u = x0 / math.sqrt(m)
    proj = rest @ u
    alpha = float((proj * proj).sum()) / r
    return m / r, alpha


# --------------------------------------------------------------------------------------------------
# spectrum and matrix entropy
# --------------------------------------------------------------------------------------------------


def squared_singular_values(x: Tensor) -> Tensor:
    """Return the squared singular values ``s_j^2`` of a ``[T, d]`` matrix, descending, float64.

    Computed as the eigenvalues (``torch.linalg.eigvalsh``, float64) of the smaller Gram matrix,
    ``X X^T`` (``[T, T]``) when ``T <= d`` and ``X^T X`` (``[d, d]``) otherwise, so a ``[512, 4096]``
    residual needs a 512x512 symmetric eigenproblem rather than an SVD of the full matrix. Length
    ``min(T, d)``. Round-off can make eigenvalues of a (numerically) singular Gram matrix slightly
    negative; these are clamped to 0. The absolute error of every entry is of order
    ``1e-16 * s_1^2``, i.e. accurate relative to the largest value, which is all the entropy needs.
    """
    x64 = as_matrix(x, "x")
    t, d = x64.shape
    gram = x64 @ x64.T if t <= d else x64.T @ x64
    check_finite(gram, "Gram matrix of x (overflow in float64)")
    if gram.device.type == "cpu":
        # LAPACK through numpy, single-threaded: on the 2-core CI machine torch's MKL eigvalsh took
        # ~1 s per call inside the forward pass, and numpy's OpenBLAS with its own spinning thread
        # pool slowed the whole capture 4x (one batch: 98 s vs 24 s single-threaded). These
        # eigenproblems are small (<= 576 x 576 for SmolLM2, 512 x 512 for Llama-2 at T = 512).
        with threadpool_limits(limits=1, user_api="blas"):
            eig = torch.from_numpy(np.linalg.eigvalsh(gram.numpy()))
    else:
        eig = torch.linalg.eigvalsh(gram)
    return torch.flip(eig, dims=(0,)).clamp_min(0.0)


@dataclass(frozen=True)
class SpectrumEntropy:
    """Entropy summary of a spectrum ``p_j = s_j^2 / sum_k s_k^2``.

    Attributes:
        entropy: ``H = -sum_j p_j ln p_j`` in nats (``0 ln 0 = 0``); upstream reports this raw value.
        entropy_normalized: ``H / ln n`` with ``n = len(s2) = min(T, d)``, in ``[0, 1]``; the version
            plotted by Queipo-de-Llano et al. (arXiv 2510.06477).
        anisotropy: ``p_1 = max_j p_j``, the share of energy in the top singular direction.
    """

    entropy: float
    entropy_normalized: float
    anisotropy: float


def spectrum_entropy(s2: Tensor | Sequence[float]) -> SpectrumEntropy:
    """Return the Shannon entropy summary of a vector of squared singular values.

    ``p_j = s2_j / sum(s2)``; ``H = -sum_j p_j ln p_j`` (natural log, ``0 ln 0 = 0`` via
    ``torch.xlogy``); ``H_norm = H / ln(len(s2))``; anisotropy ``p_1 = max_j p_j``. Order of ``s2``
    does not matter. Requires a 1-D, finite, non-negative ``s2`` of length >= 2 (``ln 1 = 0`` would make
    the normalised entropy undefined) with a positive sum (a zero matrix has no spectrum
    distribution).
    """
    v = as_vector(s2, "s2", min_len=2)
    if bool((v < 0).any()):
        raise ValueError("s2: squared singular values must be non-negative")
    total = v.sum()
    if not math.isfinite(float(total)):
        raise ValueError("s2: sum overflows float64")
    if float(total) == 0.0:
        raise ValueError("s2: all squared singular values are 0 (zero matrix); the entropy is undefined")
    p = v / total
    h = float(-torch.xlogy(p, p).sum())
    # Each -p ln p term is >= 0 for p in [0, 1]; guard the sum against a -0.0.
    h = max(h, 0.0)
    return SpectrumEntropy(entropy=h, entropy_normalized=h / math.log(v.numel()), anisotropy=float(p.max()))


def matrix_entropy(x: Tensor) -> SpectrumEntropy:
    """Return the matrix entropy of ONE sequence's ``[T, d]`` residual matrix.

    ``spectrum_entropy(squared_singular_values(x))``: the singular values are those of the
    UNCENTERED matrix (no mean subtraction), as in the upstream code and Queipo-de-Llano et al.
    (arXiv 2510.06477), so a massive BOS row drives the entropy towards 0. ``min(T, d)`` must be >= 2.
    Every row passed in counts; strip padding rows before calling.
    """
    return spectrum_entropy(squared_singular_values(x))


# --------------------------------------------------------------------------------------------------
# attention sinks
# --------------------------------------------------------------------------------------------------


def sink_scores(attn_to_bos: Tensor, include_self: bool = True) -> Tensor:
    """Return the per-head sink score from the attention each query pays to key position 0.

    ``attn_to_bos[h, t]`` is head ``h``'s softmax weight from query ``t`` onto key 0, shape
    ``[H, T]``. The score of head ``h`` is the mean of ``attn_to_bos[h, t]`` over

    * ``t = 0 .. T-1`` when ``include_self=True`` (the upstream code's convention; under a causal
      mask query 0 can only attend to itself, so this term is 1.0 and adds ``(1 - mean_rest) / T``
      to the score -- large for the short prompts upstream used);
    * ``t = 1 .. T-1`` when ``include_self=False`` (needs ``T >= 2``).

    Values must be finite and in ``[0, 1]`` up to ``ATTENTION_TOLERANCE`` (1e-4); values within the
    tolerance are clamped to ``[0, 1]`` before averaging. NaN attention (e.g. from fp16 overflow of
    ``q.k``) raises instead of silently becoming a non-sink. Returns a float64 tensor ``[H]``.
    """
    a = as_matrix(attn_to_bos, "attn_to_bos")
    if float(a.min()) < -ATTENTION_TOLERANCE or float(a.max()) > 1.0 + ATTENTION_TOLERANCE:
        raise ValueError(
            f"attn_to_bos: attention weights must lie in [0, 1] (tolerance {ATTENTION_TOLERANCE}); "
            f"got range [{float(a.min())}, {float(a.max())}]"
        )
    a = a.clamp(0.0, 1.0)
    if include_self:
        return a.mean(dim=1)
    if a.shape[1] < 2:
        raise ValueError("attn_to_bos: include_self=False needs at least 2 query positions (T >= 2)")
    return a[:, 1:].mean(dim=1)


def sink_rate(scores: Tensor | Sequence[float], tau: float = DEFAULT_SINK_TAU, strict: bool = False) -> float:
    """Return the fraction of heads whose sink score passes the threshold ``tau``.

    ``strict=False``: ``score >= tau`` (upstream code); ``strict=True``: ``score > tau`` (Gu et al.,
    ICLR 2025). The comparison is done in float64: a float32 score of "0.3" is 0.30000001192...,
    which is above a float64 ``tau = 0.3`` under both rules. ``scores`` must be a non-empty, finite
    1-D vector.
    """
    s = as_vector(scores, "scores")
    t = finite_scalar(tau, "tau")
    passed = s > t if strict else s >= t
    return float(passed.to(torch.float64).mean())


# --------------------------------------------------------------------------------------------------
# per-layer rules
# --------------------------------------------------------------------------------------------------


def argmax_layer(values: Tensor | Sequence[float]) -> int:
    """Return the index of the largest entry of a 1-D per-layer vector (first index on ties).

    Rejects empty, non-1-D and non-finite (NaN / inf) input.
    """
    v = as_vector(values, "values")
    return int(torch.nonzero(v == v.max())[0, 0])


def argmin_layer(values: Tensor | Sequence[float]) -> int:
    """Return the index of the smallest entry of a 1-D per-layer vector (first index on ties).

    Rejects empty, non-1-D and non-finite (NaN / inf) input.
    """
    v = as_vector(values, "values")
    return int(torch.nonzero(v == v.min())[0, 0])


def spike_layer_argmax_ratio(bos_ratio_per_layer: Tensor | Sequence[float]) -> int:
    """Return the BOS spike layer by the upstream rule: argmax over layers of the BOS ratio.

    ``bos_ratio_per_layer[l]`` is the (prompt-averaged) BOS ratio at the output of block ``l``.
    First index on ties. Note this can lag the layer that actually writes the massive BOS
    activation (for DroPE the ratio peaks at layer 2 while the big write happens at layer 1); see
    :func:`spike_layer_max_write`.
    """
    return argmax_layer(bos_ratio_per_layer)


def spike_layer_max_write(embedding_bos_norm: float, bos_norm_per_layer: Tensor | Sequence[float]) -> int:
    """Return the layer whose block writes the largest increase of the BOS norm.

    ``argmax_l (n[l] - n[l-1])`` with ``n[l] = bos_norm_per_layer[l]`` (output of block ``l``) and
    ``n[-1] := embedding_bos_norm`` (the embedding output that enters block 0). First index on ties.
    Norms must be finite and non-negative.
    """
    emb = finite_scalar(embedding_bos_norm, "embedding_bos_norm")
    if emb < 0:
        raise ValueError(f"embedding_bos_norm: an L2 norm must be non-negative, got {emb}")
    n = as_vector(bos_norm_per_layer, "bos_norm_per_layer")
    if bool((n < 0).any()):
        raise ValueError("bos_norm_per_layer: L2 norms must be non-negative")
    prev = torch.cat([n.new_tensor([emb]), n[:-1]])
    return argmax_layer(n - prev)


def layer_mean(values: Tensor | Sequence[float]) -> float:
    """Return the mean over layers of a per-layer vector (the report's "average" sink rate).

    Rejects empty, non-1-D and non-finite input.
    """
    v = as_vector(values, "values")
    return float(v.sum() / v.numel())


def perplexity_ratio(ppl: float, baseline_ppl: float) -> float:
    """Return ``ppl / baseline_ppl``: how many times an intervention multiplies the perplexity.

    Both must be finite perplexities (>= 1: a perplexity below 1 is impossible, and 0 is the
    sentinel upstream's files use for a run that never happened). Only meaningful when both were
    measured under the same protocol on the same texts; the caller guarantees that.
    """
    a = finite_scalar(ppl, "ppl")
    b = finite_scalar(baseline_ppl, "baseline_ppl")
    if a < 1 or b < 1:
        raise ValueError(f"a perplexity is >= 1, got ppl {a} and baseline {b}")
    return a / b


def mean_over_sequences(per_sequence: Sequence[Tensor | Sequence[float] | float]) -> Tensor:
    """Stack per-sequence per-layer vectors and return their float64 mean over sequences.

    ``per_sequence[k]`` is the length-``L`` vector (e.g. BOS ratio per layer) of sequence ``k``; the
    result is ``mean_k per_sequence[k]``, shape ``[L]``, on the CPU. Scalars (one number per
    sequence) are also accepted and give a 0-D tensor. Raises on an empty sequence list, on entries
    of different shapes (ragged input), on empty vectors, on >1-D entries and on non-finite values.
    """
    if isinstance(per_sequence, Tensor):
        items = list(per_sequence.unbind(0)) if per_sequence.ndim > 0 else [per_sequence]
    else:
        items = list(per_sequence)
    if len(items) == 0:
        raise ValueError("per_sequence: no sequences given")
    vecs: list[Tensor] = []
    for k, item in enumerate(items):
        v = as_float64(item, f"per_sequence[{k}]").cpu()
        if v.ndim > 1:
            raise ValueError(
                f"per_sequence[{k}]: expected a 1-D per-layer vector, got shape {tuple(v.shape)}"
            )
        if v.ndim == 1 and v.numel() == 0:
            raise ValueError(f"per_sequence[{k}]: empty vector")
        check_finite(v, f"per_sequence[{k}]")
        if vecs and v.shape != vecs[0].shape:
            raise ValueError(
                f"per_sequence: ragged input, entry 0 has shape {tuple(vecs[0].shape)} "
                f"but entry {k} has shape {tuple(v.shape)}"
            )
        vecs.append(v)
    return torch.stack(vecs).mean(dim=0)
