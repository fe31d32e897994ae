"""Tests for the registered attention function (drope_check.engine.attention) and the one-pass capture
(drope_check.engine.capture).

Two levels:

* property tests (hypothesis) of the pieces on random tensors: ``attention_to_position0`` against a
  float64 manual softmax, and ``drope_check_attention_forward`` against torch's math-backend SDPA,
  over random shapes (GQA included), right-padded masks and float32 / bfloat16 inputs;
* end-to-end tests on tiny random Llama models (MHA and GQA), with the model's own float64 *eager*
  attention and ``output_hidden_states`` as the independent reference.
"""

from __future__ import annotations

import contextlib
import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import LlamaForCausalLM
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

import drope_check.engine.attention  # noqa: F401  (registers the "drope_check" attention function)
from drope_check.engine.attention import (
    active_registrations,
    allowed_mask,
    drope_check_attention_forward,
    observe_attention,
    sdpa_with_logsumexp,
)
from drope_check.engine.capture import (
    AUTO_FLOAT32_BOUND,
    KERNEL_LSE_TRUSTED,
    LAYER_STATS,
    CaptureError,
    OnePassCapture,
    attention_to_position0,
    attention_to_position0_from_lse,
)
from drope_check.engine.protocol import Protocol
from drope_check.models.qk_norm import apply_identity_rotation
from drope_check.models.tiny_models import build_llama, llama_config

PROPERTY = settings(max_examples=40, deadline=None)

# attention_to_position0 computed in float64 vs a float64 manual softmax: the same arithmetic up to
# summation order (log-sum-exp vs exp/sum), so only a few float64 ulps of a value <= 1 may differ.
F64_STATS_TOL = 1e-10
# The same computed in float32: logits reach |q.k * scale| ~ 150 in the drawn cases, so float32
# rounding of the logits (~150 * 6e-8) moves a weight by up to ~1e-5 (largest seen over 500 draws:
# 3.6e-6; float64: 7e-15).
F32_STATS_TOL = 2e-5

# Output of the capture function vs torch's math-backend SDPA on the same (repeat_kv-grouped)
# inputs. Both compute the same softmax(q k^T * scale) v but may take different CPU kernels (the
# function goes through transformers' sdpa path, which may pick the fused CPU kernel), so they only
# agree to the rounding of the input dtype:
#   float32: eps 1.2e-7, but logits reach |q.k * scale| ~ 150 in the drawn cases (q, k ~ 3 N(0,1),
#   D = 16, scale 1), so logit rounding alone moves weights by ~150 * 6e-8 ~ 1e-5 relative;
#   5e-5 covers it (largest difference seen over 400 draws: 5e-6).
#   bfloat16: eps 7.8e-3 (8 mantissa bits); the kernels round intermediates (scores, weights) to
#   bf16 differently and outputs reach ~3, where one ulp is 1.6e-2 -> 2 ulps = 3e-2 (largest seen:
#   1.6e-2).
OUTPUT_TOL = {
    torch.float32: dict(atol=5e-5, rtol=5e-5),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
}

# Captured statistics (float64 from the float32 model's q/k and residuals) vs the float64 eager
# reference of the same weights: float32 rounding through 3 small layers gives <= 2e-7. (HF's eager
# attention runs its softmax, and LlamaRMSNorm its normalisation, in float32 even for a float64
# model, so the reference is itself only ~1e-7 accurate; a tighter tolerance would test HF.)
MODEL_TOL = 1e-6


# --------------------------------------------------------------------------------------------------
# property tests of the pieces
# --------------------------------------------------------------------------------------------------


def right_padded_mask(lengths: list[int], t: int) -> torch.Tensor:
    """bool [B, 1, T, T]: causal AND key is a real token (right padding), as sdpa_mask builds it."""
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    real = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # [B, T]
    return (causal[None] & real[:, None, :]).unsqueeze(1)


def manual_attention_to_position0(q, k, allowed, scaling):
    """Textbook float64 softmax(q k^T * scale, masked)[..., 0] with explicit GQA repetition."""
    groups = q.shape[1] // k.shape[1]
    q64 = q.to(torch.float64)
    k64 = repeat_kv(k.to(torch.float64), groups)
    scores = (q64 @ k64.transpose(-1, -2)) * scaling
    allowed = allowed.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights[..., 0]


