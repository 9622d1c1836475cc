"""book.multi_head: against torch.nn.MultiheadAttention, against separate heads, shapes and bad input."""
import pytest
import torch
from torch import nn

from book.attention import causal_mask
from book.multi_head import MultiHeadAttention, merge_heads, split_heads
from book.qkv import AttentionHead

TOL = 1e-5


def torch_twin(mha):
    bias = mha.q_proj.bias is not None
    twin = nn.MultiheadAttention(mha.d_model, mha.num_heads, bias=bias, batch_first=True)
    with torch.no_grad():
        twin.in_proj_weight.copy_(torch.cat([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight]))
        twin.out_proj.weight.copy_(mha.out_proj.weight)
        if bias:
            twin.in_proj_bias.copy_(torch.cat([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias]))
            twin.out_proj.bias.copy_(mha.out_proj.bias)
    return twin.eval()


def lengths_keep(lengths, size):
    return torch.arange(size) < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("batch,t_q,t_k,d_model,heads", [(1, 1, 1, 4, 1), (2, 5, 5, 16, 4), (3, 4, 9, 24, 6), (2, 7, 3, 8, 8)])
@pytest.mark.parametrize("kind", ["none", "causal", "padding", "arbitrary", "causal+padding"])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch(batch, t_q, t_k, d_model, heads, kind, bias):
    torch.manual_seed(batch * 100 + t_q * 10 + t_k)
    self_attention = kind.startswith("causal")
    if self_attention:
        t_k = t_q
    mha = MultiHeadAttention(d_model, heads, bias=bias)
    twin = torch_twin(mha)
    query = torch.randn(batch, t_q, d_model)
    source = query if self_attention else torch.randn(batch, t_k, d_model)
    keep = lengths_keep([max(1, t_k - i) for i in range(batch)], t_k)  # at least the first key is real
    if kind == "none":
        mask, theirs_kwargs = None, {}
    elif kind == "causal":
        mask, theirs_kwargs = causal_mask(t_q), {"attn_mask": ~causal_mask(t_q)}
    elif kind == "padding":
        mask, theirs_kwargs = keep[:, None, :], {"key_padding_mask": ~keep}
    elif kind == "causal+padding":
        mask = causal_mask(t_q) & keep[:, None, :]
        theirs_kwargs = {"attn_mask": ~causal_mask(t_q), "key_padding_mask": ~keep}
    else:
        mask = torch.rand(batch, t_q, t_k) < 0.5
        mask[..., torch.randint(t_k, ())] = True
        theirs_kwargs = {"attn_mask": (~mask).repeat_interleave(heads, dim=0)}
    ours = mha(query, source, source, mask)
    theirs, their_weights = twin(query, source, source, average_attn_weights=False, **theirs_kwargs)
    assert ours.shape == (batch, t_q, d_model)
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)
    torch.testing.assert_close(mha.attention_weights, their_weights, atol=TOL, rtol=0)


def test_gradients_match_torch():
    torch.manual_seed(1)
    mha = MultiHeadAttention(12, 3)
    twin = torch_twin(mha)
    x = torch.randn(2, 5, 12, requires_grad=True)
    x_twin = x.detach().clone().requires_grad_()
    mha(x, x, x, causal_mask(5)).square().sum().backward()
    twin(x_twin, x_twin, x_twin, attn_mask=~causal_mask(5))[0].square().sum().backward()
    torch.testing.assert_close(x.grad, x_twin.grad, atol=TOL, rtol=0)
    torch.testing.assert_close(mha.out_proj.weight.grad, twin.out_proj.weight.grad, atol=TOL, rtol=0)


def separate_heads_output(mha, query, key, value, mask):
    outputs, weights = [], []
    for i in range(mha.num_heads):
        head = AttentionHead(mha.d_model, mha.d_k, mha.d_v, bias=mha.q_proj.bias is not None)
        qk, v = slice(i * mha.d_k, (i + 1) * mha.d_k), slice(i * mha.d_v, (i + 1) * mha.d_v)
        with torch.no_grad():
            for small, big, rows in ((head.q_proj, mha.q_proj, qk), (head.k_proj, mha.k_proj, qk), (head.v_proj, mha.v_proj, v)):
                small.weight.copy_(big.weight[rows])
                if big.bias is not None:
                    small.bias.copy_(big.bias[rows])
        outputs.append(head(query, key, value, mask))
        weights.append(head.attention_weights)
    return mha.out_proj(torch.cat(outputs, dim=-1)), torch.stack(weights, dim=1)


