"""book.attention against PyTorch's own softmax and scaled dot-product attention."""
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from book.attention import causal_mask, padding_mask, scaled_dot_product_attention, softmax

TOLERANCE = {torch.float32: dict(atol=1e-6, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-10)}
BATCHES = [(), (3,), (2, 3)]


def random_case(seed, dtype, batch, mask_kind):
    """Random query, key, value and bool mask; every query keeps at least one allowed key.

    Mask shapes are named with B for all of ``batch``: with batch (2, 3),
    "(B, 1, T_k)" is (2, 3, 1, T_k).
    """
    gen = torch.Generator().manual_seed(seed)
    t_q, t_k = torch.randint(1, 8, (2,), generator=gen).tolist()
    d_k, d_v = torch.randint(1, 33, (2,), generator=gen).tolist()
    query = torch.randn(*batch, t_q, d_k, generator=gen, dtype=dtype)
    key = torch.randn(*batch, t_k, d_k, generator=gen, dtype=dtype)
    value = torch.randn(*batch, t_k, d_v, generator=gen, dtype=dtype)
    shape = {
        None: None,
        "(T_q, T_k)": (t_q, t_k),
        "(B, 1, T_k)": (*batch, 1, t_k),
        "(B, T_q, T_k)": (*batch, t_q, t_k),
        "(B, 1, 1, T_k)": (*batch[:-1], 1, 1, t_k),  # as multi-head attention broadcasts over heads
    }[mask_kind]
    mask = None
    if shape is not None:
        mask = torch.rand(shape, generator=gen) < 0.6
        mask[..., 0] = True  # rows with no allowed key are tested separately
    return query, key, value, mask


# ---------------------------------------------------------------- softmax

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 50.0, 1e4, 1e30])
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_softmax_matches_torch(dtype, scale, dim):
    x = scale * torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(1), dtype=dtype)
    ours = softmax(x, dim=dim)
    assert ours.dtype == dtype and ours.shape == x.shape
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, torch.softmax(x, dim=dim), **TOLERANCE[dtype])
    torch.testing.assert_close(ours.sum(dim=dim), torch.ones_like(ours.sum(dim=dim)))


def test_softmax_huge_logits_where_the_literal_formula_overflows():
    x = torch.tensor([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]])
    assert torch.isnan(torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)).any()  # the literal formula fails
    expected = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), dim=-1)
    torch.testing.assert_close(softmax(x)[0], expected)
    torch.testing.assert_close(softmax(x)[1], expected.flip(0))


def test_softmax_gradient_matches_torch():
    x = 30 * torch.randn(4, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    upstream = torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    (softmax(x1) * upstream).sum().backward()
    (torch.softmax(x2, dim=-1) * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("upstream_scale", [1.0, 1e6])
def test_softmax_all_minus_inf_row_is_zero_with_zero_gradient(dtype, upstream_scale):
    x = torch.tensor([[0.5, -1.0, float("-inf")], [float("-inf")] * 3], dtype=dtype, requires_grad=True)
    y = softmax(x)
    assert torch.equal(y[1], torch.zeros(3, dtype=dtype))
    torch.testing.assert_close(y[0], torch.softmax(x[0].detach(), dim=-1))
    (upstream_scale * y).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[1], torch.zeros(3, dtype=dtype))


def test_softmax_rejects_integer_input():
    with pytest.raises(ValueError, match="floating-point.*int64"):
        softmax(torch.arange(3))


@pytest.mark.parametrize("dim", [2, -3, 1.0])
def test_softmax_rejects_an_axis_the_tensor_does_not_have(dim):
    with pytest.raises(ValueError, match=rf"dim={dim}.*\(2, 3\)"):
        softmax(torch.randn(2, 3), dim=dim)


def test_softmax_of_a_scalar_is_one_like_torch():
    assert softmax(torch.tensor(2.0)) == torch.softmax(torch.tensor(2.0), -1) == 1.0


@pytest.mark.parametrize("dtype", [torch.long, torch.bool])
def test_attention_rejects_inputs_that_are_not_floating_point(dtype):
    x = torch.ones(1, 2, 3, dtype=dtype)
    with pytest.raises(ValueError, match=f"floating-point dtype, got {dtype}"):
        scaled_dot_product_attention(x, x, x)


def test_softmax_of_an_empty_axis_is_empty():
    x = torch.empty(2, 0)
    assert softmax(x).shape == (2, 0) and torch.softmax(x, -1).shape == (2, 0)


# ---------------------------------------------------------------- attention vs torch

MASK_CASES = [(batch, kind) for batch in BATCHES
              for kind in [None, "(T_q, T_k)", "(B, 1, T_k)", "(B, T_q, T_k)", "(B, 1, 1, T_k)"]
              if kind != "(B, 1, 1, T_k)" or len(batch) == 2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch, mask_kind", MASK_CASES, ids=lambda x: str(x))
@pytest.mark.parametrize("seed", range(8))
def test_attention_matches_torch(dtype, batch, mask_kind, seed):
    query, key, value, mask = random_case(seed, dtype, batch, mask_kind)
    output, weights = scaled_dot_product_attention(query, key, value, mask)
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    assert output.shape == expected.shape == (*batch, query.size(-2), value.size(-1))
    assert weights.shape == (*batch, query.size(-2), key.size(-2))
    assert output.dtype == weights.dtype == dtype
    torch.testing.assert_close(output, expected, **TOLERANCE[dtype])
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)), **TOLERANCE[dtype])
    if mask is not None:
        assert (weights.masked_select(~mask.expand_as(weights)) == 0).all()


