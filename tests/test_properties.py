"""Property tests (hypothesis) of the attention components built so far.

Tensors are drawn from a seed and a few sizes, so each example is cheap; the
softmax test draws its values directly to reach the extremes of float32.
"""
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from book.attention import causal_mask, scaled_dot_product_attention, softmax
from book.multi_head import MultiHeadAttention
from book.residual import LayerNorm
from book.self_attention import self_attention

SETTINGS = settings(max_examples=40, deadline=None)


def randn(seed, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_mask(seed, *shape):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < 0.6


seeds = st.integers(0, 2**31 - 1)
sizes = st.integers(1, 6)
widths = st.integers(1, 8)


@st.composite
def float_rows(draw):
    """A (rows, cols) float32 matrix with values up to the float32 limits and some -inf."""
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    value = st.one_of(
        st.floats(width=32, allow_nan=False, allow_infinity=False),  # up to +-3.4e38
        st.floats(-100, 100, width=32),
        st.just(-math.inf),
    )
    return torch.tensor(draw(st.lists(st.lists(value, min_size=cols, max_size=cols), min_size=rows, max_size=rows)))


@SETTINGS
@given(x=float_rows())
def test_softmax_rows_sum_to_one_even_for_huge_values(x):
    p = softmax(x, dim=-1)
    assert torch.isfinite(p).all() and (p >= 0).all()
    has_finite = torch.isfinite(x).any(dim=-1)
    torch.testing.assert_close(p.sum(-1)[has_finite], torch.ones(int(has_finite.sum())))
    # A row with no finite entry is a query with nothing to attend to: all zeros, never NaN.
    assert (p[~has_finite] == 0).all()
    torch.testing.assert_close(p[has_finite], torch.softmax(x, dim=-1)[has_finite])


@SETTINGS
@given(seed=seeds, shape=st.tuples(sizes, sizes, sizes), scale=st.sampled_from([1.0, 1e4, 1e30]), dim=st.integers(-3, 2))
def test_softmax_sums_to_one_along_any_dim(seed, shape, scale, dim):
    p = softmax(randn(seed, *shape) * scale, dim=dim)
    torch.testing.assert_close(p.sum(dim), torch.ones_like(p.sum(dim)))


@SETTINGS
@given(seed=seeds, b=sizes, t_q=sizes, t_k=sizes, d=widths)
def test_masked_keys_get_zero_weight(seed, b, t_q, t_k, d):
    q, k, v = randn(seed, b, t_q, d), randn(seed + 1, b, t_k, d), randn(seed + 2, b, t_k, d)
    mask = random_mask(seed, b, t_q, t_k)
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert (weights[~mask] == 0).all()
    allowed = mask.any(-1)
    torch.testing.assert_close(weights.sum(-1)[allowed], torch.ones(int(allowed.sum())))
    # A query that may attend to nothing gets zero weights and a zero output.
    assert (out[~allowed] == 0).all() and torch.isfinite(out).all()


@SETTINGS
@given(seed=seeds, b=sizes, t=st.integers(2, 8), d=widths, data=st.data())
def test_causal_output_ignores_the_future(seed, b, t, d, data):
    i = data.draw(st.integers(0, t - 2), label="position")
    q, k, v = (randn(seed + n, b, t, d) for n in range(3))
    out, _ = scaled_dot_product_attention(q, k, v, causal_mask(t))
    changed_k, changed_v = k.clone(), v.clone()
    changed_k[:, i + 1:] = randn(seed + 3, b, t - i - 1, d) * 10
    changed_v[:, i + 1:] = randn(seed + 4, b, t - i - 1, d) * 10
    changed_out, _ = scaled_dot_product_attention(q, changed_k, changed_v, causal_mask(t))
    torch.testing.assert_close(changed_out[:, : i + 1], out[:, : i + 1], atol=1e-6, rtol=0)
    # The same through self-attention, where the future query rows change too.
    x = randn(seed + 5, b, t, d)
    changed_x = x.clone()
    changed_x[:, i + 1:] = randn(seed + 6, b, t - i - 1, d)
    torch.testing.assert_close(
        self_attention(changed_x, causal_mask(t))[0][:, : i + 1],
        self_attention(x, causal_mask(t))[0][:, : i + 1],
        atol=1e-6,
        rtol=0,
    )


@SETTINGS
@given(seed=seeds, b=sizes, d=widths, perm=st.integers(1, 8).flatmap(lambda t: st.permutations(range(t))))
def test_self_attention_without_positions_is_permutation_equivariant(seed, b, d, perm):
    perm = torch.tensor(perm)
    x = randn(seed, b, len(perm), d)
    out, weights = self_attention(x)
    out_perm, weights_perm = self_attention(x[:, perm])
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights_perm, weights[:, perm][:, :, perm], atol=1e-6, rtol=1e-5)