@pytest.mark.parametrize("d_model,heads,d_k,d_v", [(16, 4, None, None), (16, 4, 3, 5), (10, 3, 7, 2), (8, 1, 8, 8), (6, 5, 1, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_separate_heads(d_model, heads, d_k, d_v, bias):
    torch.manual_seed(heads)
    mha = MultiHeadAttention(d_model, heads, d_k=d_k, d_v=d_v, bias=bias)
    query, memory = torch.randn(2, 4, d_model), torch.randn(2, 6, d_model)
    mask = torch.rand(2, 4, 6) < 0.6
    ours = mha(query, memory, memory, mask)
    looped, looped_weights = separate_heads_output(mha, query, memory, memory, mask)
    torch.testing.assert_close(ours, looped, atol=1e-6, rtol=0)
    torch.testing.assert_close(mha.attention_weights, looped_weights, atol=1e-6, rtol=0)


def test_custom_dk_dv_shapes():
    mha = MultiHeadAttention(12, 4, d_k=5, d_v=7)
    assert (mha.d_k, mha.d_v) == (5, 7)
    assert mha.q_proj.weight.shape == (20, 12) and mha.k_proj.weight.shape == (20, 12)
    assert mha.v_proj.weight.shape == (28, 12) and mha.out_proj.weight.shape == (12, 28)
    # Explicit widths make any number of heads possible.
    y = MultiHeadAttention(10, 3, d_k=4, d_v=4)(torch.randn(2, 3, 10), torch.randn(2, 5, 10), torch.randn(2, 5, 10))
    assert y.shape == (2, 3, 10)


def test_defaults_follow_the_paper():
    mha = MultiHeadAttention(512, 8)
    assert (mha.d_k, mha.d_v) == (64, 64)
    assert all(isinstance(m, nn.Linear) for m in (mha.q_proj, mha.k_proj, mha.v_proj, mha.out_proj))
    assert sum(p.numel() for p in mha.parameters()) == 4 * 512 * 512 + 4 * 512


def test_attention_weights_shape_and_detached():
    mha = MultiHeadAttention(8, 2)
    assert mha.attention_weights is None
    query, memory = torch.randn(3, 4, 8, requires_grad=True), torch.randn(3, 6, 8)
    mha(query, memory, memory)
    weights = mha.attention_weights
    assert weights.shape == (3, 2, 4, 6)
    assert not weights.requires_grad and weights.grad_fn is None
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 4))
    mha(query[:1, :2], memory[:1], memory[:1])
    assert mha.attention_weights.shape == (1, 2, 2, 6)  # replaced after each call


@pytest.mark.parametrize("shape", [(6,), (4, 6), (1, 4, 6), (3, 1, 6), (3, 4, 1), (3, 4, 6), (1, 1)])
def test_mask_broadcasts_like_its_full_form(shape):
    torch.manual_seed(2)
    mha = MultiHeadAttention(8, 2)
    query, memory = torch.randn(3, 4, 8), torch.randn(3, 6, 8)
    mask = torch.rand(shape) < 0.7
    mask[..., 0] = True
    full = mask.expand(3, 4, 6) if mask.dim() == 3 else mask.reshape((1,) * (3 - mask.dim()) + shape).expand(3, 4, 6)
    torch.testing.assert_close(mha(query, memory, memory, mask), mha(query, memory, memory, full.clone()))
    # Masked keys get zero weight in every head.
    assert (mha.attention_weights.masked_select(~full[:, None].expand(3, 2, 4, 6)) == 0).all()


def test_query_with_no_allowed_key_gets_zeros_not_nan():
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(1, 3, 8)
    mask = torch.ones(1, 3, 3, dtype=torch.bool)
    mask[0, 2] = False
    y = mha(x, x, x, mask)
    assert torch.isfinite(y).all()
    assert (mha.attention_weights[0, :, 2] == 0).all()


def test_dropout_only_in_training():
    torch.manual_seed(3)
    mha = MultiHeadAttention(16, 4, dropout=0.5)
    plain = MultiHeadAttention(16, 4)
    plain.load_state_dict(mha.state_dict())
    x = torch.randn(2, 6, 16)
    mha.eval()
    torch.testing.assert_close(mha(x, x, x), plain(x, x, x))
    mha.train()
    first, second = mha(x, x, x), mha(x, x, x)
    assert not torch.allclose(first, second)
    # The stored weights are the ones before dropout: rows still sum to 1.
    torch.testing.assert_close(mha.attention_weights.sum(-1), torch.ones(2, 4, 6))


def test_backward_reaches_every_parameter():
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 4, 8)
    mha(x, x, x, causal_mask(4)).sum().backward()
    for name, p in mha.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_split_and_merge_heads():
    x = torch.arange(2 * 3 * 12.0).view(2, 3, 12)
    heads = split_heads(x, 4)
    assert heads.shape == (2, 4, 3, 3)
    assert torch.equal(heads[1, 2, 0], x[1, 0, 6:9])
    assert torch.equal(merge_heads(heads), x)
    with pytest.raises(ValueError, match="num_heads=5"):
        split_heads(x, 5)
    with pytest.raises(ValueError, match=r"\(2, 3, 12\)"):
        merge_heads(x)


