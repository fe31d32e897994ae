"""Tokenization with an explicit BOS, and right-padded batches that keep RoPE positions intact.

Every metric of the report is read at, or relative to, position 0, the BOS token (BOS norm, BOS
ratio, sink score = attention to position 0, BOS-MLP ablation). So each sequence is built as
``[BOS] + tokens(text)``, with the BOS id named explicitly rather than left to the tokenizer's
``add_special_tokens`` behaviour (which differs between tokenizers: Llama-2's adds ``<s>``,
SmolLM2's adds nothing).

Batches are RIGHT-padded only: a sequence's real tokens sit at positions ``0..len-1`` in every
batch, exactly where they sit when the sequence runs alone, so the rotary positions of a RoPE model
and position 0 = BOS do not depend on the batch. ``attention_mask`` marks the real tokens; metrics
must drop the padded positions, which is the point of confound 1 in the notes (upstream's RoPE inputs
were right-padded to 512 tokens and the pad rows were included in entropy and BOS ratio). ``pad_to``
reproduces that padding on purpose so the confound can be measured.

Upstream's perplexity protocol: each text its own sequence, BOS prepended, truncated to 512 tokens
(BOS included), batch size 1 -- i.e. ``make_batches(tokenize_with_bos(tok, texts, bos), 1, pad)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Batch", "make_batches", "tokenize_with_bos"]


def _snippet(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[:width] + "...")


def tokenize_with_bos(
    tokenizer: Any,
    texts: Sequence[str],
    bos_token_id: int | None,
    max_tokens: int = 512,
) -> list[list[int]]:
    """Token ids of each text as ``[bos_token_id] + encode(text)``, truncated to ``max_tokens`` in total.

    Each text is encoded with ``tokenizer.encode(text, add_special_tokens=False)`` so the tokenizer
    adds nothing of its own; the BOS is then prepended and the sequence cut to at most ``max_tokens``
    tokens, BOS included (upstream: 512). Truncation keeps the beginning of the text.

    Args:
        tokenizer: anything with ``encode(text, add_special_tokens=False) -> list[int]`` (an HF
            tokenizer does).
        texts: the texts, one sequence each.
        bos_token_id: the id put at position 0. Must be given; a model pair whose tokenizer has no BOS
            must name one in its spec.
        max_tokens: maximum sequence length including the BOS; at least 2.

    Raises:
        ValueError: ``bos_token_id`` is None; ``max_tokens`` < 2; or a sequence has fewer than 2
            tokens (an empty text gives only the BOS, and a perplexity needs at least one predicted
            token) -- the message names the text's index and shows its beginning.
    """
    if bos_token_id is None:
        raise ValueError(
            "bos_token_id is None: the tokenizer has no BOS token, and every metric here is read at "
            "position 0 = BOS; the model pair spec must name a BOS token id explicitly"
        )
    if isinstance(bos_token_id, bool) or not isinstance(bos_token_id, int) or bos_token_id < 0:
        raise ValueError(f"bos_token_id must be a non-negative int, got {bos_token_id!r}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2:
        raise ValueError(f"max_tokens must be an int >= 2 (BOS plus at least one token), got {max_tokens!r}")
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string")
    sequences: list[list[int]] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str")
        ids = [int(t) for t in tokenizer.encode(text, add_special_tokens=False)]
        seq = ([bos_token_id] + ids)[:max_tokens]
        if len(seq) < 2:
            raise ValueError(
                f"text {i} ({_snippet(text)}) gives {len(seq)} token(s) with the BOS; a perplexity "
                "needs at least 2 (BOS + one predicted token)"
            )
        sequences.append(seq)
    return sequences


@dataclass
class Batch:
    """A right-padded batch of token sequences.

    Attributes:
        input_ids: ``LongTensor[B, T]``; row ``b`` holds sequence ``indices[b]`` in positions
            ``0..lengths[b]-1`` followed by the pad id.
        attention_mask: ``LongTensor[B, T]``, 1 on real tokens, 0 on padding.
        lengths: real length of each row.
        indices: position of each row's sequence in the list given to :func:`make_batches`.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: list[int]
    indices: list[int]

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2 or self.input_ids.shape != self.attention_mask.shape:
            raise ValueError(
                f"input_ids {tuple(self.input_ids.shape)} and attention_mask "
                f"{tuple(self.attention_mask.shape)} must be equal [B, T] shapes"
            )
        if not len(self.lengths) == len(self.indices) == self.input_ids.shape[0]:
            raise ValueError("lengths and indices need one entry per row")

    @property
    def padded_length(self) -> int:
        """``T``, the common row length (longest real length, or ``pad_to``)."""
        return int(self.input_ids.shape[1])

    def sequences(self) -> list[list[int]]:
        """The real tokens of each row (padding removed), in row order."""
        return [self.input_ids[b, :n].tolist() for b, n in enumerate(self.lengths)]


