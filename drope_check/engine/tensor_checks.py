"""Input checks shared by the metrics: float64 conversion, finiteness, matrix / vector shapes, finite scalars;
each error names the input."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def as_float64(x: Tensor | Sequence[float] | float, name: str) -> Tensor:
    """Convert ``x`` to a detached float64 tensor, rejecting complex and non-numeric input."""
    if not isinstance(x, Tensor):
        try:
            # float64 from the start: torch.as_tensor(list of floats) would make float32 and round
            x = torch.as_tensor(x, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"{name}: cannot convert input of type {type(x).__name__} to a tensor: {exc}"
            ) from exc
    if x.is_complex():
        raise ValueError(f"{name}: complex input is not supported (dtype {x.dtype})")
    return x.detach().to(torch.float64)


def check_finite(x: Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: contains {n_bad} non-finite value(s) (NaN or inf)")


def as_matrix(x: Tensor, name: str, min_rows: int = 1) -> Tensor:
    """Validate a ``[T, d]`` matrix and return it as float64."""
    x64 = as_float64(x, name)
    if x64.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D [T, d] tensor, got shape {tuple(x64.shape)}")
    if x64.shape[0] == 0 or x64.shape[1] == 0:
        raise ValueError(f"{name}: empty matrix of shape {tuple(x64.shape)}")
    if x64.shape[0] < min_rows:
        raise ValueError(f"{name}: needs at least {min_rows} rows (tokens), got T = {x64.shape[0]}")
    check_finite(x64, name)
    return x64


def as_vector(v: Tensor | Sequence[float], name: str, min_len: int = 1) -> Tensor:
    """Validate a non-empty finite 1-D vector and return it as float64."""
    v64 = as_float64(v, name)
    if v64.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D tensor / sequence, got shape {tuple(v64.shape)}")
    if v64.numel() < min_len:
        raise ValueError(f"{name}: needs at least {min_len} entries, got {v64.numel()}")
    check_finite(v64, name)
    return v64


def finite_scalar(value: float, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a real number, got {value!r}") from exc
    if not math.isfinite(out):
        raise ValueError(f"{name}: must be finite, got {out}")
    return out
