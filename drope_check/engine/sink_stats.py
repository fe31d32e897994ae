"""Sink scores and sink rates from one pass's per-sequence, per-layer, per-head scores.

One function, :func:`sink_statistics`, turns the per-sequence scores ``[N, L, H]`` into every sink
number of the measurements JSON under a protocol's statistics choices (``sink_tau``,
``sink_strict``, ``sink_self_term``). The measurement (:func:`drope_check.measurements.measure.summarise`) and the
statistics-only variants of the confound audit (:func:`derive_statistics`) both call it, so a
variant such as ``tau-0.5`` recomputed from a stored measurement is, by construction, the number a
full re-measurement under ``sink_tau=0.5`` gives (tested against one).

The per-sequence scores are kept in the measurements (``heads.sink_score_per_sequence`` and
``heads.sink_score_excl_self_per_sequence``), so a reader can recompute any threshold.

NaN heads exist only under ``stats_dtype="fp16-eager"`` (:mod:`drope_check.engine.fp16_eager`): a NaN
score is never a sink (upstream's ``NaN >= 0.3`` is false), the head's averaged score is the mean
over the sequences where it is finite (``None`` in JSON when it is finite in none), and
``layers.attention_nan_heads`` / ``scalars.attention_nan_heads`` count the (sequence, head) pairs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from drope_check.engine import metrics
from drope_check.engine.protocol import Protocol

#: Keys of ``heads`` holding the per-sequence scores ([N][L][H], ``None`` for a NaN head).
PER_SEQUENCE_KEYS = {True: "sink_score_per_sequence", False: "sink_score_excl_self_per_sequence"}


def head_scores(attn_to_bos: torch.Tensor, include_self: bool) -> torch.Tensor:
    """Per-head sink scores [H] (float64) of one sequence's ``attn_to_bos`` [H, T].

    :func:`drope_check.engine.metrics.sink_scores` for every head whose weights are finite; NaN for a head
    with any non-finite weight (fp16-eager overflow), which :func:`metrics.sink_scores` would refuse.
    """
    rows = attn_to_bos if include_self else attn_to_bos[:, 1:]
    bad = ~torch.isfinite(rows).all(dim=-1)
    if not bool(bad.any()):
        return metrics.sink_scores(attn_to_bos, include_self=include_self)
    out = torch.full((attn_to_bos.shape[0],), math.nan, dtype=torch.float64)
    if not bool(bad.all()):
        out[~bad] = metrics.sink_scores(attn_to_bos[~bad], include_self=include_self)
    return out


def rate(scores: torch.Tensor, tau: float, strict: bool) -> float:
    """Fraction of heads passing tau; a NaN head counts as a non-sink (upstream's comparison)."""
    finite = torch.isfinite(scores)
    if bool(finite.all()):
        return metrics.sink_rate(scores, tau=tau, strict=strict)
    kept = scores[finite].to(torch.float64)
    passed = (kept > tau) if strict else (kept >= tau)
    return float(passed.sum()) / scores.numel()


def per_sequence_scores(attn_to_bos: Sequence[Sequence[torch.Tensor]], include_self: bool) -> torch.Tensor:
    """``[N, L, H]`` float64 scores from per-sequence, per-layer ``attn_to_bos`` [H, T] tensors."""
    return torch.stack(
        [torch.stack([head_scores(a, include_self) for a in layers]) for layers in attn_to_bos]
    )


def sink_statistics(
    scores_incl: torch.Tensor, scores_excl: torch.Tensor, protocol: Protocol
) -> dict[str, Any]:
    """Every sink number of a model object, from per-sequence scores ``[N, L, H]`` (both conventions).

    Returns ``{"layers": {...}, "heads": {...}, "scalars": {...}}`` to merge into the model object.
    ``sink_score`` / ``sink_rate`` / ``sink_rate_average`` follow ``protocol.sink_self_term``; the
    ``_excl_self`` ones always leave t = 0 out. Rates: per sequence, the fraction of heads passing
    ``protocol.sink_tau`` (``>=``, or ``>`` with ``sink_strict``), then averaged over sequences.
    """
    if scores_incl.shape != scores_excl.shape or scores_incl.ndim != 3 or scores_incl.shape[0] == 0:
        raise ValueError(
            f"per-sequence scores must be two equal [N>0, L, H] tensors, got {tuple(scores_incl.shape)} "
            f"and {tuple(scores_excl.shape)}"
        )
    n, n_layers, _ = scores_incl.shape
    layers: dict[str, list[Any]] = {}
    heads: dict[str, Any] = {}
    primary = scores_incl if protocol.sink_self_term else scores_excl
    for score_key, rate_key, scores in (
        ("sink_score", "sink_rate", primary),
        ("sink_score_excl_self", "sink_rate_excl_self", scores_excl),
    ):
        per_layer_scores: list[list[float | None]] = []
        per_layer_rates: list[float] = []
        for layer in range(n_layers):
            block = scores[:, layer, :].contiguous()
            rates = [rate(block[i], protocol.sink_tau, protocol.sink_strict) for i in range(n)]
            per_layer_rates.append(sum(rates) / len(rates))
            if bool(torch.isfinite(block).all()):
                per_layer_scores.append(block.mean(dim=0).tolist())
            else:
                per_layer_scores.append([_json_number(v) for v in block.nanmean(dim=0).tolist()])
        heads[score_key] = per_layer_scores
        layers[rate_key] = per_layer_rates
    heads[PER_SEQUENCE_KEYS[True]] = _nested_json(scores_incl)
    heads[PER_SEQUENCE_KEYS[False]] = _nested_json(scores_excl)
    nan_per_layer = (~torch.isfinite(scores_incl)).sum(dim=(0, 2))
    layers["attention_nan_heads"] = [int(x) for x in nan_per_layer]
    scalars = {
        "sink_rate_average": metrics.layer_mean(layers["sink_rate"]),
        "sink_rate_average_excl_self": metrics.layer_mean(layers["sink_rate_excl_self"]),
        "attention_nan_heads": int(nan_per_layer.sum()),
    }
    return {"layers": layers, "heads": heads, "scalars": scalars}


def scores_from_json(model: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-sequence scores a model object stores, as two ``[N, L, H]`` float64 tensors (NaN for None)."""
    heads = model.get("heads") or {}
    out = []
    for key in PER_SEQUENCE_KEYS.values():
        if key not in heads:
            raise KeyError(
                f"model {model.get('role', '?')!r}: no heads.{key} (measured before the per-sequence "
                "scores were kept?); re-measure to derive statistics-only variants"
            )
        out.append(
            torch.tensor(
                [[[math.nan if v is None else v for v in layer] for layer in seq] for seq in heads[key]],
                dtype=torch.float64,
            )
        )
    return out[0], out[1]


def derive_statistics(model: Mapping[str, Any], protocol: Protocol) -> dict[str, Any]:
    """A copy of ``model`` (a measurements model object) with every sink number recomputed under
    ``protocol``'s statistics fields, from its stored per-sequence scores; nothing is re-run."""
    incl, excl = scores_from_json(model)
    stats = sink_statistics(incl, excl, protocol)
    out = copy.deepcopy(dict(model))
    for part in ("layers", "heads", "scalars"):
        out[part] = {**out.get(part, {}), **stats[part]}
    return out


def _json_number(x: float) -> float | None:
    return None if not math.isfinite(x) else x


def _nested_json(scores: torch.Tensor) -> list[list[list[float | None]]]:
    if bool(torch.isfinite(scores).all()):
        return scores.tolist()
    return [[[_json_number(v) for v in layer] for layer in seq] for seq in scores.tolist()]
