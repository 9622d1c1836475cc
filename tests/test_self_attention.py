"""Unit tests of book.self_attention (chapter 3)."""
import math

import pytest
import torch

from book.attention import causal_mask
from book.self_attention import positional_shift_matrix, self_attention, sinusoidal_positional_encoding


def test_self_attention_equals_torch_sdpa():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 7, 8)  # two batch dimensions
    out, weights = self_attention(x)
    expected = torch.nn.functional.scaled_dot_product_attention(x, x, x)
    assert out.shape == (3, 2, 7, 8) and weights.shape == (3, 2, 7, 7)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 7))


def test_self_attention_with_a_mask_equals_torch_sdpa():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 4)
    mask = causal_mask(5)
    out, weights = self_attention(x, mask)
    expected = torch.nn.functional.scaled_dot_product_attention(x, x, x, attn_mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert torch.all(weights[:, ~mask] == 0)


def test_self_attention_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    _, weights = self_attention(x)
    e = math.exp(1 / math.sqrt(2))
    assert weights[0].tolist() == pytest.approx([e / (2 * e + 1), 1 / (2 * e + 1), e / (2 * e + 1)], abs=1e-6)


@pytest.mark.parametrize("bad", [torch.randn(5), torch.tensor(1.0), [[1.0, 2.0]]])
def test_self_attention_rejects_inputs_without_a_sequence_axis(bad):
    with pytest.raises(ValueError, match=r"\(\.\.\., T, D\)"):
        self_attention(bad)


def test_self_attention_rejects_a_mask_of_the_wrong_shape():
    with pytest.raises(ValueError, match="mask"):
        self_attention(torch.randn(2, 5, 4), causal_mask(4))


def test_positional_encoding_matches_the_formula():
    max_len, d_model = 50, 16
    pe = sinusoidal_positional_encoding(max_len, d_model)
    assert pe.shape == (max_len, d_model) and pe.dtype == torch.get_default_dtype()
    for p in (0, 1, 7, 49):
        for i in range(d_model // 2):
            angle = p / 10000 ** (2 * i / d_model)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_positional_encoding_is_exact_far_out_and_follows_the_default_dtype():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        pe = sinusoidal_positional_encoding(5001, 8)
    finally:
        torch.set_default_dtype(previous)
    assert pe.dtype == torch.float64
    assert pe[5000, 0].item() == pytest.approx(math.sin(5000.0), abs=1e-12)
    assert pe[5000, 3].item() == pytest.approx(math.cos(5000 / 10000 ** (2 / 8)), abs=1e-12)


def test_positional_encoding_rows_are_distinct_and_bounded():
    pe = sinusoidal_positional_encoding(500, 32)
    assert pe.abs().max() <= 1
    distances = torch.cdist(pe, pe) + torch.eye(500) * 10
    assert distances.min() > 0.1
    # Every row has the same length: one (sin, cos) pair per frequency.
    torch.testing.assert_close(pe.norm(dim=-1), torch.full((500,), math.sqrt(16)))


@pytest.mark.parametrize(
    "max_len, d_model", [(10, 7), (10, 0), (0, 8), (-3, 8), (10.0, 8), (10, 8.0), (True, 8), (10, None)]
)
def test_positional_encoding_rejects_bad_sizes(max_len, d_model):
    with pytest.raises(ValueError, match="max_len|d_model"):
        sinusoidal_positional_encoding(max_len, d_model)


@pytest.mark.parametrize("offset", [-30, -1, 0, 1, 5, 64])
def test_shift_matrix_moves_the_encoding_by_the_offset(offset):
    pe = sinusoidal_positional_encoding(200, 32)
    m = positional_shift_matrix(offset, 32)
    p = torch.arange(30, 130)
    torch.testing.assert_close(pe[p] @ m, pe[p + offset], atol=1e-5, rtol=0)


def test_shift_matrices_are_rotations_that_compose():
    m2, m3, m5 = (positional_shift_matrix(k, 16) for k in (2, 3, 5))
    torch.testing.assert_close(m2 @ m3, m5, atol=1e-6, rtol=0)
    torch.testing.assert_close(m5 @ m5.T, torch.eye(16), atol=1e-6, rtol=0)
    torch.testing.assert_close(positional_shift_matrix(0, 16), torch.eye(16))
    torch.testing.assert_close(positional_shift_matrix(-5, 16), m5.T, atol=1e-6, rtol=0)


@pytest.mark.parametrize("offset, d_model", [(1, 5), (1.5, 8), (1, 0), (None, 8)])
def test_shift_matrix_rejects_bad_arguments(offset, d_model):
    with pytest.raises(ValueError, match="offset|d_model"):
        positional_shift_matrix(offset, d_model)


def test_positions_break_permutation_equivariance():
    torch.manual_seed(2)
    x = torch.randn(6, 8)
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    plain, _ = self_attention(x[perm])
    torch.testing.assert_close(plain, self_attention(x)[0][perm], atol=1e-6, rtol=0)
    pe = sinusoidal_positional_encoding(6, 8)
    with_pe, _ = self_attention(x[perm] + pe)
    assert (with_pe - self_attention(x + pe)[0][perm]).abs().max() > 1e-2


@pytest.mark.parametrize("offset", [-1, -3, 2])
def test_a_shifted_query_finds_the_position_offset_away(offset):
    # PE(p) M_k equals PE(p + k); rows of equal length match themselves best, so the best key is p + k.
    pe = sinusoidal_positional_encoding(80, 64)
    query = pe @ positional_shift_matrix(offset, 64)
    best = (query @ pe.T).argmax(dim=-1)
    p = torch.arange(max(0, -offset), min(80, 80 - offset))
    assert torch.equal(best[p], p + offset)


def test_the_core_is_checked_before_it_runs():
    # The checks live after the core in the chapter; they must still run first.
    with pytest.raises(ValueError, match="max_len"):
        sinusoidal_positional_encoding(0, 8)
    with pytest.raises(ValueError, match="offset"):
        positional_shift_matrix(2.0, 8)
    with pytest.raises(ValueError, match="got list"):
        self_attention([[1.0, 2.0], [3.0, 4.0]])


def _paper_formula(pos, feature, d_model):
    # Section 3.5 of the paper, one entry at a time: sin or cos of pos / 10000^(2i / d_model), i = feature // 2.
    angle = pos / 10000 ** (2 * (feature // 2) / d_model)
    return math.sin(angle) if feature % 2 == 0 else math.cos(angle)


@pytest.mark.parametrize("max_len, d_model", [(200, 64), (7, 2), (60, 10)])
def test_every_entry_of_the_positional_encoding_is_the_papers_formula(max_len, d_model):
    pe = sinusoidal_positional_encoding(max_len, d_model)
    by_hand = torch.tensor([[_paper_formula(p, f, d_model) for f in range(d_model)] for p in range(max_len)],
                           dtype=torch.float64)
    # float32 rounding of entries in [-1, 1] is at most 6e-8.
    torch.testing.assert_close(pe.double(), by_hand, atol=1e-6, rtol=0)


def test_every_entry_in_float64_is_the_papers_formula_far_out():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        pe = sinusoidal_positional_encoding(2000, 16)
    finally:
        torch.set_default_dtype(previous)
    by_hand = torch.tensor([[_paper_formula(p, f, 16) for f in range(16)] for p in range(0, 2000, 37)],
                           dtype=torch.float64)
    torch.testing.assert_close(pe[::37], by_hand, atol=1e-10, rtol=0)