def test_not_divisible_names_the_numbers():
    with pytest.raises(ValueError, match=r"d_model=10 is not divisible by num_heads=4"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match=r"d_model=10 is not divisible by num_heads=4"):
        MultiHeadAttention(10, 4, d_k=3)  # d_v would still default to 10 // 4


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"d_model": 0, "num_heads": 1}, "d_model"),
        ({"d_model": 8, "num_heads": 0}, "num_heads"),
        ({"d_model": 8.0, "num_heads": 2}, "d_model"),
        ({"d_model": 8, "num_heads": 2, "d_k": 0}, "d_k"),
        ({"d_model": 8, "num_heads": 2, "d_v": -1}, "d_v"),
        ({"d_model": 8, "num_heads": 2, "dropout": 1.0}, "dropout"),
        ({"d_model": 8, "num_heads": 2, "dropout": -0.1}, "dropout"),
    ],
)
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(**kwargs)


def test_bad_inputs_name_the_shapes():
    mha = MultiHeadAttention(8, 2)
    good = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match=r"query .*d_model=8.*\(2, 4, 6\)"):
        mha(torch.randn(2, 4, 6), good, good)
    with pytest.raises(ValueError, match=r"value .*\(4, 8\)"):
        mha(good, good, torch.randn(4, 8))
    with pytest.raises(ValueError, match="batch size"):
        mha(good, torch.randn(3, 4, 8), torch.randn(3, 4, 8))
    with pytest.raises(ValueError, match="length"):
        mha(good, torch.randn(2, 5, 8), torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match=r"\(5, 5\) does not broadcast to \(batch, T_q, T_k\) = \(2, 4, 4\)"):
        mha(good, good, good, causal_mask(5))
    with pytest.raises(ValueError, match="bool"):
        mha(good, good, good, torch.ones(4, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        mha(good, good, good, torch.ones(2, 1, 4, 4, dtype=torch.bool))


def test_store_weights_can_be_switched_off():
    torch.manual_seed(4)
    x = torch.randn(2, 5, 8)
    keeping = MultiHeadAttention(8, 2)
    assert keeping.store_weights is True  # the default keeps them, as before
    skipping = MultiHeadAttention(8, 2, store_weights=False)
    skipping.load_state_dict(keeping.state_dict())
    torch.testing.assert_close(skipping(x, x, x, causal_mask(5)), keeping(x, x, x, causal_mask(5)), atol=0, rtol=0)
    assert skipping.attention_weights is None and keeping.attention_weights.shape == (2, 2, 5, 5)
    # Switching off on a module that kept weights drops the stale ones at the next call; on again keeps them.
    keeping.store_weights = False
    keeping(x, x, x)
    assert keeping.attention_weights is None
    keeping.store_weights = True
    keeping(x[:1], x[:1], x[:1])
    assert keeping.attention_weights.shape == (1, 2, 5, 5)
    # Gradients are unaffected.
    skipping(x, x, x).sum().backward()
    assert all(p.grad is not None for p in skipping.parameters())


def mha_gradient_pairs(ours, theirs):
    """(name, our gradient, torch's gradient) for every parameter of a MultiHeadAttention and its torch twin."""
    packed_weight = theirs.in_proj_weight.grad.chunk(3)
    packed_bias = theirs.in_proj_bias.grad.chunk(3)
    for name, proj, weight, bias in zip("qkv", (ours.q_proj, ours.k_proj, ours.v_proj), packed_weight, packed_bias):
        yield f"{name}_proj.weight", proj.weight.grad, weight
        yield f"{name}_proj.bias", proj.bias.grad, bias
    yield "out_proj.weight", ours.out_proj.weight.grad, theirs.out_proj.weight.grad
    yield "out_proj.bias", ours.out_proj.bias.grad, theirs.out_proj.bias.grad


GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-4  # float32: gradients agree to rounding


@pytest.mark.parametrize("kind", ["self, causal", "self, padding", "cross, padding", "cross, arbitrary"])
def test_every_gradient_matches_torch_in_training(kind):
    """Train mode, dropout 0: the gradients of the inputs and of every parameter equal torch's."""
    torch.manual_seed(7)
    batch, t_q, t_k, d_model, heads = 3, 5, 7, 12, 3
    mha = MultiHeadAttention(d_model, heads, dropout=0.0).train()
    twin = torch_twin(mha).train()
    self_attention = kind.startswith("self")
    t_k = t_q if self_attention else t_k
    query = torch.randn(batch, t_q, d_model, requires_grad=True)
    memory = query if self_attention else torch.randn(batch, t_k, d_model, requires_grad=True)
    keep = lengths_keep([t_k, t_k - 2, 1], t_k)
    if kind == "self, causal":
        mask, theirs_kwargs = causal_mask(t_q), {"attn_mask": ~causal_mask(t_q)}
    elif kind.endswith("padding"):
        mask, theirs_kwargs = keep[:, None, :], {"key_padding_mask": ~keep}
    else:
        mask = torch.rand(batch, t_q, t_k) < 0.5
        mask[..., 0] = True
        theirs_kwargs = {"attn_mask": (~mask).repeat_interleave(heads, dim=0)}
    query_twin = query.detach().clone().requires_grad_()
    memory_twin = query_twin if self_attention else memory.detach().clone().requires_grad_()
    upstream = torch.randn(batch, t_q, d_model)  # a different gradient for every output element
    (mha(query, memory, memory, mask) * upstream).sum().backward()
    (twin(query_twin, memory_twin, memory_twin, **theirs_kwargs)[0] * upstream).sum().backward()
    torch.testing.assert_close(query.grad, query_twin.grad, atol=GRAD_ATOL, rtol=GRAD_RTOL)
    if not self_attention:
        torch.testing.assert_close(memory.grad, memory_twin.grad, atol=GRAD_ATOL, rtol=GRAD_RTOL)
    for name, ours, theirs in mha_gradient_pairs(mha, twin):
        torch.testing.assert_close(ours, theirs, atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=lambda m: f"{name}: {m}")


def test_gradient_check_can_fail():
    """The comparison notices a gradient that differs: here, heads whose key slices were swapped."""
    torch.manual_seed(8)
    mha = MultiHeadAttention(8, 2, dropout=0.0)
    twin = torch_twin(mha).train()
    with torch.no_grad():
        mha.k_proj.weight.copy_(mha.k_proj.weight.roll(4, dims=0))
    x = torch.randn(2, 4, 8)
    mha(x, x, x).square().sum().backward()
    twin(x, x, x)[0].square().sum().backward()
    differs = [name for name, ours, theirs in mha_gradient_pairs(mha, twin)
               if not torch.allclose(ours, theirs, atol=GRAD_ATOL, rtol=GRAD_RTOL)]
    assert differs