@st.composite
def attention_inputs(draw):
    b = draw(st.integers(1, 3))
    kv_heads = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([g for g in range(1, 7) if g * kv_heads <= 6]))
    heads = kv_heads * groups
    t = draw(st.integers(2, 40))
    d = draw(st.sampled_from([4, 8, 16]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    # right padding: each row's real length drawn on its own (>= 2 tokens; may equal T)
    lengths = [draw(st.integers(min(2, t), t)) for _ in range(b)]
    seed = draw(st.integers(0, 2**31 - 1))
    logit_scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    scaling = draw(st.sampled_from([d**-0.5, 0.05, 1.0]))
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, heads, t, d, generator=g) * logit_scale).to(dtype)
    k = (torch.randn(b, kv_heads, t, d, generator=g) * logit_scale).to(dtype)
    v = torch.randn(b, kv_heads, t, d, generator=g).to(dtype)
    mask = right_padded_mask(lengths, t)
    chunk = draw(st.sampled_from([1, 7, 1 << 24]))  # exercise the query chunking
    return SimpleNamespace(q=q, k=k, v=v, mask=mask, scaling=scaling, groups=groups, dtype=dtype, chunk=chunk)


class FakeAttention:
    """What the attention function reads from an attention module (weak-referenceable, unlike a
    SimpleNamespace, because the observer registry is a WeakKeyDictionary)."""

    def __init__(self, groups: int, layer_idx: int = 0) -> None:
        self.num_key_value_groups = groups
        self.is_causal = True
        self.layer_idx = layer_idx
        self.training = False


@contextlib.contextmanager
def observing(module, observer):
    """Register ``observer`` on one (fake) module; observe_attention needs a whole model."""
    drope_check.engine.attention._observers[module] = [observer]
    try:
        yield
    finally:
        drope_check.engine.attention._observers.pop(module, None)


@PROPERTY
@given(attention_inputs())
def test_attention_to_position0_equals_manual_softmax(x):
    expected = manual_attention_to_position0(x.q, x.k, x.mask, x.scaling)
    got64 = attention_to_position0(x.q, x.k, x.mask, x.scaling, dtype=torch.float64, chunk_elements=x.chunk)
    assert got64.dtype == torch.float64 and got64.shape == expected.shape
    torch.testing.assert_close(got64, expected, atol=F64_STATS_TOL, rtol=0)
    got32 = attention_to_position0(x.q, x.k, x.mask, x.scaling, dtype=torch.float32, chunk_elements=x.chunk)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), expected, atol=F32_STATS_TOL, rtol=0)
    # query 0 can only see key 0
    torch.testing.assert_close(got64[:, :, 0], torch.ones_like(got64[:, :, 0]), atol=F64_STATS_TOL, rtol=0)


@PROPERTY
@given(attention_inputs())
def test_capture_function_output_equals_math_sdpa_and_observer_sees_inputs(x):
    seen = []

    def observer(call):
        seen.append((call.query, call.key, call.allowed(), call.scaling))

    module = FakeAttention(x.groups)
    with observing(module, observer):
        out, weights = drope_check_attention_forward(module, x.q, x.k, x.v, x.mask, scaling=x.scaling)
    assert active_registrations() == 0
    assert weights is None
    with sdpa_kernel(SDPBackend.MATH):
        ref = torch.nn.functional.scaled_dot_product_attention(
            x.q, repeat_kv(x.k, x.groups), repeat_kv(x.v, x.groups), attn_mask=x.mask, scale=x.scaling
        )
    ref = ref.transpose(1, 2)  # the function returns [B, T, H, D]
    assert out.shape == ref.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, ref, **OUTPUT_TOL[x.dtype])

    # the observer saw exactly the inputs, the mask and the scaling
    assert len(seen) == 1
    query, key, allowed, scaling = seen[0]
    assert query is x.q and key is x.k
    assert torch.equal(allowed.expand_as(x.mask), x.mask)
    assert scaling == x.scaling
    got = attention_to_position0(query, key, allowed, scaling)
    torch.testing.assert_close(
        got, manual_attention_to_position0(x.q, x.k, x.mask, x.scaling), atol=F64_STATS_TOL, rtol=0
    )


def test_observer_gets_default_scaling_when_none():
    seen = []
    module = FakeAttention(1)
    q = torch.randn(1, 2, 5, 8)
    with observing(module, lambda call: seen.append(call.scaling)):
        drope_check_attention_forward(module, q, q, q, None, scaling=None)
    assert seen == [8**-0.5]


# --------------------------------------------------------------------------------------------------
# the kernel path: layer output and log-sum-exp from the SDPA kernel, attention to BOS from the lse
# --------------------------------------------------------------------------------------------------