@pytest.mark.parametrize("seed", range(4))
def test_attention_gradients_match_torch(seed):
    tensors = random_case(seed, torch.float64, (2, 3), "(B, T_q, T_k)")
    ours = [t.clone().requires_grad_() for t in tensors[:3]]
    theirs = [t.clone().requires_grad_() for t in tensors[:3]]
    upstream = torch.randn(2, 3, tensors[0].size(-2), tensors[2].size(-1), dtype=torch.float64)
    (scaled_dot_product_attention(*ours, tensors[3])[0] * upstream).sum().backward()
    (F.scaled_dot_product_attention(*theirs, attn_mask=tensors[3]) * upstream).sum().backward()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad)


def test_weights_match_the_formula():
    gen = torch.Generator().manual_seed(4)
    query, key = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 5, 4, generator=gen)
    value = torch.randn(2, 5, 6, generator=gen)
    _, weights = scaled_dot_product_attention(query, key, value)
    expected = torch.softmax(query @ key.transpose(-2, -1) / math.sqrt(4), dim=-1)
    torch.testing.assert_close(weights, expected)


def test_hand_worked_example():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    query = torch.tensor([[2.0, 0.0]]) * math.sqrt(2)  # cancels the 1/sqrt(d_k): scores 2, 0, -2
    output, weights = scaled_dot_product_attention(query, keys, values)
    e = [math.exp(2), 1.0, math.exp(-2)]
    expected = torch.tensor([[x / sum(e) for x in e]])
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(output, expected @ values)


def test_shared_keys_broadcast_over_the_batch():
    gen = torch.Generator().manual_seed(5)
    query = torch.randn(4, 3, 8, generator=gen)
    key, value = torch.randn(5, 8, generator=gen), torch.randn(5, 2, generator=gen)
    output, weights = scaled_dot_product_attention(query, key, value)
    expected, _ = scaled_dot_product_attention(query, key.expand(4, 5, 8), value.expand(4, 5, 2))
    assert output.shape == (4, 3, 2) and weights.shape == (4, 3, 5)
    torch.testing.assert_close(output, expected)


def test_dropout_acts_on_the_mixing_weights_only():
    gen = torch.Generator().manual_seed(6)
    query, key, value = (torch.randn(2, 3, 4, generator=gen) for _ in range(3))
    plain_out, plain_w = scaled_dot_product_attention(query, key, value)
    out, w = scaled_dot_product_attention(query, key, value, dropout=lambda x: 2 * x)
    torch.testing.assert_close(w, plain_w)  # returned weights are before dropout
    torch.testing.assert_close(out, 2 * plain_out)
    dropout = torch.nn.Dropout(0.5).eval()
    torch.testing.assert_close(scaled_dot_product_attention(query, key, value, dropout=dropout)[0], plain_out)


# ---------------------------------------------------------------- queries with no allowed key

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fully_masked_row_gives_zeros_and_no_nan(dtype):
    gen = torch.Generator().manual_seed(7)
    query = torch.randn(2, 4, 3, generator=gen, dtype=dtype, requires_grad=True)
    key = torch.randn(2, 5, 3, generator=gen, dtype=dtype, requires_grad=True)
    value = torch.randn(2, 5, 6, generator=gen, dtype=dtype, requires_grad=True)
    mask = torch.rand(2, 4, 5, generator=gen) < 0.5
    mask[:, :, 0] = True
    mask[0, 1] = False  # query 1 of item 0 may attend to nothing
    mask[1, 3] = False
    output, weights = scaled_dot_product_attention(query, key, value, mask)
    for b, i in [(0, 1), (1, 3)]:
        assert torch.equal(weights[b, i], torch.zeros(5, dtype=dtype))
        assert torch.equal(output[b, i], torch.zeros(6, dtype=dtype))
    expected = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    torch.testing.assert_close(output, expected, **TOLERANCE[dtype])
    (1e6 * output).sum().backward()  # a large upstream gradient must not overflow into NaN
    for tensor in (query, key, value):
        assert torch.isfinite(tensor.grad).all()
    assert torch.equal(query.grad[0, 1], torch.zeros(3, dtype=dtype))


