"""Every residual statistic of one matrix at once (the capture's path): the moments in one pass, the entropy
from the Gram matrix's eigenvalues, batched and threaded; equal to the one-at-a-time definitions in
:mod:`drope_check.engine.metrics`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

from drope_check.engine.metrics import SpectrumEntropy, spectrum_entropy
from drope_check.engine.tensor_checks import as_float64, check_finite


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit numpy's BLAS / LAPACK to one thread while the context is open.

    Inside a torch forward pass on few cores, numpy's OpenBLAS pool spinning against torch's
    OpenMP pool slowed the capture ~4x (one batch: 98 s vs 24 s); entering the limit costs ~1-3 ms,
    so callers enter it once around many calls (the capture: once per batch).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@dataclass(frozen=True)
class ResidualMoments:
    """Everything :func:`residual_summary` reports except the spectrum, plus the float64 Gram
    matrix whose eigenvalues are the squared singular values (``X X^T`` when ``T <= d``, else
    ``X^T X``; ``[n, n]``, ``n = min(T, d)``: a numpy array for CPU input, a tensor on the input's
    device otherwise)."""

    bos_norm: float
    bos_ratio: float
    queipo_c: float
    queipo_alpha: float
    mean_token_norm: float
    gram: np.ndarray | Tensor


@dataclass(frozen=True)
class ResidualSummary:
    """The per-layer statistics of one sequence's ``[T, d]`` residual matrix, each equal to its
    public definition (:func:`bos_norm`, :func:`bos_ratio`, :func:`queipo_c_alpha`,
    :func:`matrix_entropy`; ``mean_token_norm`` = mean of :func:`token_norms`)."""

    bos_norm: float
    bos_ratio: float
    queipo_c: float
    queipo_alpha: float
    entropy: float
    entropy_normalized: float
    anisotropy: float
    mean_token_norm: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def residual_moments(x: Tensor, name: str = "x") -> ResidualMoments:
    """Validate a ``[T, d]`` residual ONCE (T >= 2, min(T, d) >= 2, finite) and compute, in float64,
    its token norms, BOS ratio, Queipo-de-Llano ``c, alpha`` and Gram matrix.

    The same formulas as the public functions, sharing one float64 copy: ``||x_t||^2`` row sums,
    ``c = M / R``, ``alpha = sum_{i>=1} <x_i, x_0>^2 / (M R)`` (= the definition with
    ``u = x_0 / sqrt(M)``). Raises ``ValueError`` naming ``name`` where those would.

    CPU input is computed in numpy only (no torch operator runs, so the capture may call this from
    worker threads without starting torch's OpenMP pool there): when ``T <= d`` the squared row
    norms are the Gram matrix's diagonal (``X X^T``, one symmetric rank-k update), and finiteness is
    read from them (a NaN / inf anywhere in a row makes its squared norm non-finite), the input being
    scanned only to word the error.
    """
    x64 = as_float64(x, name) if not numpy_ready(x) else x.detach()
    if x64.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D [T, d] tensor, got shape {tuple(x64.shape)}")
    t, d = x64.shape
    if t == 0 or d == 0:
        raise ValueError(f"{name}: empty matrix of shape {(t, d)}")
    if t < 2:
        raise ValueError(f"{name}: needs at least 2 rows (tokens), got T = {t}")
    if min(t, d) < 2:
        raise ValueError(f"{name}: min(T, d) must be >= 2 for a spectrum entropy, got shape {(t, d)}")
    if (
        x64.device.type != "cpu"
    ):  # Gram and eigenproblem stay on the device (a 4096 x 4096 one is seconds on a CPU)
        return _moments_torch(x64, name)
    a = x64.numpy().astype(np.float64, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        if t <= d:
            gram = a @ a.T  # numpy recognises a @ a.T: one symmetric rank-k update (syrk)
            sq = np.diagonal(gram).copy()
        else:
            gram = a.T @ a
            sq = np.einsum("td,td->t", a, a)
        if not np.isfinite(sq).all():
            check_finite(torch.from_numpy(a), name)  # raises on NaN / inf in the input itself
            raise ValueError(f"{name}: squared norms overflow float64")
        m = float(sq[0])
        r = float(sq[1:].sum())
    if not math.isfinite(r):
        raise ValueError(f"{name}: squared norms overflow float64")
    if m == 0.0:
        raise ValueError(
            f"{name}: the BOS row x_0 is zero, so the BOS direction u = x_0/||x_0|| is undefined"
        )
    if r == 0.0:
        raise ValueError(
            f"{name}: all non-BOS rows are zero (R = 0), so c = M/R, alpha and the BOS ratio are undefined"
        )
    if not np.isfinite(gram).all():
        raise ValueError(f"Gram matrix of {name} (overflow in float64): contains non-finite values")
    norms = np.sqrt(sq)
    proj = a[1:] @ a[0]
    return ResidualMoments(
        bos_norm=float(norms[0]),
        bos_ratio=float(norms[0] / norms[1:].mean()),
        queipo_c=m / r,
        queipo_alpha=float(proj @ proj) / (m * r),
        mean_token_norm=float(norms.mean()),
        gram=gram,
    )


def numpy_ready(x: object) -> bool:
    """A real CPU tensor numpy can read without a torch operator (float32 / float64)."""
    return isinstance(x, Tensor) and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def _moments_torch(x64: Tensor, name: str) -> ResidualMoments:
    """:func:`residual_moments` on a device tensor (float64), with torch operators on that device."""
    check_finite(x64, name)
    t, d = x64.shape
    sq = torch.einsum("td,td->t", x64, x64)
    m = float(sq[0])
    r = float(sq[1:].sum())
    if not (math.isfinite(m) and math.isfinite(r)):
        raise ValueError(f"{name}: squared norms overflow float64")
    if m == 0.0:
        raise ValueError(
            f"{name}: the BOS row x_0 is zero, so the BOS direction u = x_0/||x_0|| is undefined"
        )
    if r == 0.0:
        raise ValueError(
            f"{name}: all non-BOS rows are zero (R = 0), so c = M/R, alpha and the BOS ratio are undefined"
        )
    norms = torch.sqrt(sq)
    proj = x64[1:] @ x64[0]
    gram = x64 @ x64.T if t <= d else x64.T @ x64
    if not bool(torch.isfinite(gram).all()):
        raise ValueError(f"Gram matrix of {name} (overflow in float64): contains non-finite values")
    return ResidualMoments(
        bos_norm=float(norms[0]),
        bos_ratio=float(norms[0] / norms[1:].mean()),
        queipo_c=m / r,
        queipo_alpha=float(proj @ proj) / (m * r),
        mean_token_norm=float(norms.mean()),
        gram=gram,
    )


def _eigvalsh(gram: np.ndarray | Tensor) -> np.ndarray:
    return (
        np.linalg.eigvalsh(gram)
        if isinstance(gram, np.ndarray)
        else torch.linalg.eigvalsh(gram).cpu().numpy()
    )


def gram_entropies(grams: Sequence[np.ndarray | Tensor], workers: int = 1) -> list[SpectrumEntropy]:
    """:func:`spectrum_entropy` of the eigenvalues (= squared singular values, clamped at 0) of
    each Gram matrix, in float64: LAPACK ``syevd`` through numpy for numpy arrays, ``workers``
    threads at a time (numpy releases the GIL in LAPACK; the matrices are independent), and
    ``torch.linalg.eigvalsh`` on the device for device tensors."""
    if workers > 1 and len(grams) > 1 and all(isinstance(g, np.ndarray) for g in grams):
        with ThreadPoolExecutor(max_workers=workers) as pool:
            eigs = list(pool.map(_eigvalsh, grams))
    else:
        eigs = [_eigvalsh(g) for g in grams]
    return [spectrum_entropy(torch.from_numpy(np.clip(e, 0.0, None))) for e in eigs]


def _summary(moments: ResidualMoments, ent: SpectrumEntropy) -> ResidualSummary:
    return ResidualSummary(
        bos_norm=moments.bos_norm,
        bos_ratio=moments.bos_ratio,
        queipo_c=moments.queipo_c,
        queipo_alpha=moments.queipo_alpha,
        entropy=ent.entropy,
        entropy_normalized=ent.entropy_normalized,
        anisotropy=ent.anisotropy,
        mean_token_norm=moments.mean_token_norm,
    )


def residual_summaries(
    xs: Sequence[Tensor], workers: int = 1, moments: Sequence[ResidualMoments] | None = None
) -> list[ResidualSummary]:
    """:func:`residual_summary` of many residual matrices, their eigenproblems solved in a batch
    (``workers`` threads). Pass precomputed ``moments`` (from :func:`residual_moments`) instead of
    ``xs`` to finish them."""
    if moments is None:
        moments = [residual_moments(x, f"xs[{i}]") for i, x in enumerate(xs)]
    ents = gram_entropies([m.gram for m in moments], workers=workers)
    return [_summary(m, e) for m, e in zip(moments, ents, strict=True)]


def residual_summary(x: Tensor, name: str = "x") -> ResidualSummary:
    """Every per-layer residual statistic of ONE sequence's ``[T, d]`` matrix, validated once.

    BOS norm, BOS ratio, Queipo-de-Llano ``c`` and ``alpha``, matrix entropy (raw, normalised) and
    anisotropy, mean token norm: the values of the public functions (tests compare them to those and
    to a float64 numpy SVD), from one float64 copy, one Gram matrix and one symmetric eigenproblem.
    Errors name the input ``name``.
    """
    moments = residual_moments(x, name)
    return _summary(moments, gram_entropies([moments.gram])[0])