# Relative error of a_0 = exp(s q.k_0 - lse) promised by the capture where the rounding bound
# 2 s max|q| max|k| 2^-24 is <= AUTO_FLOAT32_BOUND (the suite's 1e-4 on attention to BOS).
PROMISED_RELATIVE = 1e-4


def left_padded_mask(lengths: list[int], t: int) -> torch.Tensor:
    """bool [B, 1, T, T]: causal AND key is real, real tokens at the END of each row (left padding):
    the pad query rows see no key at all."""
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    real = torch.arange(t)[None, :] >= (t - torch.tensor(lengths))[:, None]
    return (causal[None] & real[:, None, :]).unsqueeze(1)


@st.composite
def kernel_inputs(draw):
    x = draw(attention_inputs())
    lengths = [int(n) for n in x.mask[:, 0].any(dim=1).sum(dim=1)]
    kind = draw(st.sampled_from(["none", "right", "left"]))
    t = x.q.shape[2]
    x.mask = {"none": None, "right": x.mask, "left": left_padded_mask(lengths, t)}[kind]
    x.kind = kind
    return x


def rounding_bound(q: torch.Tensor, k: torch.Tensor, scaling: float) -> float:
    return (
        2
        * abs(scaling)
        * float(q.double().norm(dim=-1).max())
        * float(k.double().norm(dim=-1).max())
        * 2.0**-24
    )


@PROPERTY
@given(kernel_inputs())
def test_kernel_path_output_is_bit_identical_and_lse_gives_attention_to_bos(x):
    """The kernel path computes the layer output exactly as transformers' SDPA path (same kernel,
    same arguments: bit for bit) and its log-sum-exp gives the attention to BOS of a float64
    softmax, within the promised 1e-4 relative wherever the rounding bound allows float32."""
    module = FakeAttention(x.groups)
    fused = sdpa_with_logsumexp(module, x.q, x.k, x.v, x.mask, scaling=x.scaling)
    assert fused is not None, "the CPU flash kernel should take every case drawn here"
    out, lse = fused
    ref, _ = sdpa_attention_forward(module, x.q, x.k, x.v, x.mask, scaling=x.scaling)
    assert torch.equal(out, ref)
    b, h, t, _ = x.q.shape
    assert lse.shape == (b, h, t) and lse.dtype == torch.float32

    allowed = allowed_mask(x.mask, t, t, b, "cpu")
    expected = manual_attention_to_position0(x.q, x.k, allowed, x.scaling)
    got = attention_to_position0_from_lse(x.q, x.k, lse, allowed[..., 0], x.scaling)
    assert got.dtype == torch.float64 and got.shape == expected.shape
    # rows with no allowed key (left padding) get 0, as the chunked path gives them
    assert not bool(got[~allowed[..., 0].expand_as(got)].any())
    chunked = attention_to_position0(x.q, x.k, allowed, x.scaling, dtype=torch.float64)
    assert torch.equal(got == 0, chunked == 0) or bool((chunked[got == 0] < 1e-30).all())
    seen = allowed[..., 0].expand_as(got)  # the textbook softmax of a row without keys is NaN
    got, expected, chunked = got[seen], expected[seen], chunked[seen]
    if got.numel() == 0:  # left padding hides key 0 from every query of the batch
        return
    if x.dtype != torch.float32:
        # the CPU kernel's half-precision exp: ~5e-5 abs. on the lse, so the capture keeps the
        # chunked path for these dtypes (KERNEL_LSE_TRUSTED)
        assert ("cpu", x.dtype) not in KERNEL_LSE_TRUSTED
        torch.testing.assert_close(got, expected, atol=2e-4, rtol=0)
        return
    if rounding_bound(x.q, x.k, x.scaling) <= AUTO_FLOAT32_BOUND:
        rel = (got - expected).abs() / expected.clamp_min(1e-300)
        assert float(rel.max()) <= PROMISED_RELATIVE
        assert float((got - chunked).abs().max()) <= 1e-5
    # whatever the bound: the float32 log-sum-exp error is that of float32 logits (F32_STATS_TOL abs)
    torch.testing.assert_close(got, expected, atol=F32_STATS_TOL, rtol=0)


def test_kernel_path_declines_what_it_cannot_take():
    """Decoding steps, a static-cache prefill (Q < K), additive masks and dropout go to the plain
    path (``None``), which the capture then pairs with the chunked computation."""
    module = FakeAttention(1)
    q = torch.randn(1, 2, 6, 8)
    assert sdpa_with_logsumexp(module, q[:, :, :1], q, q, None) is None
    assert sdpa_with_logsumexp(module, q[:, :, :3], q, q, None) is None
    additive = torch.zeros(1, 1, 6, 6)
    assert sdpa_with_logsumexp(module, q, q, q, additive) is None
    assert sdpa_with_logsumexp(module, q, q, q, None, dropout=0.1) is None
    assert sdpa_with_logsumexp(module, q, q, q, None) is not None