def test_everything_masked_gives_all_zeros():
    query, key, value = torch.randn(3, 2), torch.randn(4, 2), torch.randn(4, 5)
    output, weights = scaled_dot_product_attention(query, key, value, torch.zeros(3, 4, dtype=torch.bool))
    assert torch.equal(output, torch.zeros(3, 5)) and torch.equal(weights, torch.zeros(3, 4))


def test_left_padding_with_causal_mask_has_no_nan():
    tokens = torch.tensor([[0, 0, 3, 8], [5, 6, 7, 8]])
    mask = padding_mask(tokens, 0) & causal_mask(4)
    x = torch.randn(2, 4, 8, requires_grad=True)
    output, weights = scaled_dot_product_attention(x, x, x, mask)
    output.sum().backward()
    assert not torch.isnan(output).any() and not torch.isnan(x.grad).any()
    assert torch.equal(weights[0, :2], torch.zeros(2, 4))
    torch.testing.assert_close(weights[0, 2:].sum(-1), torch.ones(2))


# ---------------------------------------------------------------- masks

@pytest.mark.parametrize("size", [1, 2, 5])
def test_causal_mask(size):
    mask = causal_mask(size)
    assert mask.dtype == torch.bool and mask.shape == (size, size)
    for i in range(size):
        for j in range(size):
            assert bool(mask[i, j]) == (j <= i)


def test_causal_mask_device_and_integer_like_sizes():
    assert causal_mask(3, device="cpu").device.type == "cpu"
    assert torch.equal(causal_mask(np.int64(3)), causal_mask(torch.tensor(3)))


@pytest.mark.parametrize("size", [0, -2, 2.5, "3", None])
def test_causal_mask_rejects_bad_sizes(size):
    with pytest.raises(ValueError, match=re.escape(repr(size) if not isinstance(size, int) else str(size))):
        causal_mask(size)


def test_causal_mask_blocks_the_future():
    # Changing later values must not change earlier outputs.
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(1, 6, 4, generator=gen)
    y = x.clone()
    y[:, 4:] += 10
    out_x, _ = scaled_dot_product_attention(x, x, x, causal_mask(6))
    out_y, _ = scaled_dot_product_attention(y, y, y, causal_mask(6))
    torch.testing.assert_close(out_x[:, :4], out_y[:, :4])
    assert not torch.allclose(out_x[:, 4:], out_y[:, 4:])


def test_padding_mask():
    tokens = torch.tensor([[5, 6, 0, 0], [7, 0, 8, 9]])
    mask = padding_mask(tokens, 0)
    assert mask.dtype == torch.bool and mask.shape == (2, 1, 4)
    assert mask[:, 0].tolist() == [[True, True, False, False], [True, False, True, True]]
    assert padding_mask(tokens, 5)[:, 0].tolist() == [[False, True, True, True], [True, True, True, True]]


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4)])
def test_padding_mask_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        padding_mask(torch.zeros(shape, dtype=torch.long), 0)


def test_masks_combine_by_broadcasting():
    tokens = torch.tensor([[1, 2, 0], [3, 0, 0]])
    mask = padding_mask(tokens, 0) & causal_mask(3)
    assert mask.shape == (2, 3, 3)
    assert mask[1].tolist() == [[True, False, False], [True, False, False], [True, False, False]]


# ---------------------------------------------------------------- bad input

def _raises_naming(shapes, *args, **kwargs):
    with pytest.raises(ValueError) as info:
        scaled_dot_product_attention(*args, **kwargs)
    for shape in shapes:
        assert str(shape) in str(info.value), (shape, str(info.value))
    return str(info.value)


def test_width_mismatch():
    message = _raises_naming([(2, 5, 4), (2, 6, 3)], torch.randn(2, 5, 4), torch.randn(2, 6, 3), torch.randn(2, 6, 7))
    assert "d_k=4" in message


def test_length_mismatch():
    message = _raises_naming([(2, 6, 4), (2, 7, 3)], torch.randn(2, 5, 4), torch.randn(2, 6, 4), torch.randn(2, 7, 3))
    assert "T_k=6" in message


@pytest.mark.parametrize("mask_shape", [(5, 7), (6, 5), (3, 5, 6), (2, 1, 1, 6)])
def test_mask_that_does_not_broadcast(mask_shape):
    q, k, v = torch.randn(2, 5, 4), torch.randn(2, 6, 4), torch.randn(2, 6, 3)
    _raises_naming([mask_shape, (2, 5, 6)], q, k, v, torch.ones(mask_shape, dtype=torch.bool))


