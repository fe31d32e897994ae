"""Tests for drope_check.engine.metrics: known answers, properties (hypothesis) and every error path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drope_check.engine import metrics
from drope_check.engine import residual_stats as engine_residual_stats
from drope_check.engine.metrics import (
    SpectrumEntropy,
    argmax_layer,
    argmin_layer,
    bos_norm,
    bos_ratio,
    bos_ratio_from_norms,
    matrix_entropy,
    mean_over_sequences,
    queipo_c_alpha,
    sink_rate,
    sink_scores,
    spectrum_entropy,
    spike_layer_argmax_ratio,
    spike_layer_max_write,
    squared_singular_values,
    token_norms,
)
from drope_check.engine.residual_stats import residual_summaries, residual_summary

PROPERTY = settings(max_examples=50, deadline=None)


def random_matrix(seed: int, t: int, d: int, scale: float = 1.0, massive: bool = False) -> torch.Tensor:
    """A reproducible float64 [t, d] Gaussian matrix; ``massive`` makes row 0 (BOS) ~1e4 x the rest."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, d, generator=g, dtype=torch.float64) * scale
    if massive:
        x[0] = x[0] / x[0].norm() * 1e4 * scale
    return x


matrices = st.builds(
    random_matrix,
    seed=st.integers(0, 2**31 - 1),
    t=st.integers(2, 24),
    d=st.integers(2, 24),
    scale=st.sampled_from([1e-3, 1.0, 37.5, 1e3]),
    massive=st.booleans(),
)


# --------------------------------------------------------------------------------------------------
# hand-built example shared by several known-answer tests
# --------------------------------------------------------------------------------------------------
#
#   X = [[3, 4],      row norms 5, 1, 2
#        [1, 0],
#        [0, 2]]
#
#   BOS ratio = 5 / mean(1, 2) = 5 / 1.5 = 10/3
#   M = 25, R = 1 + 4 = 5, c = M/R = 5
#   u = x_0/|x_0| = (0.6, 0.8); <x_1,u> = 0.6, <x_2,u> = 1.6; squares 0.36 + 2.56 = 2.92
#   alpha = 2.92 / 5 = 0.584
#   X^T X = [[10, 12], [12, 20]]: trace 30, det 200 - 144 = 56
#     -> eigenvalues 15 +- sqrt(225 - 56) = 15 +- 13 = 28, 2   (so s = sqrt 28, sqrt 2)
#   Bound: s_1^2 = 28 >= M + alpha R = 25 + 2.92 = 27.92
#   p_1 = 28/30 = 14/15 >= (c + alpha)/(c + 1) = 5.584 / 6 = 0.930666...
HAND = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])


def test_hand_built_norms_ratio_c_alpha() -> None:
    assert torch.allclose(token_norms(HAND), torch.tensor([5.0, 1.0, 2.0], dtype=torch.float64))
    assert token_norms(HAND).dtype == torch.float64
    assert bos_norm(HAND) == pytest.approx(5.0, rel=1e-15)
    assert bos_ratio(HAND) == pytest.approx(10.0 / 3.0, rel=1e-15)
    assert bos_ratio_from_norms(torch.tensor([5.0, 1.0, 2.0])) == pytest.approx(10.0 / 3.0, rel=1e-15)
    assert bos_ratio_from_norms([5.0, 1.0, 2.0]) == pytest.approx(10.0 / 3.0, rel=1e-15)
    c, alpha = queipo_c_alpha(HAND)
    assert c == pytest.approx(5.0, rel=1e-15)
    assert alpha == pytest.approx(0.584, rel=1e-14)


def test_hand_built_singular_values_and_entropy() -> None:
    s2 = squared_singular_values(HAND)
    assert s2.dtype == torch.float64
    assert s2.shape == (2,)
    assert torch.allclose(s2, torch.tensor([28.0, 2.0], dtype=torch.float64), rtol=0, atol=1e-12)
    # p = (14/15, 1/15)
    p1, p2 = 14.0 / 15.0, 1.0 / 15.0
    h = -(p1 * math.log(p1) + p2 * math.log(p2))
    ent = matrix_entropy(HAND)
    assert ent.entropy == pytest.approx(h, rel=1e-12)
    assert ent.entropy_normalized == pytest.approx(h / math.log(2), rel=1e-12)
    assert ent.anisotropy == pytest.approx(14.0 / 15.0, rel=1e-14)
    # Queipo's bounds on the hand example (numbers in the comment above).
    c, alpha = queipo_c_alpha(HAND)
    assert float(s2[0]) >= 25.0 + alpha * 5.0
    assert ent.anisotropy >= (c + alpha) / (c + 1)