def sdpa_visible_keys(q_len: int, k_len: int) -> torch.Tensor:
    """Which keys the model's own attention path (sdpa_attention_forward, mask None, causal module)
    lets each query see: queries of zeros give uniform weights over the visible keys, and one-hot
    values (value of key j = e_j) read those weights back. bool [q_len, k_len]."""
    query = torch.zeros(1, 1, q_len, k_len, dtype=torch.float64)
    key = torch.randn(1, 1, k_len, k_len, dtype=torch.float64)
    value = torch.eye(k_len, dtype=torch.float64)[None, None]
    out, _ = drope_check_attention_forward(FakeAttention(1), query, key, value, None, scaling=1.0)
    weights = out[0, :, 0, :]  # [q_len, k_len]
    return weights > 0


@pytest.mark.parametrize(
    "q_len,k_len",
    [
        (1, 1),
        (5, 5),
        (1, 7),  # one decoding step sees the whole cache
        (3, 7),  # StaticCache prefill: empty cache slots are not keys
        (6, 9),
    ],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_allowed_mask_none_is_what_the_model_attends_with(q_len, k_len, batch):
    """``None`` = transformers skipped the mask and SDPA applies causality itself; the observers'
    mask must be exactly the keys SDPA lets each query see."""
    got = allowed_mask(None, q_len, k_len, batch, "cpu")
    assert got.shape == (batch, 1, q_len, k_len) and got.dtype == torch.bool
    visible = sdpa_visible_keys(q_len, k_len)
    if q_len == k_len:
        assert torch.equal(visible, torch.ones(q_len, k_len, dtype=torch.bool).tril())
    if q_len == 1:
        assert bool(visible.all())
    for b in range(batch):
        assert torch.equal(got[b, 0], visible)


def test_capture_attention_correct_during_static_cache_prefill():
    """Prefill into an empty StaticCache: transformers hands the attention function mask=None with
    k_len = max_cache_len > q_len. The observer's attention to BOS must still be the model's."""
    from transformers import StaticCache

    model = tiny_llama(2)
    ids = random_ids(1, 10)
    ref, _, _ = eager_reference(model, ids)
    seen: dict[int, torch.Tensor] = {}

    def observer(call):
        seen[call.module.layer_idx] = attention_to_position0(
            call.query, call.key, call.allowed(), call.scaling
        )[0]

    masks = []

    def record_mask(call):
        masks.append((call.query.shape[2], call.key.shape[2]))

    cache = StaticCache(config=model.config, max_cache_len=32)
    with (
        observe_attention(model, observer),
        observe_attention(model, record_mask, layers=[0]),
        torch.no_grad(),
    ):
        out = model(input_ids=ids, cache=cache, use_cache=True)
    ref_logits = eager_reference(model, ids)[0].logits
    # the model itself is right (SDPA crops the empty slots) ...
    torch.testing.assert_close(out.logits.double(), ref_logits, atol=1e-5, rtol=1e-5)
    assert masks == [(10, 32)]  # ... and this is the q_len < k_len case
    # ... so the observer must see the model's attention too
    for layer in range(N_LAYERS):
        torch.testing.assert_close(seen[layer], ref.attentions[layer][0, :, :, 0], atol=MODEL_TOL, rtol=0)


def test_allowed_mask_bool_and_additive():
    mask = right_padded_mask([4, 2], 4)
    assert allowed_mask(mask, 4, 4, 2, "cpu") is mask
    additive = torch.zeros(2, 1, 4, 4).masked_fill(~mask, torch.finfo(torch.float32).min)
    assert torch.equal(allowed_mask(additive, 4, 4, 2, "cpu"), mask)
    additive16 = torch.zeros(2, 1, 4, 4, dtype=torch.bfloat16).masked_fill(
        ~mask, torch.finfo(torch.bfloat16).min
    )
    assert torch.equal(allowed_mask(additive16, 4, 4, 2, "cpu"), mask)


# --------------------------------------------------------------------------------------------------
# tiny random Llama models
# --------------------------------------------------------------------------------------------------

N_LAYERS = 3


def tiny_llama(kv_heads: int, seed: int = 0) -> LlamaForCausalLM:
    """hidden 32, 4 heads of dim 8, ``kv_heads`` KV heads, 3 layers, vocab 64, switched to drope_check.

    ``initializer_range=0.15`` (instead of 0.02) makes the attention far from uniform (std of the
    attention to BOS over queries ~0.15), so a wrong mask, grouping or rotation changes it visibly,
    while float32 rounding keeps the capture within ~2e-7 of the float64 reference (5x below
    MODEL_TOL; at 0.3 it reaches 1.3e-6).
    """
    config = llama_config(layers=N_LAYERS, kv_heads=kv_heads, max_positions=256, initializer_range=0.15)
    return build_llama(config, seed=seed)


def eager_reference(model: LlamaForCausalLM, input_ids, attention_mask=None):
    """The model's own eager attention and hidden states in float64, plus, by forward hooks, the raw
    last-layer residual and each layer's MLP output (returned as ``(out, raw_last, mlp_outputs)``)."""
    ref = copy.deepcopy(model).double()
    ref.set_attn_implementation("eager")
    raw_last: dict[str, torch.Tensor] = {}
    mlp_out: list[torch.Tensor] = []
    handles = [
        ref.model.layers[-1].register_forward_hook(
            lambda m, i, o: raw_last.__setitem__("x", o[0] if isinstance(o, tuple) else o)
        )
    ]
    handles += [
        layer.mlp.register_forward_hook(lambda m, i, o: mlp_out.append(o)) for layer in ref.model.layers
    ]
    try:
        with torch.no_grad():
            out = ref(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_attentions=True,
                output_hidden_states=True,
            )
    finally:
        for handle in handles:
            handle.remove()
    return out, raw_last["x"], mlp_out


def capture(model, input_ids, rows, attention_mask=None, protocol=None):
    cap = OnePassCapture(model, protocol or Protocol(stats_dtype="float64"), "tiny-llama")
    with torch.no_grad(), cap.batch(rows) as seqs:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return cap, seqs


def assert_no_hooks(model):
    for name, module in model.named_modules():
        assert not module._forward_hooks, f"forward hook left on {name or 'model'}"
        assert not module._forward_pre_hooks, f"forward pre-hook left on {name or 'model'}"
    assert active_registrations() == 0


def random_ids(b: int, t: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (b, t), generator=g)
    ids[:, 0] = 1  # BOS
    return ids


def right_padded_batch(lengths: list[int], seed: int = 2, pad_id: int = 0):
    t = max(lengths)
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), t), pad_id, dtype=torch.long)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(3, 64, (n,), generator=g)
        ids[b, 0] = 1
        mask[b, :n] = 1
    return ids, mask