@SETTINGS
@given(seed=seeds, b=sizes, t_q=sizes, t_k=sizes, n_pad=st.integers(1, 5), d=widths)
def test_padded_keys_change_nothing(seed, b, t_q, t_k, n_pad, d):
    q, k, v = randn(seed, b, t_q, d), randn(seed + 1, b, t_k, d), randn(seed + 2, b, t_k, d)
    out, weights = scaled_dot_product_attention(q, k, v)
    # Padding vectors can hold anything, even large values: the mask must hide them.
    k_pad = torch.cat([k, randn(seed + 3, b, n_pad, d) * 100], dim=1)
    v_pad = torch.cat([v, randn(seed + 4, b, n_pad, d) * 100], dim=1)
    tokens = torch.cat([torch.ones(b, t_k, dtype=torch.long), torch.zeros(b, n_pad, dtype=torch.long)], dim=1)
    mask = (tokens != 0).unsqueeze(1)  # (B, 1, T_k + n_pad), as padding_mask builds it
    out_pad, weights_pad = scaled_dot_product_attention(q, k_pad, v_pad, mask)
    torch.testing.assert_close(out_pad, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights_pad[..., :t_k], weights, atol=1e-6, rtol=1e-5)
    assert (weights_pad[..., t_k:] == 0).all()


@settings(max_examples=10, deadline=None)
@given(seed=seeds, b=st.integers(1, 2), t_q=st.integers(1, 4), t_k=st.integers(1, 4), d=st.integers(1, 4))
def test_attention_passes_gradcheck_in_float64(seed, b, t_q, t_k, d):
    q, k, v = (randn(seed + n, b, t_q if n == 0 else t_k, d, dtype=torch.float64).requires_grad_() for n in range(3))
    mask = random_mask(seed, b, t_q, t_k)
    mask[..., 0] = True  # every query keeps one key, so the function is smooth everywhere
    assert torch.autograd.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v, mask)[0], (q, k, v))


@settings(max_examples=10, deadline=None)
@given(seed=seeds, shape=st.tuples(st.integers(1, 3), st.integers(1, 4)), d=st.integers(2, 6))
def test_layer_norm_passes_gradcheck_in_float64(seed, shape, d):
    norm = LayerNorm(d).double()
    with torch.no_grad():
        norm.weight.copy_(randn(seed + 1, d, dtype=torch.float64))
        norm.bias.copy_(randn(seed + 2, d, dtype=torch.float64))
    x = randn(seed, *shape, d, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(norm, (x,))
    # Through the learned scale and shift too.
    params = {name: p.detach().clone().requires_grad_() for name, p in norm.named_parameters()}
    assert torch.autograd.gradcheck(
        lambda weight, bias: torch.func.functional_call(norm, {"weight": weight, "bias": bias}, (x.detach(),)),
        (params["weight"], params["bias"]),
    )


shapes = st.lists(st.integers(0, 3), max_size=4).map(tuple)


@SETTINGS
@given(shapes=st.lists(shapes, min_size=1, max_size=3))
def test_attention_broadcast_rule_agrees_with_torch(shapes):
    # Attention checks shapes with its own plain-Python broadcasting rule: it must answer as torch does.
    from book.attention import _broadcast

    try:
        expected = tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        expected = None
    assert _broadcast(*shapes) == expected


@SETTINGS
@given(seed=seeds, b=st.integers(1, 3), t_q=sizes, t_k=sizes, heads=st.integers(1, 4), d_k=st.integers(1, 4),
       store=st.booleans())
def test_multi_head_permutes_with_its_queries_and_ignores_key_order(seed, b, t_q, t_k, heads, d_k, store):
    torch.manual_seed(seed)
    d_model = 4
    mha = MultiHeadAttention(d_model, heads, d_k=d_k, d_v=d_k, store_weights=store)
    query, memory = randn(seed, b, t_q, d_model), randn(seed + 1, b, t_k, d_model)
    mask = random_mask(seed, b, t_q, t_k)
    q_perm = torch.randperm(t_q, generator=torch.Generator().manual_seed(seed))
    k_perm = torch.randperm(t_k, generator=torch.Generator().manual_seed(seed + 1))
    out = mha(query, memory, memory, mask)
    weights = mha.attention_weights
    moved = mha(query[:, q_perm], memory[:, k_perm], memory[:, k_perm], mask[:, q_perm][:, :, k_perm])
    torch.testing.assert_close(moved, out[:, q_perm], atol=1e-5, rtol=1e-5)
    if store:
        torch.testing.assert_close(mha.attention_weights, weights[:, :, q_perm][..., k_perm], atol=1e-6, rtol=0)
    else:
        assert weights is None and mha.attention_weights is None