def test_second_hand_built_3x2_nondiagonal_gram() -> None:
    # X = [[2, 0], [0, 1], [2, 1]]; X^T X = [[8, 2], [2, 2]], trace 10, det 16 - 4 = 12
    # -> eigenvalues 5 +- sqrt(25 - 12) = 5 +- sqrt(13)
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    expected = torch.tensor([5.0 + math.sqrt(13.0), 5.0 - math.sqrt(13.0)], dtype=torch.float64)
    assert torch.allclose(squared_singular_values(x), expected, rtol=0, atol=1e-12)
    # the T <= d branch on the transpose gives the same spectrum
    assert torch.allclose(squared_singular_values(x.T), expected, rtol=0, atol=1e-12)


def test_rank_one_matrix_has_zero_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 1, generator=g, dtype=torch.float64)
    b = torch.randn(1, 40, generator=g, dtype=torch.float64)
    for x in (a @ b, (a @ b).T):
        ent = matrix_entropy(x)
        assert ent.entropy == pytest.approx(0.0, abs=1e-9)
        assert ent.entropy_normalized == pytest.approx(0.0, abs=1e-9)
        assert ent.anisotropy == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("r", [2, 3, 7, 16])
def test_orthogonal_equal_norm_rows_have_maximal_entropy(r: int) -> None:
    # scaled identity rows: r rows, d = r + 5 columns
    x = torch.zeros(r, r + 5, dtype=torch.float64)
    x[:, :r] = 3.5 * torch.eye(r, dtype=torch.float64)
    ent = matrix_entropy(x)
    assert ent.entropy == pytest.approx(math.log(r), rel=1e-12)
    assert ent.entropy_normalized == pytest.approx(1.0, rel=1e-12)
    assert ent.anisotropy == pytest.approx(1.0 / r, rel=1e-12)
    # random orthonormal rows via QR (T < d branch) and orthonormal columns (T > d branch)
    g = torch.Generator().manual_seed(r)
    q, _ = torch.linalg.qr(torch.randn(3 * r, r, generator=g, dtype=torch.float64))
    for y in (7.0 * q.T, 7.0 * q):
        ent = matrix_entropy(y)
        assert ent.entropy == pytest.approx(math.log(r), rel=1e-10)
        assert ent.entropy_normalized == pytest.approx(1.0, rel=1e-10)


def test_spectrum_entropy_zero_entries_give_no_nan() -> None:
    ent = spectrum_entropy(torch.tensor([4.0, 0.0, 0.0, 4.0]))
    assert isinstance(ent, SpectrumEntropy)
    assert ent.entropy == pytest.approx(math.log(2), rel=1e-15)
    assert ent.entropy_normalized == pytest.approx(math.log(2) / math.log(4), rel=1e-15)
    assert ent.anisotropy == 0.5
    assert spectrum_entropy([1.0, 0.0]).entropy == 0.0
    with pytest.raises(AttributeError):
        ent.entropy = 1.0  # type: ignore[misc]  # frozen dataclass


# --------------------------------------------------------------------------------------------------
# squared singular values vs SVD
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 11), (11, 5), (8, 8), (1, 6), (6, 1)])
def test_squared_singular_values_matches_svd_both_branches(shape: tuple[int, int]) -> None:
    x = random_matrix(1, *shape, massive=shape[0] > 1)
    s2 = squared_singular_values(x)
    ref = torch.linalg.svdvals(x.double()) ** 2
    assert s2.shape == (min(shape),)
    assert torch.all(s2[:-1] >= s2[1:])
    assert torch.allclose(s2, ref, rtol=0, atol=1e-10 * float(ref[0]))


@PROPERTY
@given(x=matrices)
def test_squared_singular_values_property(x: torch.Tensor) -> None:
    s2 = squared_singular_values(x)
    ref = torch.linalg.svdvals(x) ** 2
    assert s2.dtype == torch.float64
    assert s2.shape == (min(x.shape),)
    assert torch.all(s2 >= 0)
    assert torch.all(s2[:-1] >= s2[1:])
    assert float((s2 - ref).abs().max()) <= 1e-10 * float(ref[0])
    # trace identity: sum s_j^2 = ||X||_F^2
    assert float(s2.sum()) == pytest.approx(float((x * x).sum()), rel=1e-10)


