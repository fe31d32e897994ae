"""Perplexity evaluation protocols, each named and documented, all padding-proof.

The report's perplexities come from two different protocols on two different text sets (notes,
"Where each number of the report came from"): the WikiText-2 baselines (10.2 / 18.6) from the
``lines`` protocol, the committed ablation (3332.6 / 4.29) and Q/K disruption (6.7x / 1.29x) numbers
from 5 hand-written prompts under the ``prompts`` protocol. A ratio is only meaningful within one
protocol, so every :class:`PerplexityResult` carries its protocol's name.

Protocols (``PROTOCOLS`` holds the formulas):

* ``lines`` -- upstream's WikiText-2 protocol: each sequence on its own (BOS-prefixed and truncated
  to 512 tokens by the caller), ``PPL = exp(sum_i NLL_i / sum_i (T_i - 1))``, i.e. the
  token-weighted mean of per-sequence losses ``exp(sum_i loss_i (T_i - 1) / sum_i (T_i - 1))``.
* ``prompts`` -- upstream's 5-prompt protocol: ``PPL = exp(sum_i loss_i T_i / sum_i T_i)`` where
  ``loss_i`` is the mean NLL of prompt ``i`` and ``T_i`` its length INCLUDING the BOS -- upstream
  weighted each prompt's loss by ``input_ids.shape[1]``, one more than the number of predicted tokens.
* ``sliding`` -- Hugging Face's "Perplexity of fixed-length models": one long token stream, windows
  of ``window`` tokens every ``stride`` tokens, each window scoring only the tokens no earlier window
  scored (the others labelled -100), NLL accumulated token-weighted.

Every protocol (and the capture pass, and every intervention) turns a forward into NLL in one place,
:func:`model_nll` -> :func:`token_nll` / :func:`hidden_nll` (log-softmax in float32, sums in
float64; for Llama and Gemma 3 the output head projects only the scored positions, so a 262k
vocabulary never materialises ``[B, T, V]`` logits); batches are right-padded and padding never
enters a sum, so batched evaluation equals batch size 1 (tests prove it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from drope_check.engine.batching import make_batches

__all__ = [
    "PROTOCOLS",
    "PerplexityResult",
    "perplexity_lines",
    "perplexity_prompts",
    "perplexity_sliding",
    "hidden_nll",
    "input_device",
    "model_nll",
    "token_nll",
]

#: protocol name -> how its PPL is computed.
PROTOCOLS: dict[str, str] = {
    "lines": "exp(sum_i NLL_i / sum_i (T_i - 1)); each sequence alone, BOS-prefixed (upstream WikiText-2)",
    "prompts": "exp(sum_i loss_i * T_i / sum_i T_i); loss_i = NLL_i / (T_i - 1), T_i includes BOS "
    "(upstream 5-prompt protocol)",
    "sliding": "exp(sum NLL / n) over a token stream in windows of `window` tokens, stride `stride`, "
    "each token scored once (HF 'Perplexity of fixed-length models')",
}

#: Upper bound on float32 elements of one log-softmax chunk in :func:`token_nll` (64 MiB).
DEFAULT_CHUNK_ELEMENTS = 1 << 24


@dataclass
class PerplexityResult:
    """One perplexity measurement.

    Attributes:
        protocol: a key of :data:`PROTOCOLS`.
        ppl: the protocol's perplexity.
        nll_sum: total NLL (nats) over all predicted tokens.
        n_predicted: number of predicted tokens. ``exp(nll_sum / n_predicted)`` equals ``ppl`` for
            ``lines`` and ``sliding`` but not for ``prompts`` (different weighting).
        per_sequence: ``(nll_sum, n_predicted)`` per input sequence (per window for ``sliding``), in
            input order.
        params: protocol parameters (batch size, window, stride, ...).
    """

    protocol: str
    ppl: float
    nll_sum: float
    n_predicted: int
    per_sequence: list[tuple[float, int]]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_nll(self) -> float:
        """Token-weighted mean NLL (nats per predicted token)."""
        return self.nll_sum / self.n_predicted

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, with the protocol's formula."""
        return {
            "protocol": self.protocol,
            "formula": PROTOCOLS.get(self.protocol, ""),
            "ppl": self.ppl,
            "nll_sum": self.nll_sum,
            "n_predicted": self.n_predicted,
            "mean_nll": self.mean_nll,
            "n_sequences": len(self.per_sequence),
            "per_sequence": [[float(n), int(c)] for n, c in self.per_sequence],
            "params": dict(self.params),
        }