MODELS = pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])


@MODELS
def test_attention_to_bos_equals_eager_output_attentions(kv_heads):
    model = tiny_llama(kv_heads)
    ids = random_ids(2, 17)
    _, seqs = capture(model, ids, [17, 17])
    ref, _, _ = eager_reference(model, ids)
    assert len(ref.attentions) == N_LAYERS
    for b, seq in enumerate(seqs):
        assert len(seq.attn_to_bos) == N_LAYERS
        for layer in range(N_LAYERS):
            got = seq.attn_to_bos[layer]
            assert got.shape == (4, 17) and got.dtype == torch.float64
            torch.testing.assert_close(got, ref.attentions[layer][b, :, :, 0], atol=MODEL_TOL, rtol=0)
    # the attention is far from uniform, so the comparison has power
    assert float(ref.attentions[1][0, :, 1:, 0].std()) > 0.05
    assert_no_hooks(model)


def numpy_entropy(x: np.ndarray) -> tuple[float, float, float]:
    s2 = np.linalg.svd(x, compute_uv=False) ** 2
    p = s2 / s2.sum()
    nz = p[p > 0]
    h = float(-(nz * np.log(nz)).sum())
    return h, h / math.log(min(x.shape)), float(p.max())


def residual_summaries(x: torch.Tensor) -> dict[str, float]:
    """The per-layer statistics of one residual matrix [T, d], written out from the definitions."""
    x = x.detach().to(torch.float64).numpy()
    norms = np.linalg.norm(x, axis=1)
    sq = norms**2
    h, hn, p1 = numpy_entropy(x)
    return {
        "bos_norm": float(norms[0]),
        "bos_ratio": float(norms[0] / norms[1:].mean()),
        "queipo_c": float(sq[0] / sq[1:].sum()),
        "queipo_alpha": float(((x[1:] @ (x[0] / norms[0])) ** 2).sum() / sq[1:].sum()),
        "entropy": h,
        "entropy_normalized": hn,
        "anisotropy": p1,
        "mean_token_norm": float(norms.mean()),
    }