def test_squared_singular_values_float32_input_is_upcast() -> None:
    x32 = random_matrix(3, 6, 9, massive=True).float()
    s2 = squared_singular_values(x32)
    assert s2.dtype == torch.float64
    ref = torch.linalg.svdvals(x32.double()) ** 2
    assert float((s2 - ref).abs().max()) <= 1e-10 * float(ref[0])


# --------------------------------------------------------------------------------------------------
# Queipo-de-Llano bounds
# --------------------------------------------------------------------------------------------------


@PROPERTY
@given(x=matrices)
def test_queipo_bounds(x: torch.Tensor) -> None:
    m = float(x[0] @ x[0])
    r = float((x[1:] * x[1:]).sum())
    c, alpha = queipo_c_alpha(x)
    assert c == pytest.approx(m / r, rel=1e-12)
    assert -1e-12 <= alpha <= 1.0 + 1e-12
    s2 = squared_singular_values(x)
    assert float(s2[0]) >= (m + alpha * r) * (1.0 - 1e-9)
    p1 = matrix_entropy(x).anisotropy
    assert p1 >= (c + alpha) / (c + 1.0) * (1.0 - 1e-9)


def test_queipo_alpha_extremes() -> None:
    # all other rows along the BOS direction -> alpha = 1; all orthogonal -> alpha = 0
    along = torch.tensor([[2.0, 0.0], [3.0, 0.0], [-1.0, 0.0]])
    assert queipo_c_alpha(along) == pytest.approx((4.0 / 10.0, 1.0))
    ortho = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, -1.0]])
    assert queipo_c_alpha(ortho) == pytest.approx((4.0 / 10.0, 0.0))


# --------------------------------------------------------------------------------------------------
# entropy properties
# --------------------------------------------------------------------------------------------------


@PROPERTY
@given(x=matrices, factor=st.floats(1e-3, 1e3), perm_seed=st.integers(0, 1000))
def test_entropy_range_and_invariances(x: torch.Tensor, factor: float, perm_seed: int) -> None:
    ent = matrix_entropy(x)
    n = min(x.shape)
    assert 0.0 <= ent.entropy <= math.log(n) + 1e-12
    assert 0.0 <= ent.entropy_normalized <= 1.0 + 1e-12
    assert 1.0 / n - 1e-12 <= ent.anisotropy <= 1.0 + 1e-12
    scaled = matrix_entropy(x * factor)
    assert scaled.entropy == pytest.approx(ent.entropy, rel=1e-9, abs=1e-9)
    assert scaled.anisotropy == pytest.approx(ent.anisotropy, rel=1e-9, abs=1e-9)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(perm_seed))
    permuted = matrix_entropy(x[perm])
    assert permuted.entropy == pytest.approx(ent.entropy, rel=1e-9, abs=1e-9)
    assert permuted.anisotropy == pytest.approx(ent.anisotropy, rel=1e-9, abs=1e-9)


@PROPERTY
@given(x=matrices)
def test_float32_and_float64_inputs_agree(x: torch.Tensor) -> None:
    x32 = x.float()
    a = matrix_entropy(x32)
    b = matrix_entropy(x32.double())
    assert a.entropy == pytest.approx(b.entropy, rel=1e-12, abs=1e-12)
    assert a.anisotropy == pytest.approx(b.anisotropy, rel=1e-12, abs=1e-12)
    assert bos_ratio(x32) == pytest.approx(bos_ratio(x32.double()), rel=1e-12)
    assert queipo_c_alpha(x32) == pytest.approx(queipo_c_alpha(x32.double()), rel=1e-12, abs=1e-12)


def test_bf16_input_is_accepted() -> None:
    x = random_matrix(5, 4, 8).bfloat16()
    assert matrix_entropy(x) == matrix_entropy(x.double())


def test_matrix_entropy_is_uncentered() -> None:
    # every row identical: uncentered spectrum is rank 1 (entropy 0); centering would give a zero matrix
    x = torch.ones(6, 4) * torch.tensor([1.0, -2.0, 0.5, 3.0])
    assert matrix_entropy(x).entropy == pytest.approx(0.0, abs=1e-9)