def token_nll(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    score_mask: torch.Tensor | None = None,
    max_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL and predicted-token count of each row: ``(float64 [B], int64 [B])``.

    Position ``t`` predicts token ``t + 1`` when both are real (``attention_mask`` 1): for a
    right-padded row of length ``n`` that is targets ``1..n-1``; a left-padded row's first real token
    is not predicted either. ``score_mask`` [B, T] (optional) further restricts which *target*
    positions count (the sliding protocol's "-100" labels). Pure function of its inputs.

    The log-softmax runs in float32 over chunks of at most ``max_chunk_elements`` logits, so
    memory stays bounded for 50k vocabularies; per-token NLLs are summed in float64.

    Raises:
        ValueError: shape mismatch, or a non-finite logit at a scored position (the message names
            the row and position -- typically fp16 overflow).
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    return _scored_nll(
        lambda rows, cols: logits[rows, cols],
        logits.shape[:2],
        int(logits.shape[2]),
        logits.device,
        input_ids,
        attention_mask,
        score_mask,
        max_chunk_elements,
    )


def hidden_nll(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    vocab: int,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    score_mask: torch.Tensor | None = None,
    max_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_nll` of ``head(hidden)`` without building the ``[B, T, V]`` logits: the head
    projects only the scored positions, ``max_chunk_elements // V`` rows at a time. Same definition,
    same errors (``hidden`` is the final-normed ``[B, T, H]`` state; ``head`` maps ``[c, H] -> [c, V]``)."""
    if hidden.dim() != 3:
        raise ValueError(f"hidden states must be [B, T, H], got shape {tuple(hidden.shape)}")
    return _scored_nll(
        lambda rows, cols: head(hidden[rows, cols]),
        hidden.shape[:2],
        vocab,
        hidden.device,
        input_ids,
        attention_mask,
        score_mask,
        max_chunk_elements,
    )


def _scored_nll(
    logits_at: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: Sequence[int],
    vocab: int,
    device: torch.device,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    score_mask: torch.Tensor | None,
    max_chunk_elements: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one NLL definition behind :func:`token_nll` and :func:`hidden_nll`: ``logits_at(rows, cols)``
    gives the ``[c, V]`` logits at those (row, position) pairs; the scored pairs of the whole batch are
    taken in chunks, each token's NLL in float32, summed per row in float64."""
    batch, length = int(shape[0]), int(shape[1])
    if input_ids.shape != (batch, length) or attention_mask.shape != (batch, length):
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must "
            f"be [B, T] = {(batch, length)} to match the model's output"
        )
    real = attention_mask.to(device=device) != 0
    valid = real[:, :-1] & real[:, 1:]
    if score_mask is not None:
        if score_mask.shape != (batch, length):
            raise ValueError(f"score_mask {tuple(score_mask.shape)} must be [B, T] = {(batch, length)}")
        valid = valid & (score_mask.to(device=device) != 0)[:, 1:]
    targets = input_ids.to(device=device)[:, 1:]
    chunk = max(1, max_chunk_elements // max(vocab, 1))
    rows_all, cols_all = valid.nonzero(as_tuple=True)  # row-major: each row's positions in order
    sums = torch.zeros(batch, dtype=torch.float64, device=device)
    for start in range(0, int(rows_all.numel()), chunk):
        rows, cols = rows_all[start : start + chunk], cols_all[start : start + chunk]
        # [c, V] in float32 on the targets' device (under a device_map the output head may sit on another one)
        lg = logits_at(rows, cols).to(device=device, dtype=torch.float32)
        # a row is finite iff its min and max are: NaN propagates through both, +inf shows in the max,
        # -inf in the min (one reduction pass, ~3x cheaper than isfinite(lg).all() on a 49k vocabulary)
        lowest, highest = torch.aminmax(lg, dim=-1)
        finite = torch.isfinite(lowest) & torch.isfinite(highest)
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0, 0])
            b, t = int(rows[first]), int(cols[first])
            raise ValueError(
                f"non-finite logits in row {b} at position {t} (predicting token {t + 1}); "
                "the forward pass overflowed (fp16?) -- rerun in float32/bfloat16"
            )
        nll = torch.logsumexp(lg, dim=-1) - lg.gather(-1, targets[rows, cols, None]).squeeze(-1)
        sums.index_add_(0, rows, nll.double())
    counts = valid.sum(dim=1).to(device="cpu", dtype=torch.int64)
    return sums.cpu(), counts


def model_nll(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    score_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass (no KV cache) and :func:`token_nll` of its logits; inputs moved to the model's
    device. For the families whose causal-LM forward is exactly ``head(body(x))``
    (:meth:`~drope_check.engine.architectures.Architecture.split_forward`) the head runs only on the scored
    positions (:func:`hidden_nll`); any other model runs whole. Every pass that turns a forward into
    NLL (capture, every perplexity protocol, every intervention) goes through here."""
    from drope_check.engine.architectures import UnsupportedArchitecture, architecture_of

    device = input_device(model)
    ids, mask = input_ids.to(device), attention_mask.to(device)
    try:
        split = architecture_of(model).split_forward(model)
    except UnsupportedArchitecture:
        split = None
    if split is None:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return token_nll(logits, ids, mask, score_mask=score_mask)
    body, head = split
    hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    vocab = int(model.get_output_embeddings().weight.shape[0])
    return hidden_nll(hidden, head, vocab, ids, mask, score_mask=score_mask)


# --------------------------------------------------------------------------------------------------
# helpers


def _check_seqs(seqs: Sequence[Sequence[int]], what: str = "sequence") -> None:
    if len(seqs) == 0:
        raise ValueError(f"no {what}s given: perplexity needs at least one {what} of >= 2 tokens")
    for i, seq in enumerate(seqs):
        if len(seq) < 2:
            raise ValueError(
                f"{what} {i} has {len(seq)} token(s); perplexity needs >= 2 (BOS + one predicted "
                "token): drop it or give it more text"
            )


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model's input ids go: the input embedding's device, or, under accelerate's ``device_map``, the
    device its hook runs the embedding on (an embedding offloaded to CPU or disk runs on the main device)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    execution = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
    if execution is not None:
        return torch.device("cuda", execution) if isinstance(execution, int) else torch.device(execution)
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def _per_sequence_nll(
    model: torch.nn.Module, seqs: Sequence[Sequence[int]], pad_token_id: int | None, batch_size: int
) -> list[tuple[float, int]]:
    """``(NLL_i, T_i - 1)`` of each sequence, in input order, from right-padded batches."""
    _check_seqs(seqs)
    _check_batch_size(batch_size)
    pad = 0 if pad_token_id is None else pad_token_id
    out: list[tuple[float, int] | None] = [None] * len(seqs)
    with torch.inference_mode():
        for batch in make_batches([list(s) for s in seqs], batch_size, pad):
            sums, counts = model_nll(model, batch.input_ids, batch.attention_mask)
            for row, index in enumerate(batch.indices):
                out[index] = (float(sums[row]), int(counts[row]))
    return [x for x in out if x is not None]


# --------------------------------------------------------------------------------------------------
# protocols


def perplexity_lines(
    model: torch.nn.Module, seqs: list[list[int]], pad_token_id: int | None, batch_size: int = 4
) -> PerplexityResult:
    """Upstream's WikiText-2 protocol (``lines``): ``PPL = exp(sum_i NLL_i / sum_i (T_i - 1))``.

    Each sequence is scored on its own (the caller has prepended the BOS and truncated to 512
    tokens, as upstream did with the first 20 test lines longer than 100 characters). Upstream ran
    batch size 1 and combined per-line mean losses weighted by ``T_i - 1``, which is exactly the
    total NLL over the total number of predicted tokens computed here. Batching (right padding,
    ``pad_token_id``; None means 0 -- padded positions are masked, their id never matters) gives the
    same value as batch size 1.

    Raises:
        ValueError: no sequences, or a sequence with fewer than 2 tokens (named by index).
    """
    per_seq = _per_sequence_nll(model, seqs, pad_token_id, batch_size)
    nll = math.fsum(n for n, _ in per_seq)
    count = sum(c for _, c in per_seq)
    return PerplexityResult(
        "lines",
        math.exp(nll / count),
        nll,
        count,
        per_seq,
        {"batch_size": batch_size, "n_sequences": len(seqs)},
    )


def perplexity_prompts(
    model: torch.nn.Module, seqs: list[list[int]], pad_token_id: int | None, batch_size: int = 1
) -> PerplexityResult:
    """Upstream's 5-prompt protocol (``prompts``): ``PPL = exp(sum_i loss_i T_i / sum_i T_i)``.

    ``loss_i = NLL_i / (T_i - 1)`` is prompt ``i``'s mean next-token loss (what ``labels=`` returns)
    and ``T_i`` its length INCLUDING the BOS: upstream weighted each prompt's loss by
    ``input_ids.shape[1]``, one more than the tokens it predicts, which gives short prompts slightly
    more weight than the ``lines`` protocol does. This protocol produced the committed 3332.6 / 4.29
    ablation numbers and the 6.7x / 1.29x Q/K disruption ratios; the prompt file is the user's.
    """
    per_seq = _per_sequence_nll(model, seqs, pad_token_id, batch_size)
    weights = [len(s) for s in seqs]
    weighted = math.fsum(n / c * w for (n, c), w in zip(per_seq, weights, strict=True))
    nll = math.fsum(n for n, _ in per_seq)
    count = sum(c for _, c in per_seq)
    return PerplexityResult(
        "prompts",
        math.exp(weighted / sum(weights)),
        nll,
        count,
        per_seq,
        {"batch_size": batch_size, "n_sequences": len(seqs), "weights": "T_i including BOS"},
    )


def perplexity_sliding(
    model: torch.nn.Module,
    token_ids: list[int],
    window: int | None = None,
    stride: int = 512,
    accumulation: Literal["exact", "hf-guide"] = "exact",
    batch_size: int = 1,
) -> PerplexityResult:
    """Hugging Face's "Perplexity of fixed-length models" (``sliding``) over one token stream.

    Windows start at ``0, stride, 2*stride, ...`` and hold up to ``window`` tokens (default: the
    model's ``max_position_embeddings``); the loop stops with the window that reaches the end. A
    window scores only its last ``end - previous_end`` tokens (the rest are "-100" context), so each
    token is scored at most once; the first token of a window is never predicted (no context), which
    with ``stride == window`` makes this exactly the perplexity of disjoint chunks. The stream is
    used as given (HF's guide tokenizes the "\\n\\n"-joined test split once, so only the first window
    starts with a BOS).

    ``accumulation="exact"`` (default) sums the true NLL of every scored token and divides by their
    number. ``"hf-guide"`` reproduces the guide's arithmetic: each window's mean loss times
    ``(#labels - 1)``, which for windows after the first counts one token fewer than it scored
    (an O(1/stride) difference); ``nll_sum`` / ``n_predicted`` then hold the guide's weighted sums.
    Windows that predict nothing are skipped (HF's guide would add NaN).

    Raises:
        ValueError: fewer than 2 tokens, ``window`` < 2, or ``stride`` outside ``1..window``.
    """
    _check_seqs([token_ids], "token stream")
    _check_batch_size(batch_size)
    if window is None:
        window = int(model.config.max_position_embeddings)
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an int >= 2, got {window!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= window:
        raise ValueError(f"stride must be an int in 1..window ({window}), got {stride!r}")
    if accumulation not in ("exact", "hf-guide"):
        raise ValueError(f"accumulation must be 'exact' or 'hf-guide', got {accumulation!r}")

    n = len(token_ids)
    windows: list[tuple[int, int, int]] = []  # (begin, end, number of labelled tokens)
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        windows.append((begin, end, end - prev_end))
        prev_end = end
        if end == n:
            break

    per_window: list[tuple[float, int]] = []
    stream = torch.tensor(token_ids, dtype=torch.long)
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            group = windows[start : start + batch_size]
            width = max(e - b for b, e, _ in group)
            ids = torch.zeros(len(group), width, dtype=torch.long)
            mask = torch.zeros(len(group), width, dtype=torch.long)
            score = torch.zeros(len(group), width, dtype=torch.long)
            for row, (b, e, labelled) in enumerate(group):
                ids[row, : e - b] = stream[b:e]
                mask[row, : e - b] = 1
                score[row, e - b - labelled : e - b] = 1
            sums, counts = model_nll(model, ids, mask, score_mask=score)
            per_window.extend((float(s), int(c)) for s, c in zip(sums, counts, strict=True))

    if accumulation == "exact":
        nll = math.fsum(s for s, _ in per_window)
        count = sum(c for _, c in per_window)
    else:
        nll = math.fsum(
            s / c * (labelled - 1) for (s, c), (_, _, labelled) in zip(per_window, windows, strict=True) if c
        )
        count = sum(labelled - 1 for (_, c), (_, _, labelled) in zip(per_window, windows, strict=True) if c)
    if count == 0:
        raise ValueError("no token was scored: the stream needs at least 2 tokens inside one window")
    return PerplexityResult(
        "sliding",
        math.exp(nll / count),
        nll,
        count,
        per_window,
        {
            "window": window,
            "stride": stride,
            "accumulation": accumulation,
            "n_tokens": n,
            "n_windows": len(windows),
        },
    )
