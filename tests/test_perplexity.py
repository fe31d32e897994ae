"""Tests of the perplexity protocols and of ``token_nll``.

What is claimed: ``lines`` equals exp of Hugging Face's own ``labels=`` loss on a single sequence and
the token-weighted combination of those losses on several; a padded batch of mixed lengths gives
the batch-size-1 value; ``prompts`` weights each prompt's loss by its length including BOS (as
upstream did); ``sliding`` with stride == window is the perplexity of disjoint chunks and with
``accumulation="hf-guide"`` reproduces the arithmetic of HF's guide; ``token_nll`` chunks without
changing the result, ignores padding and names the row of a non-finite logit.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaForCausalLM

from drope_check.engine.perplexity import (
    PerplexityResult,
    perplexity_lines,
    perplexity_prompts,
    perplexity_sliding,
    token_nll,
)
from drope_check.models.tiny_models import build_llama, llama_config

#: HF computes the loss as a float32 mean; we sum float32 per-token NLLs in float64 -- ~1e-7 apart.
HF_REL_TOL = 1e-5
#: batched vs single: float32 summation order in padded SDPA/matmuls, measured ~1e-7 relative.
BATCH_REL_TOL = 1e-5
BOS, PAD = 1, 0


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    config = llama_config(
        vocab_size=96,
        layers=2,
        max_positions=128,
        initializer_range=0.3,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=2,
    )
    return build_llama(config, seed=0, attn=None)


def random_seqs(lengths: list[int], seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[BOS] + torch.randint(3, 96, (n - 1,), generator=g).tolist() for n in lengths]


def hf_loss(model: LlamaForCausalLM, seq: list[int]) -> float:
    ids = torch.tensor([seq])
    with torch.inference_mode():
        return float(model(input_ids=ids, labels=ids).loss)


@pytest.mark.parametrize("length", [2, 5, 17, 64])
def test_lines_equals_exp_of_hf_loss_single(model: LlamaForCausalLM, length: int) -> None:
    seq = random_seqs([length], seed=length)[0]
    result = perplexity_lines(model, [seq], PAD)
    assert result.ppl == pytest.approx(math.exp(hf_loss(model, seq)), rel=HF_REL_TOL)
    assert result.n_predicted == length - 1
    assert result.protocol == "lines"


def test_lines_is_token_weighted_hf_losses(model: LlamaForCausalLM) -> None:
    seqs = random_seqs([5, 20, 9])
    losses = [hf_loss(model, s) for s in seqs]
    weights = [len(s) - 1 for s in seqs]
    expected = math.exp(sum(lo * w for lo, w in zip(losses, weights, strict=True)) / sum(weights))
    assert perplexity_lines(model, seqs, PAD).ppl == pytest.approx(expected, rel=HF_REL_TOL)


@pytest.mark.parametrize("batch_size", [2, 3, 8])
def test_lines_batched_equals_single(model: LlamaForCausalLM, batch_size: int) -> None:
    seqs = random_seqs([3, 31, 12, 2, 18, 7, 25])
    single = perplexity_lines(model, seqs, PAD, batch_size=1)
    batched = perplexity_lines(model, seqs, PAD, batch_size=batch_size)
    assert batched.ppl == pytest.approx(single.ppl, rel=BATCH_REL_TOL)
    assert batched.n_predicted == single.n_predicted == sum(len(s) - 1 for s in seqs)
    for (nb, cb), (ns, cs) in zip(batched.per_sequence, single.per_sequence, strict=True):
        assert cb == cs
        assert nb == pytest.approx(ns, rel=BATCH_REL_TOL)


def test_prompts_weights_by_length_including_bos(model: LlamaForCausalLM) -> None:
    seqs = random_seqs([4, 11])
    l1, l2 = (hf_loss(model, s) for s in seqs)
    expected = math.exp((l1 * 4 + l2 * 11) / (4 + 11))  # upstream: weights T_i = len incl. BOS
    result = perplexity_prompts(model, seqs, PAD)
    assert result.ppl == pytest.approx(expected, rel=HF_REL_TOL)
    assert result.protocol == "prompts"
    lines = math.exp((l1 * 3 + l2 * 10) / (3 + 10))
    assert result.ppl != pytest.approx(lines, rel=1e-6), "weights indistinguishable from the lines protocol"
    assert perplexity_prompts(model, seqs, PAD, batch_size=2).ppl == pytest.approx(
        result.ppl, rel=BATCH_REL_TOL
    )


def test_sliding_stride_equal_window_is_disjoint_chunks(model: LlamaForCausalLM) -> None:
    stream = random_seqs([70], seed=7)[0]
    window = 16
    chunks = [stream[i : i + window] for i in range(0, len(stream), window)]  # last chunk: 6 tokens
    sliding = perplexity_sliding(model, stream, window=window, stride=window)
    lines = perplexity_lines(model, chunks, PAD)
    assert sliding.n_predicted == lines.n_predicted == len(stream) - len(chunks)
    assert sliding.ppl == pytest.approx(lines.ppl, rel=BATCH_REL_TOL)
    hf = perplexity_sliding(model, stream, window=window, stride=window, accumulation="hf-guide")
    assert hf.ppl == pytest.approx(sliding.ppl, rel=1e-12)


def hf_guide_reference(model: LlamaForCausalLM, stream: list[int], max_length: int, stride: int) -> float:
    """The loop of HF's "Perplexity of fixed-length models" guide, with ``labels=`` and -100."""
    ids = torch.tensor([stream])
    seq_len = ids.shape[1]
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    with torch.inference_mode():
        for begin in range(0, seq_len, stride):
            end = min(begin + max_length, seq_len)
            trg_len = end - prev_end
            input_ids = ids[:, begin:end]
            target_ids = input_ids.clone()
            target_ids[:, :-trg_len] = -100
            loss = float(model(input_ids=input_ids, labels=target_ids).loss)
            num_loss_tokens = int((target_ids != -100).sum()) - target_ids.size(0)
            nll_sum += loss * num_loss_tokens
            n_tokens += num_loss_tokens
            prev_end = end
            if end == seq_len:
                break
    return math.exp(nll_sum / n_tokens)


