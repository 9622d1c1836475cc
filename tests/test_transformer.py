"""The full Transformer (chapter 7): invariants, the torch.nn.Transformer check, bad input."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from book.attention import padding_mask
from book.self_attention import sinusoidal_positional_encoding
from book.transformer import DecoderLayer, Embedding, PositionalEncoding, Transformer, TorchReference, TransformerConfig

TINY = dict(src_vocab_size=17, tgt_vocab_size=19, d_model=16, num_heads=4, num_layers=2, d_ff=32, max_len=40)


def make_model(seed=0, **changes):
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(**{**TINY, **changes})).eval()


@pytest.fixture(scope="module")
def model():
    return make_model()


def tokens(batch, length, vocab, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, length), generator=generator)


# --------------------------------------------------------------------------- shapes and API
def test_forward_shape_and_encode_decode_agree(model):
    src, tgt = tokens(3, 7, 17, 1), tokens(3, 5, 19, 2)
    src[1, 4:] = 0
    logits = model(src, tgt)
    assert logits.shape == (3, 5, 19) and logits.dtype == torch.float32
    memory = model.encode(src)
    assert memory.shape == (3, 7, 16)
    assert torch.equal(model.decode(tgt, memory, padding_mask(src, 0)), logits)


def test_config_defaults_are_the_papers_base_model():
    c = TransformerConfig(100, 100)
    assert (c.d_model, c.num_heads, c.num_layers, c.d_ff, c.dropout) == (512, 8, 6, 2048, 0.1)
    assert c.pad_id == 0 and c.share_embeddings is False and c.d_k is None and c.d_v is None
    assert c.norm_first is False


def test_positional_encoding_is_a_buffer_not_a_parameter(model):
    names = [name for name, _ in model.named_parameters()]
    assert not any("pe" in name.split(".") for name in names)
    assert torch.equal(model.positions.pe, sinusoidal_positional_encoding(40, 16))
    assert "positions.pe" not in model.state_dict()
    assert model.double().positions.pe.dtype == torch.float64
    model.float()


def test_decoding_one_token_at_a_time_equals_the_parallel_pass(model):
    src, tgt = tokens(2, 6, 17, 3), tokens(2, 5, 19, 4)
    with torch.no_grad():
        memory, mask = model.encode(src), padding_mask(src, 0)
        parallel = model.decode(tgt, memory, mask)
        steps = [model.decode(tgt[:, : t + 1], memory, mask)[:, -1] for t in range(5)]
    torch.testing.assert_close(torch.stack(steps, dim=1), parallel, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- invariants
@settings(max_examples=15, deadline=None)
@given(position=st.integers(0, 5), new_token=st.integers(1, 18))
def test_decoder_never_sees_future_target_tokens(model, position, new_token):
    src, tgt = tokens(2, 6, 17, 5), tokens(2, 6, 19, 6)
    edited = tgt.clone()
    edited[:, position] = new_token
    with torch.no_grad():
        before, after = model(src, tgt), model(src, edited)
    torch.testing.assert_close(after[:, :position], before[:, :position], atol=1e-6, rtol=0)


def test_the_future_mask_can_fail(model):
    # The same edit with the causal mask removed does reach earlier positions.
    src, tgt = tokens(1, 6, 17, 5), tokens(1, 6, 19, 6)
    edited = tgt.clone()
    edited[0, 4] = (tgt[0, 4] % 18) + 1
    memory, mask = model.encode(src), padding_mask(src, 0)
    with torch.no_grad():
        before = model.decode(tgt, memory, mask, tgt_mask=padding_mask(tgt, 0))
        after = model.decode(edited, memory, mask, tgt_mask=padding_mask(edited, 0))
    assert (after[0, :4] - before[0, :4]).abs().max() > 1e-4


@settings(max_examples=15, deadline=None)
@given(src_len=st.integers(1, 8), tgt_len=st.integers(1, 8), src_pad=st.integers(0, 5), tgt_pad=st.integers(0, 5))
def test_padding_changes_no_output(model, src_len, tgt_len, src_pad, tgt_pad):
    src, tgt = tokens(1, src_len, 17, src_len), tokens(1, tgt_len, 19, 100 + tgt_len)
    padded_src = torch.cat([src, torch.zeros(1, src_pad, dtype=torch.long)], dim=1)
    padded_tgt = torch.cat([tgt, torch.zeros(1, tgt_pad, dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain, padded = model(src, tgt), model(padded_src, padded_tgt)
        memory, padded_memory = model.encode(src), model.encode(padded_src)
    torch.testing.assert_close(padded[:, :tgt_len], plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded_memory[:, :src_len], memory, atol=1e-5, rtol=0)


def test_padding_content_is_ignored(model):
    # What sits at a padded position (it is always pad_id, but the mask says so) changes nothing:
    # replace the padded source positions' mask-hidden tokens by other tokens, keep the mask.
    src, tgt = tokens(2, 7, 17, 7), tokens(2, 4, 19, 8)
    src[:, 5:] = 0
    mask = padding_mask(src, 0)
    other = src.clone()
    other[:, 5:] = 3
    with torch.no_grad():
        a = model.decode(tgt, model.encode(src, mask), mask)
        b = model.decode(tgt, model.encode(other, mask), mask)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_output_depends_on_the_source(model):
    src, tgt = tokens(1, 6, 17, 9), tokens(1, 4, 19, 10)
    for position in range(6):
        edited = src.clone()
        edited[0, position] = (src[0, position] % 16) + 1
        with torch.no_grad():
            change = (model(edited, tgt) - model(src, tgt)).abs().max()
        assert change > 1e-4, f"changing source position {position} did not change the output"


def test_batch_items_are_independent(model):
    src, tgt = tokens(4, 7, 17, 11), tokens(4, 5, 19, 12)
    src[2, 3:] = 0
    tgt[1, 2:] = 0
    with torch.no_grad():
        together = model(src, tgt)
        for b in range(4):
            alone = model(src[b : b + 1], tgt[b : b + 1])
            torch.testing.assert_close(together[b : b + 1], alone, atol=1e-5, rtol=0)
        changed = src.clone()
        changed[0] = tokens(1, 7, 17, 13)
        other = model(changed, tgt)
    torch.testing.assert_close(other[1:], together[1:], atol=1e-6, rtol=0)
    assert (other[0] - together[0]).abs().max() > 1e-4


@pytest.mark.parametrize("share", [False, True])
def test_every_parameter_receives_a_gradient(share):
    vocab = dict(tgt_vocab_size=17) if share else {}
    model = make_model(share_embeddings=share, dropout=0.1, **vocab).train()
    src, tgt = tokens(3, 7, 17, 14), tokens(3, 6, 17, 15)
    src[0, 5:] = 0
    logits = model(src, tgt)
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), tokens(3, 6, 17, 16).flatten())
    loss.backward()
    largest = max(p.grad.abs().max() for p in model.parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.endswith("k_proj.bias"):
            # The key bias shifts a whole softmax row by one constant: its gradient is exactly 0
            # in exact arithmetic, rounding error here.
            assert p.grad.abs().max() < 1e-5 * largest, name
        else:
            assert p.grad.abs().max() > 0, f"{name} received no gradient"


# --------------------------------------------------------------------------- shared embeddings
def test_shared_embeddings_are_one_tensor():
    model = make_model(tgt_vocab_size=17, share_embeddings=True)
    weight = model.src_embed.weight
    assert model.tgt_embed.weight is weight and model.generator.weight is weight
    assert sum(1 for p in model.parameters() if p.shape == (17, 16)) == 1
    separate = make_model(tgt_vocab_size=17)
    assert separate.tgt_embed.weight is not separate.src_embed.weight
    assert separate.generator.weight is not separate.tgt_embed.weight
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(separate) - count(model) == 2 * 17 * 16
    # One optimizer step keeps the three roles tied.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(tokens(2, 5, 17, 17), tokens(2, 4, 17, 18)).sum().backward()
    optimizer.step()
    assert model.generator.weight is model.tgt_embed.weight is model.src_embed.weight


def test_reset_parameters_is_xavier_on_every_matrix():
    model = make_model(d_model=32, num_heads=4, d_ff=64)
    for name, p in model.named_parameters():
        if p.dim() == 2:
            bound = math.sqrt(6 / sum(p.shape))
            assert p.abs().max() <= bound + 1e-6, name
            assert p.abs().max() > 0.8 * bound, name


# --------------------------------------------------------------------------- torch.nn.Transformer
def _perturb_vectors(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.3)


@pytest.mark.parametrize("share", [False, True])
def test_matches_torch_nn_transformer(share):
    changes = dict(src_vocab_size=23, tgt_vocab_size=23 if share else 29, share_embeddings=share)
    ours = make_model(seed=3, d_model=32, num_heads=4, **changes)
    _perturb_vectors(ours, 4)
    reference = TorchReference(ours.config).copy_from(ours).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    src, tgt = tokens(4, 9, 23, 19), tokens(4, 7, 23, 20)
    for b, (s, t) in enumerate([(9, 7), (6, 3), (2, 7), (9, 1)]):
        src[b, s:] = 0
        tgt[b, t:] = 0
    mask = padding_mask(src, 0)
    with torch.no_grad():  # no_grad and eval: torch takes its fused fast path here
        memory, torch_memory = ours.encode(src), reference.encode(src)
        torch.testing.assert_close(memory, torch_memory, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.decode(tgt, memory, mask), reference.decode(tgt, torch_memory, src),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(src, tgt), reference(src, tgt), atol=1e-5, rtol=0)
    # With autograd on, torch takes its ordinary path; compare the gradients too.
    target = tokens(4, 7, 23, 21)
    for m in (ours, reference):
        nn.functional.cross_entropy(m(src, tgt).flatten(0, 1), target.flatten()).backward()
    torch.testing.assert_close(ours.src_embed.weight.grad, reference.src_embed.weight.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.generator.weight.grad, reference.generator.weight.grad, atol=1e-5, rtol=0)
    layer, torch_layer = ours.decoder_layers[0], reference.transformer.decoder.layers[0]
    torch.testing.assert_close(layer.feed_forward.linear1.weight.grad, torch_layer.linear1.weight.grad,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.cross_attn.q_proj.weight.grad,
                               torch_layer.multihead_attn.in_proj_weight.grad[:32], atol=1e-5, rtol=0)


def test_torch_comparison_can_fail():
    # A copy that forgets one layer norm must be caught by the same tolerance.
    ours = make_model(seed=3, d_model=32, num_heads=4)
    _perturb_vectors(ours, 4)
    reference = TorchReference(ours.config).copy_from(ours).eval()
    with torch.no_grad():
        reference.transformer.decoder.layers[1].norm3.weight.fill_(1.0)
        src, tgt = tokens(2, 5, 17, 22), tokens(2, 4, 19, 23)
        assert (ours(src, tgt) - reference(src, tgt)).abs().max() > 1e-3


def test_torch_default_final_norms_change_the_function():
    ours = make_model(seed=3, d_model=32, num_heads=4)
    _perturb_vectors(ours, 4)
    reference = TorchReference(ours.config).copy_from(ours).eval()
    reference.transformer.encoder.norm = nn.LayerNorm(32)
    reference.transformer.decoder.norm = nn.LayerNorm(32)
    src, tgt = tokens(2, 5, 17, 24), tokens(2, 4, 19, 25)
    with torch.no_grad():
        assert (ours(src, tgt) - reference(src, tgt)).abs().max() > 1e-2


def test_pre_norm_decoder_layer_matches_torch():
    from book.transformer import _copy_attention, _copy_sublayers

    torch.manual_seed(5)
    ours = DecoderLayer(16, 4, 32, norm_first=True).eval()
    theirs = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True).eval()
    with torch.no_grad():
        _copy_attention(ours.self_attn, theirs.self_attn)
        _copy_attention(ours.cross_attn, theirs.multihead_attn)
        _copy_sublayers(ours, theirs, [ours.self_residual, ours.cross_residual, ours.ff_residual])
        x, memory = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
        causal = torch.ones(5, 5, dtype=torch.bool).tril()
        torch.testing.assert_close(ours(x, memory, causal), theirs(x, memory, tgt_mask=~causal),
                                   atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- pre-norm (norm_first=True)
@pytest.mark.parametrize("share", [False, True])
def test_pre_norm_model_matches_torch_nn_transformer_with_final_norms(share):
    changes = dict(src_vocab_size=23, tgt_vocab_size=23 if share else 29, share_embeddings=share)
    ours = make_model(seed=6, d_model=32, num_heads=4, norm_first=True, **changes)
    _perturb_vectors(ours, 7)
    reference = TorchReference(ours.config).copy_from(ours).eval()
    assert isinstance(reference.transformer.encoder.norm, nn.LayerNorm)
    assert isinstance(reference.transformer.decoder.norm, nn.LayerNorm)
    assert all(layer.norm_first for layer in [*reference.transformer.encoder.layers,
                                              *reference.transformer.decoder.layers])
    src, tgt = tokens(4, 9, 23, 30), tokens(4, 7, 23, 31)
    for b, (s, t) in enumerate([(9, 7), (5, 2), (3, 7), (9, 4)]):
        src[b, s:] = 0
        tgt[b, t:] = 0
    with torch.no_grad():
        memory, torch_memory = ours.encode(src), reference.encode(src)
        torch.testing.assert_close(memory, torch_memory, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.decode(tgt, memory, padding_mask(src, 0)),
                                   reference.decode(tgt, torch_memory, src), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(src, tgt), reference(src, tgt), atol=1e-5, rtol=0)
    target = tokens(4, 7, 23, 32)
    for m in (ours, reference):
        nn.functional.cross_entropy(m(src, tgt).flatten(0, 1), target.flatten()).backward()
    torch.testing.assert_close(ours.encoder_norm.weight.grad, reference.transformer.encoder.norm.weight.grad,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.decoder_norm.bias.grad, reference.transformer.decoder.norm.bias.grad,
                               atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
def test_pre_norm_reference_has_the_layout_of_nn_transformer_norm_first():
    config = TransformerConfig(**{**TINY, "norm_first": True})
    reference = TorchReference(config)
    plain = nn.Transformer(16, 4, 2, 2, 32, batch_first=True, norm_first=True)
    embeddings = (17 + 19 + 19) * 16
    assert sum(p.numel() for p in reference.parameters()) - embeddings == sum(p.numel() for p in plain.parameters())


def test_pre_norm_comparison_can_fail():
    # Without its final norms, the pre-norm stack computes a different function.
    ours = make_model(seed=6, d_model=32, num_heads=4, norm_first=True)
    _perturb_vectors(ours, 7)
    reference = TorchReference(ours.config).copy_from(ours).eval()
    src, tgt = tokens(2, 5, 17, 33), tokens(2, 4, 19, 34)
    with torch.no_grad():
        ours.decoder_norm = nn.Identity()
        assert (ours(src, tgt) - reference(src, tgt)).abs().max() > 1e-3


@pytest.mark.parametrize("changes", [{}, dict(d_model=32, num_heads=4), dict(num_layers=3, share_embeddings=True,
                                                                             tgt_vocab_size=17)])
def test_pre_norm_adds_exactly_four_d_model_parameters(changes):
    post, pre = make_model(**changes), make_model(norm_first=True, **changes)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(pre) - count(post) == 4 * post.config.d_model
    assert all(r.norm_first for layer in pre.decoder_layers
               for r in (layer.self_residual, layer.cross_residual, layer.ff_residual))
    assert all(r.norm_first for layer in pre.encoder_layers for r in (layer.attn_residual, layer.ff_residual))
    assert not any(r.norm_first for layer in post.encoder_layers for r in (layer.attn_residual, layer.ff_residual))
    # Post-norm keeps the paper's layout and the state-dict keys of earlier checkpoints.
    assert not any("encoder_norm" in k or "decoder_norm" in k for k in post.state_dict())
    with torch.device("meta"):
        base_post = Transformer(TransformerConfig(37000, 37000, share_embeddings=True))
        base_pre = Transformer(TransformerConfig(37000, 37000, share_embeddings=True, norm_first=True))
    assert count(base_pre) - count(base_post) == 4 * 512


def test_torch_reference_needs_standard_head_widths():
    with pytest.raises(ValueError, match="d_k=8"):
        TorchReference(TransformerConfig(**{**TINY, "d_k": 8}))
    with pytest.raises(ValueError, match="configs differ"):
        TorchReference(TransformerConfig(**TINY)).copy_from(make_model(d_ff=64))


# --------------------------------------------------------------------------- parameter counts, meta device
def test_paper_base_and_big_on_the_meta_device():
    counts = {}
    for name, changes in {"base": {}, "big": dict(d_model=1024, d_ff=4096, num_heads=16)}.items():
        with torch.device("meta"):
            model = Transformer(TransformerConfig(37000, 37000, share_embeddings=True, **changes))
        tensors = [*model.parameters(), *model.buffers()]
        assert tensors and all(t.is_meta for t in tensors)
        counts[name] = sum(p.numel() for p in model.parameters())
    # The chapter's parameter-count formula, worked out by hand.
    assert counts["base"] == 37000 * 512 + 6 * (3 * (4 * 512 * 512 + 4 * 512) + 2 * (2 * 512 * 2048 + 2048 + 512)
                                                  + 10 * 512)
    assert counts == {"base": 63_082_496, "big": 214_245_376}
    assert abs(counts["base"] / 1e6 - 65) / 65 < 0.05 and abs(counts["big"] / 1e6 - 213) / 213 < 0.05


def test_stacks_match_torch_parameter_count_without_final_norms():
    config = TransformerConfig(37000, 37000, share_embeddings=True)
    with torch.device("meta"):
        ours = Transformer(config)
        theirs = nn.Transformer(batch_first=True)
    embedding = 37000 * 512
    final_norms = 2 * 2 * 512
    assert sum(p.numel() for p in ours.parameters()) - embedding == (
        sum(p.numel() for p in theirs.parameters()) - final_norms
    )


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(d_model=16, num_heads=3), ["d_model=16", "num_heads=3"]),
        (dict(dropout=1.0), ["dropout", "1.0", "[0, 1)"]),
        (dict(dropout=-0.1), ["dropout", "-0.1"]),
        (dict(num_layers=0), ["num_layers", "0"]),
        (dict(num_layers=2.0), ["num_layers", "2.0"]),
        (dict(share_embeddings=True), ["src_vocab_size=17", "tgt_vocab_size=19"]),
        (dict(d_model=15, num_heads=1), ["even", "15"]),
        (dict(d_k=0), ["d_k", "0"]),
        (dict(src_vocab_size=0), ["src_vocab_size", "0"]),
        (dict(pad_id=17), ["pad_id=17", "[0, 17)"]),
        (dict(max_len=0), ["max_len", "0"]),
        (dict(norm_first="yes"), ["norm_first", "'yes'"]),
        (dict(share_embeddings=1), ["share_embeddings", "1"]),
    ],
)
def test_bad_config_raises_value_error(changes, words):
    with pytest.raises(ValueError) as error:
        TransformerConfig(**{**TINY, **changes})
    for word in words:
        assert word in str(error.value)


def test_explicit_head_widths_allow_indivisible_d_model():
    model = make_model(d_model=18, num_heads=4, d_k=5, d_v=3)
    assert model(tokens(1, 3, 17, 26), tokens(1, 2, 19, 27)).shape == (1, 2, 19)


@pytest.mark.parametrize(
    "src, tgt, words",
    [
        (torch.tensor([[1, 17, 2]]), torch.tensor([[1, 2]]), ["src", "[0, 17)", "max 17"]),
        (torch.tensor([[1, -1, 2]]), torch.tensor([[1, 2]]), ["src", "min -1"]),
        (torch.tensor([[1, 2]]), torch.tensor([[1, 19]]), ["tgt", "[0, 19)", "max 19"]),
        (torch.ones(1, 41, dtype=torch.long), torch.tensor([[1, 2]]), ["src", "length 41", "max_len=40"]),
        (torch.tensor([[1, 2]]), torch.ones(1, 41, dtype=torch.long), ["tgt", "length 41", "max_len=40"]),
        (torch.tensor([1, 2, 3]), torch.tensor([[1, 2]]), ["src", "2-D", "(3,)"]),
        (torch.tensor([[1, 2]]), torch.ones(1, 2, 2, dtype=torch.long), ["tgt", "2-D", "(1, 2, 2)"]),
        ([[1, 2]], torch.tensor([[1, 2]]), ["src", "2-D", "list"]),
        (torch.ones(1, 0, dtype=torch.long), torch.tensor([[1, 2]]), ["src", "length 0"]),
        (torch.ones(2, 3, dtype=torch.long), torch.ones(3, 2, dtype=torch.long), ["batch", "2", "3"]),
    ],
)
def test_bad_tokens_raise_value_error(model, src, tgt, words):
    with pytest.raises(ValueError) as error:
        model(src, tgt)
    for word in words:
        assert word in str(error.value)


def test_bad_tokens_in_encode_and_decode(model):
    with pytest.raises(ValueError, match=r"src token ids must be in \[0, 17\)"):
        model.encode(torch.tensor([[3, 99]]))
    memory = model.encode(torch.tensor([[3, 4]]))
    with pytest.raises(ValueError, match=r"tgt token ids must be in \[0, 19\)"):
        model.decode(torch.tensor([[19]]), memory)
    with pytest.raises(ValueError, match=r"memory must be \(batch=2, source length, d_model=16\), got \(1, 2, 16\)"):
        model.decode(torch.tensor([[1], [2]]), memory)
    with pytest.raises(ValueError, match="d_model=16"):
        model.decode(torch.tensor([[1]]), torch.zeros(1, 2, 8))


def test_non_integer_tokens_raise_type_error(model):
    with pytest.raises(TypeError, match="float32"):
        model(torch.tensor([[1.0, 2.0]]), torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match="bool"):
        model(torch.tensor([[1, 2]]), torch.tensor([[True, False]]))
    for dtype in (torch.uint8, torch.int16):  # integers that nn.Embedding does not take
        with pytest.raises(TypeError, match=f"src must hold .*got dtype {dtype}"):
            model(torch.tensor([[1, 2]], dtype=dtype), torch.tensor([[1, 2]]))
    assert model(torch.tensor([[1, 2]], dtype=torch.int32), torch.tensor([[1, 2]], dtype=torch.int32)).isfinite().all()


def test_config_must_be_a_transformer_config():
    with pytest.raises(TypeError, match="TransformerConfig"):
        Transformer(dict(TINY))


def test_embedding_and_positions_used_alone_name_bad_input():
    embedding, positions = Embedding(vocab_size=5, d_model=4), PositionalEncoding(d_model=4, max_len=10)
    assert embedding(torch.tensor([[4, 0]])).shape == (1, 2, 4)
    assert positions(torch.zeros(2, 10, 4)).shape == (2, 10, 4)
    with pytest.raises(ValueError, match=r"\[0, 5\), got min 0 and max 5"):
        embedding(torch.tensor([[0, 5]]))
    with pytest.raises(ValueError, match="min -1"):
        embedding(torch.tensor([[-1, 2]]))
    with pytest.raises(TypeError, match="torch.float32"):
        embedding(torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match="length 11, but the table holds max_len=10"):
        positions(torch.zeros(1, 11, 4))
    with pytest.raises(ValueError, match=r"d_model=4\), got \(1, 3, 6\)"):
        positions(torch.zeros(1, 3, 6))


def test_embedding_still_runs_on_the_meta_device():
    # Shapes without values: the id check must not ask a meta tensor for its min and max.
    with torch.device("meta"):
        embedding = Embedding(vocab_size=5, d_model=4)
        out = embedding(torch.zeros(2, 3, dtype=torch.long))
    assert out.is_meta and out.shape == (2, 3, 4)


# --------------------------------------------------------------------------- issue fixes: masks, meta, syncs, gradients
def _padded_batch(seed=30):
    src, tgt = tokens(3, 7, 17, seed), tokens(3, 5, 19, seed + 1)
    src[0, 4:] = 0
    src[2, 6:] = 0
    tgt[1, 3:] = 0
    return src, tgt


def test_decode_uses_the_source_mask_that_encode_kept(model):
    src, tgt = _padded_batch()
    with torch.no_grad():
        memory = model.encode(src)
        assert torch.equal(memory.src_mask, padding_mask(src, 0))
        torch.testing.assert_close(model.decode(tgt, memory), model(src, tgt), atol=1e-6, rtol=0)
        # Attending to the padding instead changes the logits: the default must not do that.
        everything = torch.ones(3, 1, 7, dtype=torch.bool)
        assert (model.decode(tgt, memory, everything) - model(src, tgt)).abs().max() > 1e-3


def test_decode_refuses_a_memory_without_its_source_mask(model):
    src, tgt = _padded_batch()
    with torch.no_grad():
        memory = model.encode(src).clone()  # a copy: no longer the tensor encode returned
        with pytest.raises(ValueError, match=r"memory of shape \(3, 7, 16\) without a src_mask"):
            model.decode(tgt, memory)
        with pytest.raises(ValueError, match="src_mask"):
            model.decode(tgt, torch.zeros(3, 7, 16))
        torch.testing.assert_close(model.decode(tgt, memory, padding_mask(src, 0)), model(src, tgt),
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_positional_table_is_rebuilt_after_meta_and_to_empty(norm_first):
    config = TransformerConfig(**{**TINY, "norm_first": norm_first})
    with torch.device("meta"):
        model = Transformer(config)
    assert model.positions.pe.is_meta
    model.to_empty(device="cpu")
    assert torch.equal(model.positions.pe, sinusoidal_positional_encoding(40, 16))
    with torch.device("meta"):
        alone = PositionalEncoding(d_model=8, max_len=12)
    alone.to_empty(device="cpu")
    assert torch.equal(alone.pe, sinusoidal_positional_encoding(12, 8))
    # An ordinary move keeps the table and converts it.
    assert torch.equal(alone.double().pe, sinusoidal_positional_encoding(12, 8).double())


def test_token_checks_copy_to_the_host_once_per_token_tensor(model, monkeypatch):
    calls = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    src, tgt = _padded_batch()
    with torch.no_grad():
        model(src, tgt)
    assert len(calls) == 2, calls  # one for src, one for tgt


def _torch_gradients(ours, reference):
    """Our parameter name -> the gradient of the same weights in TorchReference."""
    grads = {"src_embed.weight": reference.src_embed.weight.grad,
             "generator.weight": reference.generator.weight.grad}
    if not ours.config.share_embeddings:
        grads["tgt_embed.weight"] = reference.tgt_embed.weight.grad

    def attention(prefix, theirs):
        d = ours.config.d_model
        for i, role in enumerate("qkv"):
            grads[f"{prefix}.{role}_proj.weight"] = theirs.in_proj_weight.grad[i * d:(i + 1) * d]
            grads[f"{prefix}.{role}_proj.bias"] = theirs.in_proj_bias.grad[i * d:(i + 1) * d]
        grads[f"{prefix}.out_proj.weight"] = theirs.out_proj.weight.grad
        grads[f"{prefix}.out_proj.bias"] = theirs.out_proj.bias.grad

    def sublayers(prefix, theirs, residuals):
        for name in ("weight", "bias"):
            for i in (1, 2):
                grads[f"{prefix}.feed_forward.linear{i}.{name}"] = getattr(getattr(theirs, f"linear{i}"), name).grad
            for i, residual in enumerate(residuals, start=1):
                grads[f"{prefix}.{residual}.norm.{name}"] = getattr(getattr(theirs, f"norm{i}"), name).grad

    for i, theirs in enumerate(reference.transformer.encoder.layers):
        attention(f"encoder_layers.{i}.self_attn", theirs.self_attn)
        sublayers(f"encoder_layers.{i}", theirs, ["attn_residual", "ff_residual"])
    for i, theirs in enumerate(reference.transformer.decoder.layers):
        attention(f"decoder_layers.{i}.self_attn", theirs.self_attn)
        attention(f"decoder_layers.{i}.cross_attn", theirs.multihead_attn)
        sublayers(f"decoder_layers.{i}", theirs, ["self_residual", "cross_residual", "ff_residual"])
    if ours.config.norm_first:
        for name in ("weight", "bias"):
            grads[f"encoder_norm.{name}"] = getattr(reference.transformer.encoder.norm, name).grad
            grads[f"decoder_norm.{name}"] = getattr(reference.transformer.decoder.norm, name).grad
    return grads


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("share", [False, True])
def test_every_gradient_matches_torch_in_train_mode(norm_first, share):
    # Train mode (torch's ordinary path, no fast path), dropout 0, so both compute the same function.
    changes = dict(src_vocab_size=23, tgt_vocab_size=23 if share else 29, share_embeddings=share)
    ours = make_model(seed=5, d_model=32, num_heads=4, dropout=0.0, norm_first=norm_first, **changes).train()
    _perturb_vectors(ours, 6)
    reference = TorchReference(ours.config).copy_from(ours).train()
    src, tgt = tokens(4, 9, 23, 31), tokens(4, 7, 23, 32)
    for b, (s, t) in enumerate([(9, 7), (5, 3), (2, 7), (9, 1)]):
        src[b, s:] = 0
        tgt[b, t:] = 0
    target = tokens(4, 7, 23, 33)
    for m in (ours, reference):
        loss = nn.functional.cross_entropy(m(src, tgt).flatten(0, 1), target.flatten(), ignore_index=0)
        loss.backward()
    theirs = _torch_gradients(ours, reference)
    names = [name for name, _ in ours.named_parameters()]
    assert set(names) <= set(theirs)  # a shared matrix is listed once, as src_embed.weight
    largest = max(p.grad.abs().max().item() for p in ours.parameters())
    for name, p in ours.named_parameters():
        # float32 rounding of two summation orders: absolute 1e-5 of the largest gradient, or 1e-4 relative.
        torch.testing.assert_close(p.grad, theirs[name], atol=1e-5 * largest, rtol=1e-4, msg=name)


def test_gradient_comparison_can_fail():
    ours = make_model(seed=5, d_model=32, num_heads=4, dropout=0.0).train()
    _perturb_vectors(ours, 6)
    reference = TorchReference(ours.config).copy_from(ours).train()
    with torch.no_grad():
        reference.transformer.encoder.layers[0].linear1.bias[0] += 0.05  # one number off
    src, tgt, target = tokens(2, 6, 17, 34), tokens(2, 5, 19, 35), tokens(2, 5, 19, 36)
    for m in (ours, reference):
        nn.functional.cross_entropy(m(src, tgt).flatten(0, 1), target.flatten()).backward()
    theirs = _torch_gradients(ours, reference)
    largest = max(p.grad.abs().max().item() for p in ours.parameters())
    worst = max((p.grad - theirs[name]).abs().max().item() for name, p in ours.named_parameters())
    assert worst > 1e-5 * largest * 10