@MODELS
def test_residual_summaries_equal_hidden_states_and_raw_last_layer(kv_heads):
    model = tiny_llama(kv_heads)
    ids = random_ids(2, 13, seed=5)
    _, seqs = capture(model, ids, [13, 13])
    ref, raw_last, mlp_out = eager_reference(model, ids)
    hidden = ref.hidden_states
    assert len(hidden) == N_LAYERS + 1
    for b, seq in enumerate(seqs):
        assert seq.embedding_bos_norm == pytest.approx(float(hidden[0][b, 0].norm()), rel=MODEL_TOL)
        for layer in range(N_LAYERS):
            x = raw_last[b] if layer == N_LAYERS - 1 else hidden[layer + 1][b]
            expected = residual_summaries(x)
            for stat, value in expected.items():
                # abs as well as rel: alpha (a fraction in [0, 1], here ~0.06) is a small difference of
                # float32-rounded residual energies and shows up to ~1.3e-6 relative error
                got = seq.layers[stat][layer]
                assert got == pytest.approx(value, rel=MODEL_TOL, abs=MODEL_TOL), (stat, layer)
        # the last layer: the capture keeps the raw residual, NOT HF's post-final-norm entry
        last = N_LAYERS - 1
        hf_last = float(hidden[-1][b, 0].norm())
        assert seq.layers["bos_norm"][last] == pytest.approx(float(raw_last[b, 0].norm()), rel=MODEL_TOL)
        assert abs(seq.layers["bos_norm"][last] - hf_last) > 1e-3 * hf_last
        assert not torch.allclose(raw_last[b], hidden[-1][b])
        # BOS-MLP write norm: what the MLP of each layer writes at position 0
        for layer in range(N_LAYERS):
            expected = float(mlp_out[layer][b, 0].norm())
            assert seq.layers["bos_mlp_write_norm"][layer] == pytest.approx(expected, rel=MODEL_TOL)


@MODELS
def test_right_padding_does_not_change_statistics(kv_heads):
    model = tiny_llama(kv_heads)
    lengths = [11, 4, 8, 2]
    ids, mask = right_padded_batch(lengths)
    _, batched = capture(model, ids, lengths, attention_mask=mask)
    for b, n in enumerate(lengths):
        _, single = capture(model, ids[b : b + 1, :n], [n])
        one = single[0]
        got = batched[b]
        assert got.n_rows == n
        assert got.embedding_bos_norm == pytest.approx(one.embedding_bos_norm, rel=MODEL_TOL)
        for stat in LAYER_STATS:
            np.testing.assert_allclose(
                got.layers[stat], one.layers[stat], rtol=MODEL_TOL, atol=1e-9, err_msg=stat
            )
        for layer in range(N_LAYERS):
            assert got.attn_to_bos[layer].shape == (4, n)
            torch.testing.assert_close(got.attn_to_bos[layer], one.attn_to_bos[layer], atol=MODEL_TOL, rtol=0)
    # and equal to the eager reference of the padded batch on the real rows
    ref, _, _ = eager_reference(model, ids, mask)
    for b, n in enumerate(lengths):
        for layer in range(N_LAYERS):
            torch.testing.assert_close(
                batched[b].attn_to_bos[layer], ref.attentions[layer][b, :, :n, 0], atol=MODEL_TOL, rtol=0
            )
    assert_no_hooks(model)


def test_hooks_and_registrations_removed_also_when_body_raises():
    model = tiny_llama(2)
    assert_no_hooks(model)
    cap = OnePassCapture(model, Protocol(stats_dtype="float64"), "tiny-llama")
    with pytest.raises(ZeroDivisionError):
        with cap.batch([5]):
            assert active_registrations() == N_LAYERS
            assert any(m._forward_hooks for m in model.modules())
            raise ZeroDivisionError("body failed")
    assert_no_hooks(model)

    # a failure inside the forward pass (an observer raising) also cleans up
    def bad_observer(*_args):
        raise KeyError("observer failed")

    with pytest.raises(KeyError):
        with observe_attention(model, bad_observer), torch.no_grad():
            model(random_ids(1, 5))
    assert_no_hooks(model)
    # projections mode adds hooks on q_proj / k_proj: removed too
    _ = capture(
        model, random_ids(1, 6), [6], protocol=Protocol(stats_dtype="float64", attention_source="projections")
    )
    assert_no_hooks(model)
    # and after a normal run
    capture(model, random_ids(2, 6), [6, 6])
    assert_no_hooks(model)


