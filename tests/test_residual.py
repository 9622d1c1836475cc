"""book.residual: LayerNorm and the encoder layer against torch.nn, Residual semantics, bad input."""
import pytest
import torch
from torch import nn

from book.attention import causal_mask
from book.residual import EncoderLayer, FeedForward, LayerNorm, Residual, layer_norm

TOL = 1e-5


def layer_norm_pair(d_model, eps, dtype=torch.float32):
    ours = LayerNorm(d_model, eps=eps).to(dtype)
    theirs = nn.LayerNorm(d_model, eps=eps).to(dtype)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(d_model))
        ours.bias.copy_(torch.randn(d_model))
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 8), (2, 1, 4, 16), (4, 512)])
@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.1])
@pytest.mark.parametrize("written_out", [False, True], ids=["module", "written_out"])
def test_layer_norm_matches_torch_values_and_gradients(shape, eps, written_out):
    # The module calls F.layer_norm; the written-out function is the chapter's own arithmetic.
    torch.manual_seed(len(shape) * 10 + shape[-1])
    ours, theirs = layer_norm_pair(shape[-1], eps)
    x = (2 * torch.randn(shape) - 1).requires_grad_()
    upstream = torch.randn(shape)
    results = []
    norms = ((lambda x: layer_norm(x, ours.weight, ours.bias, eps)) if written_out else ours, theirs)
    for norm, module in zip(norms, (ours, theirs)):
        y = norm(x)
        results.append((y, *torch.autograd.grad((y * upstream).sum(), (x, module.weight, module.bias))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def test_layer_norm_float64_and_large_offset():
    torch.manual_seed(0)
    ours, theirs = layer_norm_pair(32, 1e-5, dtype=torch.float64)
    x = torch.randn(4, 32, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-12, rtol=0)
    # A mean far from zero must not cost precision (the variance is computed around the mean).
    # E[x^2] - E[x]^2 in float32 would lose the variance entirely here.
    ours32 = LayerNorm(32)
    x = 1e4 + torch.randn(4, 32)
    exact = nn.functional.layer_norm(x.double(), (32,), eps=1e-5)
    torch.testing.assert_close(ours32(x).double(), exact, atol=1e-2, rtol=0)


def test_written_out_layer_norm_keeps_precision_far_from_zero():
    x = 1e4 + torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    exact = nn.functional.layer_norm(x.double(), (32,), eps=1e-5)
    torch.testing.assert_close(layer_norm(x, torch.ones(32), torch.zeros(32)).double(), exact, atol=1e-2, rtol=0)


def test_written_out_layer_norm_bad_input():
    with pytest.raises(ValueError, match=r"x \(2, 5\), weight \(4,\) and bias \(4,\)"):
        layer_norm(torch.randn(2, 5), torch.ones(4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"bias \(3,\)"):
        layer_norm(torch.randn(2, 4), torch.ones(4), torch.zeros(3))
    with pytest.raises(ValueError, match="float"):
        layer_norm(torch.randn(2, 4), torch.ones(4), 0.0)
    for eps in (0, -1.0):  # a constant row would divide 0 by 0
        with pytest.raises(ValueError, match=f"eps must be a positive number, got {eps}"):
            layer_norm(torch.ones(2, 4), torch.ones(4), torch.zeros(4), eps=eps)


def test_layer_norm_module_equals_the_written_out_function():
    torch.manual_seed(3)
    norm = LayerNorm(16, eps=1e-3)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
        norm.bias.copy_(torch.randn(16))
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(norm(x), layer_norm(x, norm.weight, norm.bias, eps=1e-3), atol=1e-5, rtol=0)


def test_layer_norm_statistics_and_parameters():
    norm = LayerNorm(6)
    assert torch.equal(norm.weight, torch.ones(6)) and torch.equal(norm.bias, torch.zeros(6))
    assert set(norm.state_dict()) == {"weight", "bias"}
    y = norm(torch.randn(3, 4, 6) * 5 + 3)
    torch.testing.assert_close(y.mean(-1), torch.zeros(3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(3, 4), atol=1e-3, rtol=0)
    # A constant vector normalizes to zeros (eps keeps it finite), so the output is the bias.
    assert torch.equal(norm(torch.full((2, 6), 3.0)), torch.zeros(2, 6))


def test_layer_norm_bad_input():
    with pytest.raises(ValueError, match=r"d_model=8.*\(2, 5\)"):
        LayerNorm(8)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="d_model"):
        LayerNorm(0)
    with pytest.raises(ValueError, match="eps"):
        LayerNorm(4, eps=0)
    with pytest.raises(ValueError, match="eps"):
        LayerNorm(4, eps=-1e-5)


def test_feed_forward_is_position_wise():
    torch.manual_seed(1)
    ffn = FeedForward(8, 32)
    x = torch.randn(3, 5, 8)
    y = ffn(x)
    assert y.shape == (3, 5, 8)
    torch.testing.assert_close(y[1, 2], ffn(x[1, 2]))
    expected = ffn.linear2(torch.relu(ffn.linear1(x)))
    torch.testing.assert_close(y, expected)
    assert sum(p.numel() for p in FeedForward(512, 2048).parameters()) == 2 * 512 * 2048 + 2048 + 512


def test_feed_forward_dropout_and_bad_input():
    ffn = FeedForward(8, 64, dropout=0.5)
    x = torch.randn(4, 8)
    ffn.eval()
    torch.testing.assert_close(ffn(x), ffn(x))
    ffn.train()
    assert not torch.allclose(ffn(x), ffn(x))
    with pytest.raises(ValueError, match=r"d_model=8.*\(4, 6\)"):
        ffn(torch.randn(4, 6))
    with pytest.raises(ValueError, match="d_ff"):
        FeedForward(8, 0)
    with pytest.raises(ValueError, match="dropout"):
        FeedForward(8, 16, dropout=1.5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_residual_formula(norm_first):
    torch.manual_seed(2)
    residual = Residual(6, norm_first=norm_first)
    with torch.no_grad():
        residual.norm.weight.uniform_(0.5, 1.5)
        residual.norm.bias.normal_()
    sublayer = nn.Linear(6, 6)
    x = torch.randn(2, 3, 6)
    expected = x + sublayer(residual.norm(x)) if norm_first else residual.norm(x + sublayer(x))
    torch.testing.assert_close(residual(x, sublayer), expected)


def test_residual_identity_path():
    x = torch.randn(2, 3, 4)
    # Pre-norm leaves the identity path alone; post-norm normalizes it.
    assert torch.equal(Residual(4, norm_first=True)(x, torch.zeros_like), x)
    torch.testing.assert_close(Residual(4)(x, torch.zeros_like), LayerNorm(4)(x))


def test_residual_sees_normalized_input_only_in_pre_norm():
    seen = []
    x = torch.randn(2, 3, 4) * 10 + 5
    for norm_first in (False, True):
        Residual(4, norm_first=norm_first)(x, lambda h: seen.append(h) or torch.zeros_like(h))
    assert torch.equal(seen[0], x)
    torch.testing.assert_close(seen[1], LayerNorm(4)(x))


def test_residual_dropout_only_in_training():
    residual = Residual(4, dropout=0.5, norm_first=True)
    x = torch.zeros(50, 4)
    ones = torch.ones_like
    residual.eval()
    assert torch.equal(residual(x, ones), torch.ones(50, 4))
    residual.train()
    out = residual(x, ones)
    assert set(out.unique().tolist()) <= {0.0, 2.0} and 0 < (out == 0).sum() < out.numel()


def test_residual_rejects_shape_changing_sublayer():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 3, 1\)"):
        Residual(4)(torch.randn(2, 3, 4), lambda h: h.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match="dropout"):
        Residual(4, dropout=-0.1)


def torch_twin(layer):
    attn, ffn = layer.self_attn, layer.feed_forward
    twin = nn.TransformerEncoderLayer(
        attn.d_model, attn.num_heads, ffn.linear1.out_features, dropout=0.1, activation="relu",
        batch_first=True, norm_first=layer.attn_residual.norm_first,
    )
    with torch.no_grad():
        twin.self_attn.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        twin.self_attn.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
    twin.self_attn.out_proj.load_state_dict(attn.out_proj.state_dict())
    twin.linear1.load_state_dict(ffn.linear1.state_dict())
    twin.linear2.load_state_dict(ffn.linear2.state_dict())
    twin.norm1.load_state_dict(layer.attn_residual.norm.state_dict())
    twin.norm2.load_state_dict(layer.ff_residual.norm.state_dict())
    return twin.eval()


def randomize_norms(layer):
    with torch.no_grad():
        for residual in (layer.attn_residual, layer.ff_residual):
            residual.norm.weight.uniform_(0.5, 1.5)
            residual.norm.bias.normal_(0, 0.1)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch,length,d_model,heads,d_ff", [(1, 1, 4, 1, 8), (3, 6, 16, 4, 32), (2, 9, 24, 3, 40)])
@pytest.mark.parametrize("mask_kind", ["none", "padding", "causal"])
def test_encoder_layer_matches_torch(norm_first, batch, length, d_model, heads, d_ff, mask_kind):
    torch.manual_seed(batch + length + d_model)
    layer = EncoderLayer(d_model, heads, d_ff, dropout=0.1, norm_first=norm_first).eval()
    randomize_norms(layer)
    twin = torch_twin(layer)
    x = torch.randn(batch, length, d_model)
    if mask_kind == "none":
        ours, theirs = layer(x), twin(x)
    elif mask_kind == "padding":
        keep = torch.arange(length) < torch.tensor([max(1, length - 2 * i) for i in range(batch)])[:, None]
        ours, theirs = layer(x, keep[:, None, :]), twin(x, src_key_padding_mask=~keep)
    else:
        ours, theirs = layer(x, causal_mask(length)), twin(x, src_mask=~causal_mask(length))
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_gradients_match_torch(norm_first):
    torch.manual_seed(5)
    layer = EncoderLayer(16, 4, 32, norm_first=norm_first)
    randomize_norms(layer)
    twin = torch_twin(layer)
    x = torch.randn(2, 5, 16, requires_grad=True)
    x_twin = x.detach().clone().requires_grad_()
    layer(x).square().sum().backward()
    twin(x_twin).square().sum().backward()
    torch.testing.assert_close(x.grad, x_twin.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(layer.feed_forward.linear1.weight.grad, twin.linear1.weight.grad, atol=1e-4, rtol=1e-4)


def test_encoder_layer_structure_and_options():
    layer = EncoderLayer(12, 3, 20, d_k=5, d_v=7)
    assert (layer.self_attn.d_k, layer.self_attn.d_v) == (5, 7)
    assert isinstance(layer.feed_forward, FeedForward)
    assert isinstance(layer.attn_residual, Residual) and isinstance(layer.ff_residual, Residual)
    assert not layer.attn_residual.norm_first
    assert EncoderLayer(12, 3, 20, norm_first=True).ff_residual.norm_first
    assert layer(torch.randn(2, 4, 12)).shape == (2, 4, 12)


def test_encoder_layer_dropout_only_in_training():
    torch.manual_seed(6)
    layer = EncoderLayer(16, 4, 32, dropout=0.3)
    x = torch.randn(2, 5, 16)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))


def test_encoder_layer_bad_input():
    layer = EncoderLayer(16, 4, 32)
    with pytest.raises(ValueError, match="d_model=16"):
        layer(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="does not broadcast"):
        layer(torch.randn(2, 5, 16), causal_mask(4))
    with pytest.raises(ValueError, match="not divisible"):
        EncoderLayer(10, 4, 32)


GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-4  # float32: gradients agree to rounding


def attention_gradient_pairs(prefix, ours, theirs):
    """(name, our gradient, torch's) for a MultiHeadAttention and the nn.MultiheadAttention holding its weights."""
    for name, proj, weight, bias in zip("qkv", (ours.q_proj, ours.k_proj, ours.v_proj),
                                        theirs.in_proj_weight.grad.chunk(3), theirs.in_proj_bias.grad.chunk(3)):
        yield f"{prefix}.{name}_proj.weight", proj.weight.grad, weight
        yield f"{prefix}.{name}_proj.bias", proj.bias.grad, bias
    yield f"{prefix}.out_proj.weight", ours.out_proj.weight.grad, theirs.out_proj.weight.grad
    yield f"{prefix}.out_proj.bias", ours.out_proj.bias.grad, theirs.out_proj.bias.grad


def module_gradient_pairs(prefix, ours, theirs):
    for name, parameter in ours.named_parameters():
        yield f"{prefix}.{name}", parameter.grad, dict(theirs.named_parameters())[name].grad


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_encoder_layer_every_gradient_matches_torch_in_training(norm_first, masked):
    """Train mode, dropout 0, post- and pre-norm: the input's and every parameter's gradient equal torch's."""
    torch.manual_seed(11)
    layer = EncoderLayer(16, 4, 32, dropout=0.0, norm_first=norm_first).train()
    randomize_norms(layer)
    twin = torch_twin(layer).train()
    for module in twin.modules():  # the twin was built with dropout 0.1: switch it off
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    twin.self_attn.dropout = 0.0
    x = torch.randn(3, 6, 16, requires_grad=True)
    x_twin = x.detach().clone().requires_grad_()
    keep = torch.arange(6) < torch.tensor([[6], [4], [1]])
    upstream = torch.randn(3, 6, 16)
    (layer(x, keep[:, None, :] if masked else None) * upstream).sum().backward()
    (twin(x_twin, src_key_padding_mask=~keep if masked else None) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_twin.grad, atol=GRAD_ATOL, rtol=GRAD_RTOL)
    pairs = [
        *attention_gradient_pairs("self_attn", layer.self_attn, twin.self_attn),
        *module_gradient_pairs("linear1", layer.feed_forward.linear1, twin.linear1),
        *module_gradient_pairs("linear2", layer.feed_forward.linear2, twin.linear2),
        *module_gradient_pairs("norm1", layer.attn_residual.norm, twin.norm1),
        *module_gradient_pairs("norm2", layer.ff_residual.norm, twin.norm2),
    ]
    assert len(pairs) == sum(1 for _ in layer.parameters())
    for name, ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs, atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=lambda m: f"{name}: {m}")