@pytest.mark.parametrize("window,stride", [(24, 8), (32, 20), (16, 16)])
def test_sliding_hf_guide_matches_reference_loop(model: LlamaForCausalLM, window: int, stride: int) -> None:
    stream = random_seqs([90], seed=11)[0]
    ours = perplexity_sliding(model, stream, window=window, stride=stride, accumulation="hf-guide")
    assert ours.ppl == pytest.approx(hf_guide_reference(model, stream, window, stride), rel=HF_REL_TOL)
    batched = perplexity_sliding(
        model, stream, window=window, stride=stride, accumulation="hf-guide", batch_size=4
    )
    assert batched.ppl == pytest.approx(ours.ppl, rel=BATCH_REL_TOL)


def test_sliding_exact_scores_each_token_once(model: LlamaForCausalLM) -> None:
    stream = random_seqs([50], seed=3)[0]
    window, stride = 20, 7
    result = perplexity_sliding(model, stream, window=window, stride=stride)
    assert result.n_predicted == len(stream) - 1  # every token but the first, once
    # by hand: token j is predicted in the first window that labels it, from that window's context
    expected = 0.0
    prev_end = 0
    with torch.inference_mode():
        for begin in range(0, len(stream), stride):
            end = min(begin + window, len(stream))
            logp = torch.log_softmax(
                model(input_ids=torch.tensor([stream[begin:end]])).logits[0].double(), -1
            )
            for j in range(max(prev_end, begin + 1), end):
                expected -= float(logp[j - begin - 1, stream[j]])
            prev_end = end
            if end == len(stream):
                break
    assert result.nll_sum == pytest.approx(expected, rel=1e-5)


def test_token_nll_ignores_padding_and_chunks_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g) * 4
    ids = torch.randint(0, 50, (3, 7), generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [0, 0, 1, 1, 1, 1, 1]])  # full, right-, left-padded
    garbage = logits.clone()
    garbage[1, 4:] = 1e6
    garbage[2, :2] = -1e6
    sums, counts = token_nll(garbage, ids, mask)
    assert counts.tolist() == [6, 3, 4]
    assert sums.dtype == torch.float64
    logp = torch.log_softmax(logits.double(), -1)
    for b, (start, end) in enumerate([(0, 7), (0, 4), (2, 7)]):
        expected = -sum(float(logp[b, t, ids[b, t + 1]]) for t in range(start, end - 1))
        assert float(sums[b]) == pytest.approx(expected, rel=1e-6)
    small_sums, small_counts = token_nll(garbage, ids, mask, max_chunk_elements=1)
    assert torch.allclose(small_sums, sums, rtol=1e-12) and torch.equal(small_counts, counts)
    scored = torch.zeros_like(mask)
    scored[:, 5:] = 1
    part, n = token_nll(logits, ids, mask, score_mask=scored)
    assert n.tolist() == [2, 0, 2]


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("vocab_index", [0, 3, 9])
def test_token_nll_non_finite_names_row(bad: float, vocab_index: int) -> None:
    """Any non-finite logit at a scored position raises, wherever it sits in the vocabulary and
    whatever its kind (a -inf of another token would not change the NLL, but it is still overflow)."""
    logits = torch.zeros(2, 4, 10)
    logits[1, 2, vocab_index] = bad
    ids = torch.zeros(2, 4, dtype=torch.long)
    mask = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="row 1 at position 2"):
        token_nll(logits, ids, mask)
    mask[1, 2:] = 0  # the non-finite logit now sits on padding and must be ignored
    token_nll(logits, ids, mask)