@pytest.mark.parametrize("mask", [torch.ones(5, 6), torch.ones(5, 6, dtype=torch.long), np.ones((5, 6), dtype=bool)])
def test_non_bool_mask(mask):
    q, k, v = torch.randn(2, 5, 4), torch.randn(2, 6, 4), torch.randn(2, 6, 3)
    message = _raises_naming([], q, k, v, mask)
    assert "bool" in message and str(getattr(mask, "dtype", "")) in message


def test_too_few_dimensions():
    _raises_naming([(4,), (6, 4), (6, 3)], torch.randn(4), torch.randn(6, 4), torch.randn(6, 3))


def test_batch_dimensions_that_do_not_broadcast():
    _raises_naming([(2, 5, 4), (3, 6, 4), (3, 6, 2)], torch.randn(2, 5, 4), torch.randn(3, 6, 4), torch.randn(3, 6, 2))


def test_dtype_mismatch():
    message = _raises_naming([], torch.randn(5, 4), torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 3))
    assert "torch.float32" in message and "torch.float64" in message


def test_zero_width():
    _raises_naming([(5, 0)], torch.randn(5, 0), torch.randn(6, 0), torch.randn(6, 3))


# ---------------------------------------------------------------- half precision

# Four units in the last place of the output's dtype: float16 keeps 11 significant bits, bfloat16 8.
HALF_TOLERANCE = {dtype: dict(atol=4 * torch.finfo(dtype).eps, rtol=4 * torch.finfo(dtype).eps)
                  for dtype in (torch.float16, torch.bfloat16)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", range(5))
def test_half_precision_matches_torch(dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(2, 3, 7, 32, generator=gen).to(dtype)
    key = torch.randn(2, 3, 9, 32, generator=gen).to(dtype)
    value = torch.randn(2, 3, 9, 16, generator=gen).to(dtype)
    mask = torch.rand(2, 1, 7, 9, generator=gen) < 0.6
    mask[..., 0] = True
    output, weights = scaled_dot_product_attention(query, key, value, mask)
    assert output.dtype == dtype and weights.dtype == dtype
    reference = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    torch.testing.assert_close(output, reference, **HALF_TOLERANCE[dtype])
    # And against the same inputs computed exactly (float64), rounded to the dtype.
    exact = F.scaled_dot_product_attention(query.double(), key.double(), value.double(), attn_mask=mask)
    torch.testing.assert_close(output, exact.to(dtype), **HALF_TOLERANCE[dtype])


def test_float16_scores_whose_product_overflows_before_scaling():
    # |q . k| reaches about 9.6e4 here, above float16's largest number 65504: dividing Q K^T by sqrt(d_k)
    # after the product gives inf, then NaN. Each query is its own key, so the weights are one-hot.
    x = 35 * torch.randn(6, 64, generator=torch.Generator().manual_seed(1))
    assert (x @ x.T).abs().max() > torch.finfo(torch.float16).max
    query = key = x.half()
    value = torch.randn(6, 8, generator=torch.Generator().manual_seed(2)).half()
    output, weights = scaled_dot_product_attention(query, key, value)
    assert torch.isfinite(output).all() and torch.isfinite(weights).all()
    torch.testing.assert_close(weights, torch.eye(6, dtype=torch.float16))
    torch.testing.assert_close(output, F.scaled_dot_product_attention(query, key, value),
                               **HALF_TOLERANCE[torch.float16])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_softmax_keeps_its_dtype_and_computes_in_float32(dtype):
    x = 8 * torch.randn(4, 1000, generator=torch.Generator().manual_seed(3))
    ours = softmax(x.to(dtype))
    assert ours.dtype == dtype
    # Computed in float32 and rounded once: the float32 softmax of the same inputs, rounded.
    torch.testing.assert_close(ours, torch.softmax(x.to(dtype).float(), dim=-1).to(dtype), atol=0, rtol=0)
    masked = torch.full((2, 5), float("-inf"), dtype=dtype)
    assert (softmax(masked) == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gradients_are_finite_and_keep_the_dtype(dtype):
    gen = torch.Generator().manual_seed(4)
    query = torch.randn(2, 5, 16, generator=gen).to(dtype).requires_grad_()
    key, value = torch.randn(2, 5, 16, generator=gen).to(dtype), torch.randn(2, 5, 8, generator=gen).to(dtype)
    output, _ = scaled_dot_product_attention(query, key, value, causal_mask(5))
    output.float().square().sum().backward()
    assert query.grad.dtype == dtype and torch.isfinite(query.grad).all()