def test_massive_bos_row_drives_entropy_down() -> None:
    x = random_matrix(11, 32, 64)
    y = x.clone()
    y[0] *= 1e3
    assert matrix_entropy(y).entropy < 0.01 < matrix_entropy(x).entropy


# --------------------------------------------------------------------------------------------------
# sink scores and rates
# --------------------------------------------------------------------------------------------------


def test_sink_scores_include_self_short_prompt_confound() -> None:
    # T = 4. Column t = attention of query t to key 0; query 0 always puts 1.0 on itself.
    attn = torch.tensor(
        [
            [1.0, 0.1, 0.1, 0.1],  # head 0: queries 1..3 put only 0.1 on BOS
            [1.0, 0.9, 0.8, 0.7],  # head 1: a genuine sink
            [1.0, 0.0, 0.0, 0.0],  # head 2: ignores BOS entirely
        ]
    )
    incl = sink_scores(attn)  # include_self=True is the default (upstream convention)
    excl = sink_scores(attn, include_self=False)
    assert incl.dtype == torch.float64
    # head 0: (1 + 0.3)/4 = 0.325 with the self term, 0.1 without
    # head 1: (1 + 2.4)/4 = 0.85, 2.4/3 = 0.8;  head 2: 1/4 = 0.25, 0
    assert torch.allclose(incl, torch.tensor([0.325, 0.85, 0.25], dtype=torch.float64), atol=1e-15)
    assert torch.allclose(excl, torch.tensor([0.1, 0.8, 0.0], dtype=torch.float64), atol=1e-15)
    # "Short prompts" confound: head 0 is a sink (0.325 >= 0.3) ONLY because of the t = 0 self term,
    # which adds (1 - 0.1)/T = 0.225 here. With T = 6-12 as upstream, the bonus is still 1/T-ish.
    assert sink_rate(incl) == pytest.approx(2.0 / 3.0)
    assert sink_rate(excl) == pytest.approx(1.0 / 3.0)