def make_batches(
    seqs: list[list[int]],
    batch_size: int,
    pad_token_id: int,
    sort_by_length: bool = True,
    pad_to: int | None = None,
) -> list[Batch]:
    """Group token sequences into right-padded batches.

    With ``sort_by_length`` the sequences are ordered by length, longest first (ties keep their
    original order), before being cut into groups of ``batch_size``, so little padding is wasted;
    otherwise the original order is kept. Each batch is padded only to its own longest sequence,
    unless ``pad_to`` is given: then every row is padded to ``pad_to`` tokens (upstream's RoPE
    inputs were right-padded to 512 -- use this to reproduce that confound, not for clean metrics).
    ``Batch.indices`` maps each row back to its sequence in ``seqs``. With ``batch_size=1`` and no
    ``pad_to`` every batch is exactly one unpadded sequence.

    Raises:
        ValueError: ``batch_size`` < 1, an empty sequence, or a sequence longer than ``pad_to``
            (named by index and length).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
        raise ValueError(f"pad_token_id must be an int, got {pad_token_id!r}")
    if pad_to is not None and (isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 1):
        raise ValueError(f"pad_to must be a positive int or None, got {pad_to!r}")
    for i, seq in enumerate(seqs):
        if len(seq) == 0:
            raise ValueError(f"sequence {i} is empty")
        if pad_to is not None and len(seq) > pad_to:
            raise ValueError(
                f"sequence {i} has {len(seq)} tokens, more than pad_to={pad_to}; truncate it first"
            )

    order = list(range(len(seqs)))
    if sort_by_length:
        order.sort(key=lambda i: -len(seqs[i]))  # list.sort is stable: ties keep input order

    batches: list[Batch] = []
    for start in range(0, len(order), batch_size):
        group = order[start : start + batch_size]
        lengths = [len(seqs[i]) for i in group]
        width = pad_to if pad_to is not None else max(lengths)
        input_ids = torch.full((len(group), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, (i, n) in enumerate(zip(group, lengths, strict=True)):
            input_ids[row, :n] = torch.tensor(seqs[i], dtype=torch.long)
            attention_mask[row, :n] = 1
        batches.append(
            Batch(input_ids=input_ids, attention_mask=attention_mask, lengths=lengths, indices=group)
        )
    return batches


def chunk_with_bos(token_ids: Sequence[int], bos_token_id: int, max_tokens: int, n: int) -> list[list[int]]:
    """``n`` consecutive sequences of BOS + ``max_tokens - 1`` tokens cut from one token stream
    (the long-context text set: WikiText lines are too short for thousands of tokens).

    Raises ``ValueError`` when the stream is too short for ``n`` full sequences.
    """
    if bos_token_id is None:
        raise ValueError("the tokenizer has no BOS token; the pair spec must name one (bos_token)")
    if max_tokens < 2 or n < 1:
        raise ValueError(f"need max_tokens >= 2 and n >= 1, got max_tokens={max_tokens}, n={n}")
    body = max_tokens - 1
    if len(token_ids) < n * body:
        raise ValueError(
            f"the text has {len(token_ids)} tokens, fewer than the {n} x {body} needed for {n} sequences of "
            f"{max_tokens} tokens; lower n_texts or max_tokens"
        )
    return [[int(bos_token_id), *map(int, token_ids[i * body : (i + 1) * body])] for i in range(n)]
