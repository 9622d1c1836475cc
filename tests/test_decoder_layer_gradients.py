"""book.transformer.DecoderLayer against torch.nn.TransformerDecoderLayer: every gradient, in training."""
import pytest
import torch
from torch import nn

from book.attention import causal_mask
from book.transformer import DecoderLayer

GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-4  # float32: gradients agree to rounding


def copy_attention(ours, theirs):
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
    theirs.out_proj.load_state_dict(ours.out_proj.state_dict())


def torch_twin(layer, norm_first):
    """An nn.TransformerDecoderLayer (dropout 0, batch_first) holding the weights of our DecoderLayer."""
    attn, ffn = layer.self_attn, layer.feed_forward
    twin = nn.TransformerDecoderLayer(attn.d_model, attn.num_heads, ffn.linear1.out_features, dropout=0.0,
                                      batch_first=True, norm_first=norm_first)
    copy_attention(layer.self_attn, twin.self_attn)
    copy_attention(layer.cross_attn, twin.multihead_attn)
    twin.linear1.load_state_dict(ffn.linear1.state_dict())
    twin.linear2.load_state_dict(ffn.linear2.state_dict())
    for ours, theirs in ((layer.self_residual, twin.norm1), (layer.cross_residual, twin.norm2), (layer.ff_residual, twin.norm3)):
        theirs.load_state_dict(ours.norm.state_dict())
    return twin


def attention_pairs(prefix, ours, theirs):
    for name, proj, weight, bias in zip("qkv", (ours.q_proj, ours.k_proj, ours.v_proj),
                                        theirs.in_proj_weight.grad.chunk(3), theirs.in_proj_bias.grad.chunk(3)):
        yield f"{prefix}.{name}_proj.weight", proj.weight.grad, weight
        yield f"{prefix}.{name}_proj.bias", proj.bias.grad, bias
    yield f"{prefix}.out_proj.weight", ours.out_proj.weight.grad, theirs.out_proj.weight.grad
    yield f"{prefix}.out_proj.bias", ours.out_proj.bias.grad, theirs.out_proj.bias.grad


def module_pairs(prefix, ours, theirs):
    theirs = dict(theirs.named_parameters())
    for name, parameter in ours.named_parameters():
        yield f"{prefix}.{name}", parameter.grad, theirs[name].grad


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_every_gradient_matches_torch_in_training(norm_first):
    """Train mode, dropout 0, causal self-attention and a padded memory: the gradients of the target, of the
    memory and of every parameter equal torch's, post-norm and pre-norm."""
    torch.manual_seed(13)
    layer = DecoderLayer(16, 4, 32, dropout=0.0, norm_first=norm_first).train()
    with torch.no_grad():  # random gains and biases, so that the norms' gradients are tested too
        for residual in (layer.self_residual, layer.cross_residual, layer.ff_residual):
            residual.norm.weight.uniform_(0.5, 1.5)
            residual.norm.bias.normal_(0, 0.1)
    twin = torch_twin(layer, norm_first).train()
    tgt = torch.randn(3, 5, 16, requires_grad=True)
    memory = torch.randn(3, 7, 16, requires_grad=True)
    tgt_twin, memory_twin = (t.detach().clone().requires_grad_() for t in (tgt, memory))
    keep = torch.arange(7) < torch.tensor([[7], [4], [1]])
    upstream = torch.randn(3, 5, 16)
    (layer(tgt, memory, causal_mask(5), keep[:, None, :]) * upstream).sum().backward()
    (twin(tgt_twin, memory_twin, tgt_mask=~causal_mask(5), memory_key_padding_mask=~keep) * upstream).sum().backward()
    torch.testing.assert_close(tgt.grad, tgt_twin.grad, atol=GRAD_ATOL, rtol=GRAD_RTOL)
    torch.testing.assert_close(memory.grad, memory_twin.grad, atol=GRAD_ATOL, rtol=GRAD_RTOL)
    pairs = [
        *attention_pairs("self_attn", layer.self_attn, twin.self_attn),
        *attention_pairs("cross_attn", layer.cross_attn, twin.multihead_attn),
        *module_pairs("linear1", layer.feed_forward.linear1, twin.linear1),
        *module_pairs("linear2", layer.feed_forward.linear2, twin.linear2),
        *module_pairs("norm1", layer.self_residual.norm, twin.norm1),
        *module_pairs("norm2", layer.cross_residual.norm, twin.norm2),
        *module_pairs("norm3", layer.ff_residual.norm, twin.norm3),
    ]
    assert len(pairs) == sum(1 for _ in layer.parameters())
    for name, ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs, atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=lambda m: f"{name}: {m}")