def test_sink_scores_tolerance_and_clamp() -> None:
    attn = torch.tensor([[1.00005, 0.5, -0.00005]])
    s = sink_scores(attn)
    assert float(s[0]) == pytest.approx(0.5, abs=1e-15)  # clamped to [0, 1] before averaging
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sink_scores(torch.tensor([[1.0, 1.01]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sink_scores(torch.tensor([[1.0, -0.01]]))


def test_sink_rate_threshold_equality() -> None:
    scores = torch.tensor([0.3, 0.2, 0.5, 0.3], dtype=torch.float64)
    assert sink_rate(scores) == 0.75  # >= 0.3 (upstream)
    assert sink_rate(scores, strict=True) == 0.25  # > 0.3 (Gu et al.)
    assert sink_rate(scores, tau=0.5) == 0.25
    assert sink_rate(scores, tau=0.5, strict=True) == 0.0
    assert sink_rate([0.9, 0.1]) == 0.5


def test_sink_rate_float32_score_of_point_three_is_above_tau() -> None:
    # float32(0.3) = 0.30000001192...: strictly above the float64 threshold under both rules
    s32 = torch.tensor([0.3], dtype=torch.float32)
    assert sink_rate(s32) == 1.0
    assert sink_rate(s32, strict=True) == 1.0


def test_nan_attention_is_rejected_not_counted_as_non_sink() -> None:
    # fp16 overflow confound: a NaN head must not silently become a non-sink
    attn = torch.tensor([[1.0, 0.8, 0.9], [float("nan"), float("nan"), float("nan")]])
    with pytest.raises(ValueError, match="non-finite"):
        sink_scores(attn)
    with pytest.raises(ValueError, match="non-finite"):
        sink_rate(torch.tensor([0.5, float("nan")]))


# --------------------------------------------------------------------------------------------------
# per-layer rules
# --------------------------------------------------------------------------------------------------


def test_spike_layer_rules_disagree_on_drope_like_profile() -> None:
    # DroPE-like: the BOS norm jumps at layer 1 (block 1 writes +495) but the ratio keeps rising
    # to its maximum at layer 2 (67.3 vs 58.3), so the two rules pick different layers.
    ratio = [3.0, 58.3, 67.3, 60.0, 55.0]
    norms = [5.0, 500.0, 520.0, 530.0, 540.0]  # writes: 4, 495, 20, 10, 10 (embedding norm 1.0)
    assert spike_layer_argmax_ratio(ratio) == 2
    assert spike_layer_max_write(1.0, norms) == 1
    # RoPE-like: both rules agree on layer 1
    assert spike_layer_argmax_ratio(torch.tensor([2.0, 107.9, 90.0, 80.0])) == 1
    assert spike_layer_max_write(1.0, torch.tensor([3.0, 900.0, 950.0, 982.1])) == 1


def test_spike_layer_max_write_uses_embedding_as_layer_minus_one() -> None:
    # the big write is block 0 itself: embedding 1 -> 400 at layer 0
    assert spike_layer_max_write(1.0, [400.0, 410.0, 420.0]) == 0
    # embedding 390: writes +10, +10, +10 -> a three-way tie, the first index wins
    assert spike_layer_max_write(390.0, [400.0, 410.0, 420.0]) == 0
    # embedding 399: writes +1, +10, +10 -> layer 1
    assert spike_layer_max_write(399.0, [400.0, 410.0, 420.0]) == 1
    # a single layer
    assert spike_layer_max_write(0.0, [3.0]) == 0


def test_argmin_argmax_first_index_on_ties() -> None:
    assert argmax_layer([1.0, 3.0, 3.0, 2.0]) == 1
    assert argmin_layer([2.0, 1.0, 5.0, 1.0]) == 1
    assert argmax_layer(torch.tensor([7.0])) == 0
    assert argmin_layer(torch.tensor([0.0081, 0.5, 0.0081], dtype=torch.float32)) == 0
    assert argmin_layer([-1.0, -3.0]) == 1


def test_mean_over_sequences() -> None:
    out = mean_over_sequences(
        [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 4.0, 5.0], dtype=torch.float16)]
    )
    assert out.dtype == torch.float64
    assert torch.equal(out, torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64))
    assert torch.equal(
        mean_over_sequences([[1.0, 2.0], [2.0, 4.0], [3.0, 0.0]]), torch.tensor([2.0, 2.0]).double()
    )
    assert float(mean_over_sequences([1.0, 2.0, 6.0])) == 3.0  # one scalar per sequence
    assert torch.equal(mean_over_sequences(torch.ones(4, 3)), torch.ones(3, dtype=torch.float64))


# --------------------------------------------------------------------------------------------------
# error paths
# --------------------------------------------------------------------------------------------------

NAN_MATRIX = torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [1.0, 1.0]])
INF_MATRIX = torch.tensor([[1.0, 2.0], [float("inf"), 0.0], [1.0, 1.0]])


