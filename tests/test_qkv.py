"""Unit tests of book.qkv (chapter 4)."""
import math

import pytest
import torch
from torch import nn

from book.attention import causal_mask, padding_mask
from book.qkv import AttentionHead


def test_shapes_for_self_and_cross_attention():
    torch.manual_seed(0)
    head = AttentionHead(16, 8, 4)
    x = torch.randn(2, 5, 16)
    assert head(x, x, x).shape == (2, 5, 4)
    assert head.attention_weights.shape == (2, 5, 5)
    memory = torch.randn(2, 9, 16)
    assert head(x, memory, memory).shape == (2, 5, 4)
    assert head.attention_weights.shape == (2, 5, 9)
    assert not head.attention_weights.requires_grad


def test_members_and_parameter_count():
    head = AttentionHead(512, 64, 32)
    assert isinstance(head.q_proj, nn.Linear) and head.q_proj.weight.shape == (64, 512)
    assert head.k_proj.weight.shape == (64, 512) and head.v_proj.weight.shape == (32, 512)
    assert sum(p.numel() for p in head.parameters()) == 2 * (512 * 64 + 64) + 512 * 32 + 32
    no_bias = AttentionHead(512, 64, 32, bias=False)
    assert no_bias.q_proj.bias is None and no_bias.v_proj.bias is None


def test_equals_the_formula():
    torch.manual_seed(1)
    head = AttentionHead(6, 4, 3)
    q_in, kv_in = torch.randn(1, 2, 6), torch.randn(1, 3, 6)
    q = q_in @ head.q_proj.weight.T + head.q_proj.bias
    k = kv_in @ head.k_proj.weight.T + head.k_proj.bias
    v = kv_in @ head.v_proj.weight.T + head.v_proj.bias
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(4), dim=-1)
    torch.testing.assert_close(head(q_in, kv_in, kv_in), weights @ v)
    torch.testing.assert_close(head.attention_weights, weights)


def _copy_into_head(reference, d_model):
    head, out_proj = AttentionHead(d_model, d_model, d_model), nn.Linear(d_model, d_model)
    with torch.no_grad():
        for proj, w, b in zip((head.q_proj, head.k_proj, head.v_proj),
                              reference.in_proj_weight.chunk(3), reference.in_proj_bias.chunk(3)):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        out_proj.load_state_dict(reference.out_proj.state_dict())
    return head, out_proj


@pytest.mark.parametrize("case", ["self", "causal", "cross-padded"])
def test_matches_torch_multihead_attention_with_one_head(case):
    torch.manual_seed(2)
    d_model = 12
    reference = nn.MultiheadAttention(d_model, 1, batch_first=True)
    head, out_proj = _copy_into_head(reference, d_model)
    x = torch.randn(3, 5, d_model)
    if case == "self":
        q, kv, mask = x, x, torch.ones(3, 5, 5, dtype=torch.bool)
    elif case == "causal":
        q, kv, mask = x, x, causal_mask(5).expand(3, 5, 5)
    else:
        kv = torch.randn(3, 7, d_model)
        ids = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 6 + [0]])
        q, mask = x, padding_mask(ids, 0).expand(3, 5, 7)
    ours = out_proj(head(q, kv, kv, mask))
    theirs, their_weights = reference(q, kv, kv, attn_mask=~mask, need_weights=True)  # True = blocked
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(head.attention_weights, their_weights, atol=1e-5, rtol=0)


def test_gradients_reach_every_projection():
    torch.manual_seed(3)
    head = AttentionHead(8, 4, 4)
    x = torch.randn(2, 3, 8, requires_grad=True)
    head(x, x, x).square().sum().backward()
    for proj in (head.q_proj, head.k_proj, head.v_proj):
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("args", [(0, 4, 4), (8, -1, 4), (8, 4, 2.5), (True, 4, 4), ("8", 4, 4)])
def test_rejects_bad_sizes(args):
    with pytest.raises(ValueError, match="d_model|d_k|d_v"):
        AttentionHead(*args)


def test_rejects_inputs_of_the_wrong_width_or_rank():
    head = AttentionHead(8, 4, 4)
    good = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"key must have shape \(\.\.\., T, d_model=8\), got \(2, 3, 7\)"):
        head(good, torch.randn(2, 3, 7), good)
    with pytest.raises(ValueError, match="query"):
        head(torch.randn(8), good, good)
    with pytest.raises(ValueError, match="value"):
        head(good, good, "not a tensor")


def test_rejects_keys_and_values_of_different_lengths_and_bad_masks():
    head = AttentionHead(8, 4, 4)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="length"):
        head(x, x, torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="mask"):
        head(x, x, x, causal_mask(4))