def test_model_not_switched_raises_clear_error():
    model = tiny_llama(2)
    model.set_attn_implementation("sdpa")
    cap = OnePassCapture(model, Protocol(), "tiny-llama")
    with pytest.raises(RuntimeError, match=r"set_attn_implementation\('drope_check'\)") as info:
        with cap.batch([5]):
            model(random_ids(1, 5))
    assert "'sdpa'" in str(info.value)
    assert_no_hooks(model)


def test_non_finite_weight_raises_capture_error_naming_layer():
    model = tiny_llama(2)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("inf")
    with pytest.raises(CaptureError, match=r"tiny-llama: layer 1: non-finite"):
        capture(model, random_ids(1, 8), [8])
    assert_no_hooks(model)


def test_non_finite_residual_raises_capture_error_naming_layer():
    """A NaN reaching the residual at a non-BOS position only (the BOS-MLP check cannot see it)."""
    model = tiny_llama(2)

    def plant_nan(_m, _i, out):
        out = out.clone()
        out[:, 3] = float("nan")
        return out

    handle = model.model.layers[2].mlp.register_forward_hook(plant_nan)
    try:
        with pytest.raises(CaptureError, match=r"tiny-llama: layer 2: non-finite residual"):
            capture(model, random_ids(1, 8), [8])
    finally:
        handle.remove()
    assert_no_hooks(model)


def test_non_finite_residual_in_a_later_row_names_that_row():
    """Rows of a batch are summarised on the capture's worker threads; the error still names the
    layer and the row whose residual is bad."""
    model = tiny_llama(2)

    def plant_nan(_m, _i, out):
        out = out.clone()
        out[1, 3] = float("nan")
        return out

    handle = model.model.layers[2].mlp.register_forward_hook(plant_nan)
    try:
        with pytest.raises(CaptureError, match=r"tiny-llama: layer 2: non-finite residual in sequence row 1"):
            capture(model, random_ids(3, 8), [8, 8, 8])
    finally:
        handle.remove()
    assert_no_hooks(model)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_long_single_sequence_statistics_equal_definitions_for_any_thread_count(threads):
    """One sequence with T > d (the d x d Gram), its layers solved on the capture's worker threads
    (one per torch thread): every statistic equals its definition on the float64 reference's hidden
    states, whatever the number of threads."""
    model = tiny_llama(2)
    ids = random_ids(1, 100, seed=9)  # d = 32 < T
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _, seqs = capture(model, ids, [100])
    finally:
        torch.set_num_threads(before)
    ref, raw_last, _ = eager_reference(model, ids)
    for layer in range(N_LAYERS):
        x = raw_last[0] if layer == N_LAYERS - 1 else ref.hidden_states[layer + 1][0]
        for stat, value in residual_summaries(x).items():
            assert seqs[0].layers[stat][layer] == pytest.approx(value, rel=MODEL_TOL, abs=MODEL_TOL), (
                stat,
                layer,
            )
    assert_no_hooks(model)


def test_bfloat16_residuals_are_summarised_exactly():
    """A bfloat16 model on the CPU (numpy cannot read bfloat16): the rows are converted to float64 on
    the forward's thread and give the definitions' values on the very residuals the model produced
    (its own ``output_hidden_states``, converted exactly)."""
    model = tiny_llama(2).to(torch.bfloat16)
    ids = random_ids(2, 12, seed=4)
    cap = OnePassCapture(model, Protocol(), "tiny-llama-bf16")
    with torch.no_grad(), cap.batch([12, 12]) as seqs:
        out = model(input_ids=ids, use_cache=False, output_hidden_states=True)
    for b, seq in enumerate(seqs):
        for layer in range(N_LAYERS - 1):  # the last entry of hidden_states is after the final norm
            x = out.hidden_states[layer + 1][b]
            assert x.dtype == torch.bfloat16
            for stat, value in residual_summaries(x).items():
                assert seq.layers[stat][layer] == pytest.approx(value, rel=1e-9, abs=1e-12), (stat, layer)
    assert active_registrations() == 0  # (output_hidden_states leaves transformers' own hooks behind)