def test_clear_errors(model: LlamaForCausalLM) -> None:
    with pytest.raises(ValueError, match="no sequences"):
        perplexity_lines(model, [], PAD)
    with pytest.raises(ValueError, match="sequence 1 has 1 token"):
        perplexity_lines(model, [[BOS, 5], [BOS]], PAD)
    with pytest.raises(ValueError, match="sequence 0 has 0 token"):
        perplexity_prompts(model, [[]], PAD)
    with pytest.raises(ValueError, match="stride"):
        perplexity_sliding(model, [BOS, 4, 5, 6], window=2, stride=3)
    with pytest.raises(ValueError, match="window"):
        perplexity_sliding(model, [BOS, 4, 5, 6], window=1, stride=1)
    with pytest.raises(ValueError, match="token stream 0 has 1 token"):
        perplexity_sliding(model, [BOS])
    with pytest.raises(ValueError, match="batch_size"):
        perplexity_lines(model, [[BOS, 5]], PAD, batch_size=0)


def test_result_to_dict_is_json(model: LlamaForCausalLM) -> None:
    result = perplexity_lines(model, random_seqs([6, 9]), PAD, batch_size=2)
    assert isinstance(result, PerplexityResult)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["protocol"] == "lines" and "exp(" in data["formula"]
    assert data["ppl"] == pytest.approx(math.exp(data["nll_sum"] / data["n_predicted"]))
    assert len(data["per_sequence"]) == 2


# --------------------------------------------------------------------------------------------------
# model_nll: the output head on scored positions only equals the model's own logits


def _split_case(name: str) -> torch.nn.Module:
    """The tiny model of one split-forward case: ``llama``, ``gemma3`` or ``gemma3-softcapped``."""
    from drope_check.models.tiny_models import build_gemma3, build_llama, gemma3_config, llama_config

    if name == "llama":
        return build_llama(llama_config(vocab_size=96), seed=3)
    if name == "gemma3":
        return build_gemma3(gemma3_config(vocab_size=96), seed=4)
    capped = gemma3_config(vocab_size=96)
    capped.final_logit_softcapping = 3.0  # small: most logits are in tanh's bend, so a missing cap shows
    return build_gemma3(capped, seed=5)


@pytest.mark.parametrize("case", ["llama", "gemma3", "gemma3-softcapped"])
def test_model_nll_equals_token_nll_of_the_models_logits(case: str) -> None:
    """The split path (body, then the head on scored rows) is the same NLL as the model's own forward:
    right-padded rows of different lengths, a score mask, and chunks of one row each."""
    from drope_check.engine.architectures import architecture_of
    from drope_check.engine.perplexity import hidden_nll, model_nll

    model = _split_case(case)
    assert architecture_of(model).split_forward(model) is not None
    gen = torch.Generator().manual_seed(["llama", "gemma3", "gemma3-softcapped"].index(case))
    ids = torch.randint(3, 96, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    score = torch.ones_like(ids)
    score[0, :5] = 0
    with torch.no_grad():
        want = token_nll(model(input_ids=ids, attention_mask=mask).logits, ids, mask, score_mask=score)
        got = model_nll(model, ids, mask, score_mask=score)
        body, head = architecture_of(model).split_forward(model)
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
        one_row = hidden_nll(hidden, head, 96, ids, mask, score_mask=score, max_chunk_elements=1)
    assert torch.equal(got[1], want[1]) and torch.equal(one_row[1], want[1])
    assert torch.allclose(got[0], want[0], rtol=1e-6, atol=0)
    assert torch.allclose(one_row[0], want[0], rtol=1e-6, atol=0)


def test_model_nll_softcapping_is_applied() -> None:
    """Leaving Gemma's final soft-capping out changes the NLL: the equality above is not vacuous."""
    from drope_check.engine.architectures import architecture_of
    from drope_check.engine.perplexity import hidden_nll

    model = _split_case("gemma3-softcapped")
    ids = torch.randint(3, 96, (1, 9), generator=torch.Generator().manual_seed(9))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        body, _ = architecture_of(model).split_forward(model)
        hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
        uncapped = hidden_nll(hidden, model.lm_head, 96, ids, mask)[0]
        want = token_nll(model(input_ids=ids, attention_mask=mask).logits, ids, mask)[0]
    assert not torch.allclose(uncapped, want, rtol=1e-3)


def test_model_nll_runs_an_unknown_class_whole() -> None:
    """A causal-LM class the architecture record does not name (e.g. remote code) is never split."""
    from drope_check.engine.architectures import architecture_of
    from drope_check.engine.perplexity import model_nll

    model = _split_case("llama")
    renamed = type("RemoteLlamaForCausalLM", (type(model),), {})
    model.__class__ = renamed
    assert architecture_of(model).split_forward(model) is None
    ids = torch.randint(3, 96, (2, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = token_nll(model(input_ids=ids, attention_mask=mask).logits, ids, mask)
        got = model_nll(model, ids, mask)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