@pytest.mark.parametrize(
    "fn",
    [token_norms, bos_norm, bos_ratio, queipo_c_alpha, squared_singular_values, matrix_entropy, sink_scores],
)
@pytest.mark.parametrize("bad", [NAN_MATRIX, INF_MATRIX])
def test_matrix_functions_reject_non_finite(fn, bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        fn(bad)


@pytest.mark.parametrize(
    "fn",
    [token_norms, bos_norm, bos_ratio, queipo_c_alpha, squared_singular_values, matrix_entropy, sink_scores],
)
@pytest.mark.parametrize(
    "bad",
    [torch.ones(4), torch.ones(2, 3, 4), torch.tensor(1.0), torch.ones(0, 3), torch.ones(3, 0)],
    ids=["1d", "3d", "0d", "no_rows", "no_cols"],
)
def test_matrix_functions_reject_wrong_shape_or_empty(fn, bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"2-D|empty"):
        fn(bad)


def test_single_token_errors() -> None:
    one = torch.ones(1, 5)
    with pytest.raises(ValueError, match="at least 2 rows"):
        bos_ratio(one)
    with pytest.raises(ValueError, match="at least 2 rows"):
        queipo_c_alpha(one)
    with pytest.raises(ValueError, match="at least 2"):
        bos_ratio_from_norms(torch.tensor([3.0]))
    with pytest.raises(ValueError, match="at least 2"):
        matrix_entropy(one)  # min(T, d) = 1: normalised entropy undefined
    with pytest.raises(ValueError, match="T >= 2"):
        sink_scores(torch.ones(3, 1), include_self=False)
    assert torch.equal(sink_scores(torch.ones(3, 1)), torch.ones(3, dtype=torch.float64))
    assert bos_norm(one) == pytest.approx(math.sqrt(5.0))


def test_degenerate_value_errors() -> None:
    with pytest.raises(ValueError, match="mean norm of the non-BOS"):
        bos_ratio(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="non-negative"):
        bos_ratio_from_norms([1.0, -1.0, 2.0])
    with pytest.raises(ValueError, match="BOS row x_0 is zero"):
        queipo_c_alpha(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="R = 0"):
        queipo_c_alpha(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="zero matrix"):
        matrix_entropy(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="zero matrix"):
        spectrum_entropy(torch.zeros(3))
    with pytest.raises(ValueError, match="non-negative"):
        spectrum_entropy(torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match="at least 2"):
        spectrum_entropy(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="1-D"):
        spectrum_entropy(torch.ones(2, 2))
    with pytest.raises(ValueError, match="non-finite"):
        spectrum_entropy(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="complex"):
        token_norms(torch.ones(2, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="overflow"):
        squared_singular_values(torch.full((2, 2), 1e200, dtype=torch.float64))


def test_sink_rate_and_layer_rule_errors() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        sink_rate(torch.tensor([]))
    with pytest.raises(ValueError, match="1-D"):
        sink_rate(torch.ones(2, 2))
    with pytest.raises(ValueError, match="tau"):
        sink_rate([0.5], tau=float("nan"))
    for fn in (argmax_layer, argmin_layer, spike_layer_argmax_ratio):
        with pytest.raises(ValueError, match="non-finite"):
            fn([1.0, float("nan"), 2.0])
        with pytest.raises(ValueError, match="at least 1"):
            fn([])
        with pytest.raises(ValueError, match="1-D"):
            fn(torch.ones(2, 2))
    with pytest.raises(ValueError, match="non-finite"):
        spike_layer_max_write(1.0, [1.0, float("nan")])
    with pytest.raises(ValueError, match="embedding_bos_norm"):
        spike_layer_max_write(float("nan"), [1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative"):
        spike_layer_max_write(-1.0, [1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative"):
        spike_layer_max_write(1.0, [1.0, -2.0])


def test_mean_over_sequences_errors() -> None:
    with pytest.raises(ValueError, match="no sequences"):
        mean_over_sequences([])
    with pytest.raises(ValueError, match="ragged"):
        mean_over_sequences([torch.ones(3), torch.ones(4)])
    with pytest.raises(ValueError, match="ragged"):
        mean_over_sequences([torch.ones(3), 1.0])
    with pytest.raises(ValueError, match="empty"):
        mean_over_sequences([torch.ones(0)])
    with pytest.raises(ValueError, match="1-D"):
        mean_over_sequences([torch.ones(2, 2)])
    with pytest.raises(ValueError, match="non-finite"):
        mean_over_sequences([torch.ones(3), torch.tensor([1.0, float("inf"), 1.0])])


# --------------------------------------------------------------------------------------------------
# layer_mean / perplexity_ratio (used by measure, interventions and import-upstream)


def test_layer_mean_is_the_plain_mean_and_rejects_nan() -> None:
    values = [0.6625, 0.78125] + [1.0] * 30
    assert metrics.layer_mean(values) == pytest.approx(sum(values) / 32, rel=1e-15)
    with pytest.raises(ValueError, match="non-finite"):
        metrics.layer_mean([1.0, float("nan")])


def test_perplexity_ratio_refuses_what_is_not_a_perplexity() -> None:
    assert metrics.perplexity_ratio(14422.0, 10.0) == 1442.2
    for bad in ((0.0, 3.8), (3332.6, 0.0), (float("nan"), 3.8), (5.0, float("inf"))):
        with pytest.raises(ValueError):
            metrics.perplexity_ratio(*bad)


# --------------------------------------------------------------------------------------------------
# residual_summary: every statistic at once, equal to the definitions
# --------------------------------------------------------------------------------------------------

# Promised agreement of the one-pass summary with the float64 SVD definition (issue 11).
SUMMARY_RELATIVE = 1e-6


def svd_definition(x: torch.Tensor) -> dict[str, float]:
    """Each statistic written out from its definition on a float64 numpy SVD of the matrix."""
    a = x.detach().to(torch.float64).numpy()
    norms = np.linalg.norm(a, axis=1)
    sq = norms**2
    s2 = np.linalg.svd(a, compute_uv=False) ** 2
    p = s2 / s2.sum()
    nz = p[p > 0]
    h = float(-(nz * np.log(nz)).sum())
    u = a[0] / norms[0]
    return {
        "bos_norm": float(norms[0]),
        "bos_ratio": float(norms[0] / norms[1:].mean()),
        "queipo_c": float(sq[0] / sq[1:].sum()),
        "queipo_alpha": float(((a[1:] @ u) ** 2).sum() / sq[1:].sum()),
        "entropy": h,
        "entropy_normalized": h / math.log(min(a.shape)),
        "anisotropy": float(p.max()),
        "mean_token_norm": float(norms.mean()),
    }


def assert_summary_matches(got: dict[str, float], expected: dict[str, float], what: str) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        # abs floor: an entropy of a rank-one-like matrix is ~1e-300-ish noise around 0
        assert got[name] == pytest.approx(value, rel=SUMMARY_RELATIVE, abs=1e-12), (what, name)


@PROPERTY
@given(x=matrices, dtype=st.sampled_from([torch.float64, torch.float32]))
def test_residual_summary_equals_svd_definition_and_public_functions(x: torch.Tensor, dtype) -> None:
    x = x.to(dtype)
    got = residual_summary(x).as_dict()
    assert_summary_matches(got, svd_definition(x), "svd")
    ent = matrix_entropy(x)
    c, alpha = queipo_c_alpha(x)
    public = {
        "bos_norm": bos_norm(x),
        "bos_ratio": bos_ratio(x),
        "queipo_c": c,
        "queipo_alpha": alpha,
        "entropy": ent.entropy,
        "entropy_normalized": ent.entropy_normalized,
        "anisotropy": ent.anisotropy,
        "mean_token_norm": float(token_norms(x).mean()),
    }
    assert_summary_matches(got, public, "public")


def test_residual_summary_at_model_scale_with_massive_bos() -> None:
    """One sequence of SmolLM2 shape (T = 512 <= d = 576: the T x T Gram) and one with T > d (the
    d x d Gram), BOS row ~1e4 x the others as at the spike layer: still 1e-6 of the SVD definition."""
    for t, d in ((512, 576), (700, 96)):
        x = random_matrix(7, t, d, massive=True).float()
        assert_summary_matches(residual_summary(x).as_dict(), svd_definition(x), f"{t}x{d}")


def test_residual_summaries_batched_and_threaded_equal_one_by_one() -> None:
    xs = [random_matrix(s, t, 20, massive=s % 2 == 0) for s, t in enumerate((5, 17, 30, 9, 2))]
    one = [residual_summary(x) for x in xs]
    assert residual_summaries(xs) == one
    assert residual_summaries(xs, workers=3) == one


def test_numpy_ready_only_for_float_cpu_tensors() -> None:
    assert engine_residual_stats.numpy_ready(torch.ones(2, 2))
    assert engine_residual_stats.numpy_ready(torch.ones(2, 2, dtype=torch.float64))
    assert not engine_residual_stats.numpy_ready(torch.ones(2, 2, dtype=torch.bfloat16))
    assert not engine_residual_stats.numpy_ready(torch.ones(2, 2, dtype=torch.int64))
    assert not engine_residual_stats.numpy_ready(np.ones((2, 2)))


@pytest.mark.parametrize(
    "bad,match",
    [
        (NAN_MATRIX, "non-finite"),
        (INF_MATRIX, "non-finite"),
        (torch.ones(4), "2-D"),
        (torch.ones(0, 3), "empty"),
        (torch.ones(1, 5), "at least 2 rows"),
        (torch.ones(3, 1), r"min\(T, d\)"),
        (torch.tensor([[0.0, 0.0], [1.0, 0.0]]), "BOS row x_0 is zero"),
        (torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "R = 0"),
        (torch.full((2, 2), 1e200, dtype=torch.float64), "overflow"),
    ],
    ids=["nan", "inf", "1d", "empty", "one_token", "one_column", "zero_bos", "zero_rest", "overflow"],
)
def test_residual_summary_rejects_what_the_definitions_reject(bad: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        residual_summary(bad)