@MODELS
def test_projection_attention_is_true_attention_only_without_rotary(kv_heads):
    """Confound 2 of the report: upstream's "manual Q/K" attention from raw q_proj/k_proj outputs.

    For an identity-rotation (DroPE-style) model it IS the model's attention; for a RoPE model it is
    not, because the rotary step between the projections and the attention is skipped.
    """
    projections = Protocol(stats_dtype="float64", attention_source="projections")
    ids = random_ids(2, 15, seed=7)

    nope = apply_identity_rotation(tiny_llama(kv_heads))
    _, seqs = capture(nope, ids, [15, 15], protocol=projections)
    ref, _, _ = eager_reference(nope, ids)
    for b, seq in enumerate(seqs):
        for layer in range(N_LAYERS):
            torch.testing.assert_close(
                seq.attn_to_bos[layer], ref.attentions[layer][b, :, :, 0], atol=MODEL_TOL, rtol=0
            )

    rope = tiny_llama(kv_heads)
    _, seqs = capture(rope, ids, [15, 15], protocol=projections)
    _, model_seqs = capture(rope, ids, [15, 15])
    ref, _, _ = eager_reference(rope, ids)
    for b, seq in enumerate(seqs):
        for layer in range(N_LAYERS):
            true = ref.attentions[layer][b, :, :, 0]
            torch.testing.assert_close(model_seqs[b].attn_to_bos[layer], true, atol=MODEL_TOL, rtol=0)
            assert float((seq.attn_to_bos[layer] - true).abs().max()) > 1e-2, layer
    assert_no_hooks(rope)
    assert_no_hooks(nope)


def test_stats_dtype_auto_switches_to_float64_for_huge_keys():
    model = tiny_llama(2)
    ids = random_ids(1, 12, seed=3)
    auto = Protocol(stats_dtype="auto")
    cap, _ = capture(model, ids, [12], protocol=auto)
    assert cap.layers_in_float64 == 0  # small q/k norms: float32 is accurate

    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.weight.mul_(1e4)
    # the bound the capture uses, from the layer's own q/k: far above the float32 threshold
    qk = {}

    def grab(call):
        norms = float(call.query.norm(dim=-1).max()) * float(call.key.norm(dim=-1).max())
        qk["bound"] = 2 * call.scaling * norms * 2.0**-24

    with observe_attention(model, grab, layers=[1]), torch.no_grad():
        model(ids)
    assert qk["bound"] > 10 * AUTO_FLOAT32_BOUND

    cap, auto_seqs = capture(model, ids, [12], protocol=auto)
    assert cap.layers_in_float64 == 1  # only layer 1
    assert cap.layers_from_kernel == 2  # the others from the kernel's log-sum-exp
    _, f64_seqs = capture(model, ids, [12], protocol=Protocol(stats_dtype="float64"))
    # layer 1 was computed in float64 exactly as the float64 protocol does
    assert torch.equal(auto_seqs[0].attn_to_bos[1], f64_seqs[0].attn_to_bos[1])
    for layer in (0, 2):
        torch.testing.assert_close(
            auto_seqs[0].attn_to_bos[layer].double(),
            f64_seqs[0].attn_to_bos[layer],
            atol=F32_STATS_TOL,
            rtol=0,
        )
    assert_no_hooks(model)


@MODELS
@pytest.mark.parametrize("padding", ["none", "right"])
def test_capture_kernel_path_equals_chunked_float64_path_and_eager(kv_heads, padding):
    """The capture's two attention-to-BOS paths on the same model and batch: the kernel path (auto,
    small q/k norms) and the chunked float64 path agree to float32 rounding, and both match the
    model's own float64 eager attention within MODEL_TOL."""
    model = tiny_llama(kv_heads)
    if padding == "none":
        ids, mask, lengths = random_ids(3, 19, seed=11), None, [19, 19, 19]
    else:
        lengths = [19, 7, 12]
        ids, mask = right_padded_batch(lengths, seed=11)
    fast, fast_seqs = capture(model, ids, lengths, attention_mask=mask, protocol=Protocol(stats_dtype="auto"))
    assert fast.layers_from_kernel == N_LAYERS and fast.layers_in_float64 == 0
    slow, slow_seqs = capture(model, ids, lengths, attention_mask=mask)
    assert slow.layers_from_kernel == 0 and slow.layers_in_float64 == N_LAYERS
    ref, _, _ = eager_reference(model, ids, mask)
    for b, n in enumerate(lengths):
        for layer in range(N_LAYERS):
            got = fast_seqs[b].attn_to_bos[layer]
            assert got.shape == (4, n)
            torch.testing.assert_close(got, slow_seqs[b].attn_to_bos[layer], atol=MODEL_TOL, rtol=0)
            torch.testing.assert_close(got, ref.attentions[layer][b, :, :n, 0], atol=MODEL_TOL, rtol=0)
        # the residual statistics do not depend on the attention path
        for stat in LAYER_STATS:
            assert fast_seqs[b].layers[stat] == slow_seqs[b].layers[stat], stat
    assert_no_hooks(model)
