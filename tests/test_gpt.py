"""book.gpt: the decoder-only Transformer (chapter 11) against torch.nn, chapter 10's checks and recomputation."""
import math
import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from book.attention import causal_mask, padding_mask
from book.checks import check_causal, check_gradients, check_padding, run_checks
from book.gpt import (GPT, GPTCache, GPTConfig, GPTTranslator, feed, generate, gpt_parameter_count,
                      start_gpt_cache, token_positions)
from book.residual import EncoderLayer, LayerNorm
from book.self_attention import sinusoidal_positional_encoding
from book.train import greedy_decode
from book.transformer import Embedding, TorchReference, Transformer, TransformerConfig

V, PAD, START = 13, 0, 1
POSITIONS = ["sinusoidal", "learned", "none"]
TOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def config(**changes):
    sizes = dict(vocab_size=V, d_model=16, num_heads=2, num_layers=2, d_ff=32, dropout=0.0, max_len=32)
    return GPTConfig(**{**sizes, **changes})


def tiny(seed=0, cls=None, **changes):
    torch.manual_seed(seed)
    return (cls or GPT)(config(**changes)).eval()


def tokens(batch, length, seed):
    """Random ids (batch, length), never padding."""
    return torch.randint(1, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def count(model):
    return sum(p.numel() for p in model.parameters())


def pair():
    """A source (3, 7) and a target (3, 5), with padding at the end of some rows."""
    src, tgt = tokens(3, 7, seed=11), tokens(3, 5, seed=12)
    src[1, 4:] = PAD
    src[2, 2:] = PAD
    tgt[2, 3:] = PAD
    return src, tgt


def sources():
    """Right-padded sources (4, 7) of different lengths: 7, 4, 2 and 6 real tokens."""
    src = tokens(4, 7, seed=13)
    src[1, 4:] = PAD
    src[2, 2:] = PAD
    src[3, 6:] = PAD
    return src


def perturb_vectors(model, seed):
    """Layer norms that are not the identity: gains around 1, shifts and biases around 0."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.3)


# --------------------------------------------------------------------------- planted bugs
class Variant(GPT):
    """GPT.forward written out with its mask and positions as methods, so that a subclass can break one."""

    def mask(self, tokens):
        return padding_mask(tokens, self.config.pad_id) & causal_mask(tokens.size(1))

    def positions(self, tokens):
        return token_positions(tokens, self.config.pad_id)

    def forward(self, tokens):
        x, mask = self.embed(tokens, self.positions(tokens)), self.mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.generator(self.final_norm(x))


class NoCausalMask(Variant):
    def mask(self, tokens):
        return padding_mask(tokens, self.config.pad_id)


class NoPaddingMask(Variant):
    def mask(self, tokens):
        return causal_mask(tokens.size(1))


class IndexPositions(Variant):
    """Counts padding as positions: the column index, as chapter 7's encoder does."""

    def positions(self, tokens):
        return torch.arange(tokens.size(1)).expand_as(tokens)


class BatchMixing(Variant):
    def forward(self, tokens):
        logits = super().forward(tokens)
        return logits + 0.1 * logits.mean(dim=0, keepdim=True)


class DetachedPositions(Variant):
    def embed(self, tokens, positions):
        return self.dropout(self.tok_embed(tokens) + self.pe.detach()[positions])


def test_the_unbroken_variant_is_gpt():
    # The planted bugs differ from GPT by the bug alone.
    x = tokens(3, 9, seed=1)
    x[1, 5:] = PAD
    x[2, :3] = PAD
    with torch.no_grad():
        assert torch.equal(tiny(cls=Variant)(x), tiny()(x))


# --------------------------------------------------------------------------- causality
def causal_change(model, x):
    """The largest move of a logit at positions <= t when every token after t is replaced, over all t."""
    with torch.no_grad():
        logits, worst = model(x), 0.0
        for t in range(x.size(1) - 1):
            changed = x.clone()
            changed[:, t + 1:] = tokens(x.size(0), x.size(1) - t - 1, seed=100 + t)
            worst = max(worst, (model(changed)[:, :t + 1] - logits[:, :t + 1]).abs().max().item())
    return worst


@pytest.mark.parametrize("positions", POSITIONS)
def test_logits_ignore_the_tokens_after_them(positions):
    x = tokens(3, 10, seed=1)
    x[1, 6:] = PAD
    x[2, 2:4] = PAD
    assert causal_change(tiny(positions=positions, num_layers=3), x) < TOL


def test_causality_test_catches_a_missing_causal_mask():
    assert causal_change(tiny(cls=NoCausalMask), tokens(3, 10, seed=1)) > 1e-3


# --------------------------------------------------------------------------- padding
def token_positions_examples():
    x = torch.tensor([[5, 6, 7, 0, 0], [0, 0, 5, 6, 7], [5, 0, 6, 0, 7], [0, 0, 0, 0, 0]])
    return x, torch.tensor([[0, 1, 2, 3, 3], [0, 0, 0, 1, 2], [0, 1, 1, 2, 2], [0, 0, 0, 0, 0]])


def test_token_positions_count_the_real_tokens_before_each_token():
    x, expected = token_positions_examples()
    assert torch.equal(token_positions(x, PAD), expected)
    assert torch.equal(token_positions(x, 5), torch.tensor([[0, 0, 1, 2, 3], [0, 1, 2, 2, 3],
                                                            [0, 0, 1, 2, 3], [0, 1, 2, 3, 4]]))


PLACES = {"right": 6, "left": 0, "middle": 3}  # where 3 padding ids go into a row of 6 real tokens


def padding_change(model, place):
    """The largest move of a real position's logit when 3 padding ids are put at ``place``."""
    x, where = tokens(2, 6, seed=2), PLACES[place]
    padded = torch.cat([x[:, :where], torch.full((2, 3), PAD), x[:, where:]], dim=1)
    real = [i for i in range(9) if not where <= i < where + 3]
    assert torch.equal(padded[:, real], x)
    with torch.no_grad():
        return (model(padded)[:, real] - model(x)).abs().max().item()


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("place", PLACES)
def test_padding_anywhere_moves_no_real_logit(positions, place):
    assert padding_change(tiny(positions=positions), place) < TOL


@pytest.mark.parametrize("cls", [NoPaddingMask, IndexPositions])
@pytest.mark.parametrize("place", ["left", "middle"])
def test_padding_test_catches_unmasked_padding_and_index_positions(cls, place):
    assert padding_change(tiny(cls=cls), place) > 1e-3


def test_right_padding_alone_would_not_catch_a_missing_padding_mask():
    # The causal mask already hides padding at the end: that is why left and middle padding are tested.
    assert padding_change(tiny(cls=NoPaddingMask), "right") < TOL


# --------------------------------------------------------------------------- batch independence
def batch_change(model):
    """The largest difference between a row's logits alone and in a batch with padding of 3 kinds."""
    x = tokens(4, 9, seed=3)
    x[1, 5:] = PAD
    x[2, :3] = PAD
    x[3, 2:4] = PAD
    with torch.no_grad():
        batch = model(x)
        return max((model(x[i:i + 1])[0] - batch[i]).abs().max().item() for i in range(4))


@pytest.mark.parametrize("positions", POSITIONS)
def test_each_row_alone_gets_its_logits_in_the_batch(positions):
    assert batch_change(tiny(positions=positions)) < TOL


def test_batch_test_catches_rows_that_see_each_other():
    assert batch_change(tiny(cls=BatchMixing)) > 1e-3


# --------------------------------------------------------------------------- parameter count
@pytest.mark.parametrize("changes", [
    {}, dict(positions="learned"), dict(positions="none"), dict(num_layers=1, d_ff=24),
    dict(vocab_size=7, d_model=32, num_heads=4, num_layers=3, positions="learned", max_len=9),
])
def test_parameter_formula_counts_every_parameter(changes):
    c = config(**changes)
    assert gpt_parameter_count(c) == count(GPT(c))


def test_the_tied_matrix_is_counted_once():
    c = config()
    model = GPT(c)
    assert count(model) == sum(p.numel() for p in model.state_dict().values()) - c.vocab_size * c.d_model


def test_gpt2_small_has_124_439_808_parameters():
    c = GPTConfig(vocab_size=50257, d_model=768, num_heads=12, num_layers=12, d_ff=3072, positions="learned",
                  max_len=1024)
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = GPT(c)
    assert model.tok_embed.weight.is_meta and model.pe.shape == (1024, 768)
    assert count(model) == gpt_parameter_count(c) == 124_439_808


# --------------------------------------------------------------------------- positions
def test_sinusoidal_positions_are_a_buffer_outside_the_state_dict():
    model = tiny()
    assert "pe" in dict(model.named_buffers()) and "pe" not in dict(model.named_parameters())
    assert "pe" not in model.state_dict()
    assert torch.equal(model.pe, sinusoidal_positional_encoding(32, 16))
    model.to(torch.float64)
    assert model.pe.dtype == torch.float64
    torch.testing.assert_close(model.pe, sinusoidal_positional_encoding(32, 16).double(), atol=1e-7, rtol=0)
    assert model(tokens(2, 5, seed=4)).dtype == torch.float64


@pytest.mark.parametrize("wrapped", [False, True])
def test_sinusoidal_table_comes_back_when_a_meta_model_is_materialized(wrapped):
    # to_empty allocates every tensor uninitialized, and load_state_dict cannot refill pe (it is not
    # saved): the table must be written again, also when the GPT sits inside a GPTTranslator.
    with torch.device("meta"):
        model = GPT(config())
        if wrapped:
            model = GPTTranslator(model)
    gpt = model.gpt if wrapped else model
    assert gpt.pe.is_meta
    model.to_empty(device="cpu")
    assert gpt.pe.device.type == "cpu" and torch.equal(gpt.pe, sinusoidal_positional_encoding(32, 16))
    model.load_state_dict(tiny().state_dict() if not wrapped else GPTTranslator(tiny()).state_dict())
    torch.testing.assert_close(gpt.eval()(tokens(2, 5, seed=4)), tiny()(tokens(2, 5, seed=4)), atol=0, rtol=0)


def test_learned_positions_are_a_parameter_at_the_sinusoidal_scale():
    model = tiny(positions="learned")
    assert isinstance(model.pe, nn.Parameter) and model.pe.shape == (32, 16)
    assert "pe" in dict(model.named_parameters()) and "pe" in model.state_dict()
    assert abs(model.pe.square().mean().item() - 0.5) < 0.15, "mean square 1/2, as the sinusoidal table"


def test_no_positions_has_no_table():
    model = tiny(positions="none")
    assert model.pe is None and "pe" not in model.state_dict() and "pe" not in dict(model.named_parameters())
    x = tokens(2, 6, seed=4)
    x[1, 0] = x[0, 0]
    with torch.no_grad():
        first = model(x)[:, 0]
    torch.testing.assert_close(first[0], first[1], atol=TOL, rtol=0)


@pytest.mark.parametrize("positions", POSITIONS)
def test_a_repeated_token_differs_along_the_row_only_through_positions(positions):
    # Without positions every position of "a a a a a" sees the same keys and values: the same logits.
    with torch.no_grad():
        logits = tiny(positions=positions)(torch.full((1, 5), 4))[0]
    spread = (logits - logits[0]).abs().max().item()
    assert spread < TOL if positions == "none" else spread > 1e-3


@pytest.mark.parametrize("positions, num_layers", [("none", 1), ("none", 2), ("sinusoidal", 1)])
def test_without_positions_order_comes_only_from_the_causal_mask(positions, num_layers):
    # One layer, no positions: the last token attends to a set of tokens, whose order it cannot see.
    # A second layer sees it through the causal mask: each earlier token summed a different prefix.
    x = tokens(1, 6, seed=5)
    swapped = x[:, [2, 0, 4, 1, 3, 5]]
    model = tiny(positions=positions, num_layers=num_layers)
    with torch.no_grad():
        change = (model(x)[:, -1] - model(swapped)[:, -1]).abs().max().item()
    assert change < TOL if (positions, num_layers) == ("none", 1) else change > 1e-3


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("positions", POSITIONS)
def test_every_parameter_of_the_translator_gets_a_gradient(positions):
    result = check_gradients(GPTTranslator(tiny(positions=positions)), *pair())
    assert result.passed, str(result)


def test_learned_positions_get_the_same_gradient_every_time():
    # Indexing a parameter, pe[positions], has a backward that on several threads adds the gradients of
    # repeated rows in a varying order: the same step gave other weights on every run. F.embedding does not.
    model = GPT(GPTConfig(vocab_size=V, d_model=32, num_heads=4, num_layers=1, d_ff=32, max_len=48,
                          positions="learned", dropout=0.0))
    x = torch.randint(1, V, (128, 41), generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = set()
        for _ in range(10):
            model.zero_grad()
            model(x).square().mean().backward()
            grads.add(tuple(model.pe.grad.flatten().tolist()))
    finally:
        torch.set_num_threads(threads)
    assert len(grads) == 1


def test_gradient_check_catches_detached_positions():
    result = check_gradients(GPTTranslator(tiny(cls=DetachedPositions, positions="learned")), *pair())
    assert not result.passed and "gpt.pe" in result.detail


@pytest.mark.parametrize("positions", POSITIONS)
def test_backward_through_gpt_reaches_every_parameter(positions):
    model = tiny(positions=positions, num_layers=3).train()
    x = tokens(3, 9, seed=6)
    x[1, 6:] = PAD
    loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten(), ignore_index=PAD)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} gets a gradient that is not finite"
        if name.endswith("k_proj.bias"):
            # q . b_k adds one constant to all of a query's scores, which softmax ignores: zero up to rounding
            # (chapter 10's check_gradients, which asks only for "not all zeros", passes it on that rounding).
            assert p.grad.abs().max() < 1e-6, name
        else:
            assert p.grad.abs().max() > 1e-4, f"{name} gets a gradient of (nearly) zeros"


# --------------------------------------------------------------------------- layout
def test_output_projection_is_the_token_embedding():
    model = tiny()
    assert isinstance(model.tok_embed, Embedding)
    assert model.generator.weight is model.tok_embed.weight
    assert model.generator.bias is None
    assert "generator.weight" not in dict(model.named_parameters())  # one matrix, listed once
    x = torch.tensor([[3, 5]])
    assert torch.equal(model.tok_embed(x), model.tok_embed.weight[x] * 4.0), "embedding times sqrt(16)"


def test_blocks_are_pre_norm_encoder_layers_under_a_final_norm():
    model = tiny(num_layers=3, dropout=0.2)
    assert len(model.blocks) == 3 and isinstance(model.final_norm, LayerNorm)
    for block in model.blocks:
        assert isinstance(block, EncoderLayer)
        assert block.attn_residual.norm_first and block.ff_residual.norm_first
        assert block.attn_residual.dropout.p == 0.2


# --------------------------------------------------------------------------- against torch.nn
def torch_encoder(model):
    """nn.TransformerEncoder, pre-norm with a final LayerNorm, holding the weights of ``model``'s blocks."""
    c = model.config
    layer = nn.TransformerEncoderLayer(c.d_model, c.num_heads, c.d_ff, dropout=0.0, batch_first=True,
                                       norm_first=True)
    encoder = nn.TransformerEncoder(layer, c.num_layers, norm=nn.LayerNorm(c.d_model), enable_nested_tensor=False)
    with torch.no_grad():
        for ours, theirs in zip(model.blocks, encoder.layers):
            a = ours.self_attn
            theirs.self_attn.in_proj_weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
            theirs.self_attn.in_proj_bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
            theirs.self_attn.out_proj.load_state_dict(a.out_proj.state_dict())
            theirs.linear1.load_state_dict(ours.feed_forward.linear1.state_dict())
            theirs.linear2.load_state_dict(ours.feed_forward.linear2.state_dict())
            theirs.norm1.load_state_dict(ours.attn_residual.norm.state_dict())
            theirs.norm2.load_state_dict(ours.ff_residual.norm.state_dict())
        encoder.norm.load_state_dict(model.final_norm.state_dict())
    return encoder.eval()


def torch_logits(model, encoder, x):
    """Logits (B, T, V) from F.embedding, ``model``'s position table, ``encoder`` and the tied matrix."""
    c, W = model.config, model.tok_embed.weight
    h = F.embedding(x, W) * math.sqrt(c.d_model)
    if model.pe is not None:
        h = h + model.pe[token_positions(x, c.pad_id)]
    future = torch.ones(x.size(1), x.size(1), dtype=torch.bool).triu(1)  # torch: True = may NOT attend
    return encoder(h, mask=future, src_key_padding_mask=x == c.pad_id) @ W.T


def right_padded():
    x = tokens(4, 10, seed=7)
    for row, length in enumerate([10, 6, 3, 8]):
        x[row, length:] = PAD
    return x


@pytest.mark.parametrize("positions", POSITIONS)
def test_matches_a_torch_nn_pre_norm_encoder_under_a_causal_mask(positions):
    model = tiny(positions=positions, d_model=32, num_heads=4, num_layers=3)
    perturb_vectors(model, 8)
    encoder, x = torch_encoder(model), right_padded()
    real = x != PAD
    with torch.no_grad():
        ours, theirs = model(x), torch_logits(model, encoder, x)
    torch.testing.assert_close(ours[real], theirs[real], atol=TOL, rtol=0)


def test_torch_comparison_catches_a_forgotten_final_norm():
    model = tiny(d_model=32, num_heads=4)
    perturb_vectors(model, 8)
    encoder, x = torch_encoder(model), right_padded()
    encoder.norm = nn.LayerNorm(32)  # torch's fresh norm: gain 1, shift 0
    real = x != PAD
    with torch.no_grad():
        assert (model(x)[real] - torch_logits(model, encoder, x)[real]).abs().max() > 1e-3


def transformer_config(norm_first):
    return TransformerConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=16, num_heads=2, num_layers=2, d_ff=32,
                             dropout=0.0, max_len=32, norm_first=norm_first)


def test_norm_first_transformer_matches_torch_nn_transformer():
    torch.manual_seed(0)
    ours = Transformer(transformer_config(norm_first=True)).eval()
    perturb_vectors(ours, 9)
    reference = TorchReference(ours.config).copy_from(ours).eval()
    src, tgt = pair()
    with torch.no_grad():
        torch.testing.assert_close(ours(src, tgt), reference(src, tgt), atol=TOL, rtol=0)


def test_pre_norm_adds_the_two_final_norms_only():
    pre, post = Transformer(transformer_config(True)), Transformer(transformer_config(False))
    assert count(pre) - count(post) == 4 * 16
    assert count(TorchReference(transformer_config(True))) == count(pre)


# --------------------------------------------------------------------------- chapter 10's checks
@pytest.mark.parametrize("training", [False, True])
def test_chapter_10_checks_pass_and_restore_the_mode(training):
    model = GPTTranslator(tiny(dropout=0.1)).train(training)
    results = run_checks(model, *pair())
    assert {"causal", "padding", "batch independence", "masked rows", "gradients"} <= {r.name for r in results}
    assert all(r.passed for r in results), [str(r) for r in results if not r.passed]
    assert all(m.training == training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_chapter_10_checks_restore_mixed_modes():
    model = GPTTranslator(tiny(dropout=0.1)).train()
    model.gpt.blocks[1].eval()
    run_checks(model, *pair())
    assert model.training and model.gpt.blocks[0].training and model.gpt.final_norm.training
    assert not any(m.training for m in model.gpt.blocks[1].modules())


@pytest.mark.parametrize("cls, check", [(NoCausalMask, check_causal), (NoPaddingMask, check_padding),
                                        (IndexPositions, check_padding)])
def test_chapter_10_checks_catch_the_planted_bugs(cls, check):
    # check_padding pads the source, which is the middle of the GPT's row.
    result = check(GPTTranslator(tiny(cls=cls)), *pair())
    assert not result.passed and result.detail


def test_the_translator_reads_source_and_target_as_one_row():
    model = tiny()
    src, tgt = pair()
    translator = GPTTranslator(model)
    assert translator.gpt is model and translator.config is model.config
    with torch.no_grad():
        assert torch.equal(translator(src, tgt), model(torch.cat([src, tgt], dim=1))[:, 7:])


# --------------------------------------------------------------------------- generation
class AsEncoderDecoder(nn.Module):
    """A GPTTranslator behind chapter 7's encode/decode, for book.train.greedy_decode: the "memory" is
    the source itself, and decode re-reads source and output as one row."""

    def __init__(self, translator):
        super().__init__()
        self.translator, self.config = translator, translator.config

    def encode(self, src, src_mask=None):
        return src

    def decode(self, tgt, memory, src_mask=None):
        return self.translator(memory, tgt)


def assert_padded_after_the_end(ids, end):
    for row in ids.tolist():
        if end in row:
            assert all(t == PAD for t in row[row.index(end) + 1:]), f"{row}: not padding after {end}"


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("max_len", [1, 5, 12])
def test_cached_generation_gives_the_recomputed_ids(positions, max_len):
    src = sources()
    for seed in range(2):
        model = GPTTranslator(tiny(seed, positions=positions))
        free = generate(model, src, 12, START, -1, cache=False)  # -1: no row ever ends
        for end in (-1, free[0, 2].item()):  # the second: row 0 ends at its third token
            expected = greedy_decode(AsEncoderDecoder(model), src, max_len, START, end)
            assert torch.equal(generate(model, src, max_len, START, end, cache=False), expected)
            assert torch.equal(generate(model, src, max_len, START, end), expected)
            assert expected.size(1) <= max_len
            assert_padded_after_the_end(expected, end)


def test_rows_that_end_early_are_padded_while_the_others_go_on():
    src = sources()

    def first_ends(model):  # (model, end) where the rows first write `end` at different steps
        free = generate(model, src, 12, START, -1).tolist()
        for end in range(1, V):
            steps = {row.index(end) if end in row else 12 for row in free}
            if len(steps) > 1 and min(steps) < 10:
                yield model, end

    model, end = next(found for seed in range(10) for found in first_ends(GPTTranslator(tiny(seed))))
    ids = generate(model, src, 12, START, end)
    assert (ids == PAD).any(), "some row ended before the others"
    assert_padded_after_the_end(ids, end)
    assert torch.equal(ids, generate(model, src, 12, START, end, cache=False))
    assert torch.equal(ids, greedy_decode(AsEncoderDecoder(model), src, 12, START, end))


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("chunks", [[4, 1, 1, 1, 1, 1, 1], [3, 3, 3, 1], [10]])
def test_feeding_a_prompt_then_more_tokens_gives_the_forward_logits(positions, chunks):
    model = tiny(positions=positions)
    perturb_vectors(model, 10)
    x = tokens(3, 10, seed=8)
    x[0, 2:4] = PAD  # padding inside the prompt,
    x[1, 5:7] = PAD  # after it,
    x[2, 8:] = PAD  # and at the end
    with torch.no_grad():
        expected, cache, pieces, start = model(x), start_gpt_cache(model, 3), [], 0
        for n in chunks:
            pieces.append(feed(model, x[:, start:start + n], cache))
            start += n
    fed = torch.cat(pieces, dim=1)
    assert fed.shape == expected.shape == (3, 10, V)
    torch.testing.assert_close(fed, expected, atol=TOL, rtol=0)
    assert isinstance(cache, GPTCache) and len(cache.keys) == len(cache.values) == 2
    assert cache.keys[0].shape == cache.values[1].shape == (3, 2, 10, 8)
    assert torch.equal(cache.keep, (x != PAD)[:, None, None, :])
    assert torch.equal(cache.next_position, (x != PAD).sum(dim=1))


def test_generate_runs_in_eval_mode_and_restores_the_training_mode():
    model = GPTTranslator(tiny(dropout=0.3)).train()
    src = sources()
    torch.manual_seed(0)
    ids = generate(model, src, 6, START, -1)
    assert all(m.training for m in model.modules())
    model.eval()
    assert torch.equal(generate(model, src, 6, START, -1, cache=False), ids), "dropout was on while generating"
    assert not any(m.training for m in model.modules())


# --------------------------------------------------------------------------- dropout
def test_dropout_is_random_in_training_and_off_in_eval():
    model, x = tiny(dropout=0.1), tokens(2, 8, seed=9)
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert (model(x) - model(x)).abs().max() > 1e-3
        assert torch.equal(tiny(dropout=0.0).train()(x), tiny(dropout=0.0).train()(x)), "without dropout: no noise"


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("changes, match", [
    (dict(d_model=18, num_heads=4), "d_model=18 is not divisible by num_heads=4"),
    (dict(d_model=15, num_heads=3), "even.*got 15"),
    (dict(vocab_size=0), "vocab_size.*got 0"),
    (dict(num_layers=-1), "num_layers.*got -1"),
    (dict(d_ff=-32), "d_ff.*got -32"),
    (dict(max_len=0), "max_len.*got 0"),
    (dict(num_heads=True), "num_heads.*got True"),
    (dict(d_model=16.0), r"d_model.*got 16\.0"),
    (dict(d_ff=32.5), r"d_ff.*got 32\.5"),
    (dict(dropout=1.0), r"dropout.*got 1\.0"),
    (dict(dropout=-0.1), r"dropout.*got -0\.1"),
    (dict(dropout=True), "dropout.*got True"),
    (dict(dropout="0.1"), "dropout.*got '0.1'"),
    (dict(pad_id=V), f"pad_id={V}"),
    (dict(pad_id=-1), "pad_id=-1"),
    (dict(pad_id=0.0), r"pad_id=0\.0"),
    (dict(positions="rope"), "positions.*'rope'"),
])
def test_bad_config_raises_value_error_naming_the_value(changes, match):
    with pytest.raises(ValueError, match=match):
        config(**changes)


@pytest.mark.parametrize("bad", [dict(vocab_size=V, d_model=16), config().__dict__, transformer_config(True)])
def test_gpt_needs_a_gpt_config(bad):
    with pytest.raises(ValueError, match="GPTConfig"):
        GPT(bad)


@pytest.mark.parametrize("x, match", [
    (torch.tensor([1, 2, 3]), r"2-D.*shape \(3,\)"),
    ([[1, 2, 3]], "2-D.*list"),
    (torch.ones(2, 3), "integer.*float32"),
    (torch.ones(2, 3, dtype=torch.bool), "integer.*bool"),
    (torch.full((2, 3), V), rf"\[0, {V}\).*max {V}"),
    (torch.tensor([[1, -1, 2]]), rf"\[0, {V}\).*min -1"),
    (torch.ones(1, 33, dtype=torch.long), "length 33.*max_len=32"),
    (torch.ones(2, 0, dtype=torch.long), "length 0"),
])
def test_bad_tokens_raise_value_error_naming_the_problem(x, match):
    with pytest.raises(ValueError, match=match):
        tiny()(x)


def test_translator_needs_equal_batches_of_2d_tokens():
    model, (src, tgt) = GPTTranslator(tiny()), pair()
    with pytest.raises(ValueError, match="same batch size, got 3 and 2"):
        model(src, tgt[:2])
    with pytest.raises(ValueError, match="src must be a 2-D"):
        model(src[0], tgt)
    with pytest.raises(ValueError, match="tgt must be a 2-D"):
        model(src, tgt.tolist())


@pytest.mark.parametrize("max_len, match", [(0, "max_len.*got 0"), (-2, "max_len.*got -2"), (2.0, r"got 2\.0"),
                                            (True, "got True"), (26, "source length 7 .* max_len 26 exceeds")])
def test_generate_refuses_a_bad_max_len(max_len, match):
    with pytest.raises(ValueError, match=match):
        generate(GPTTranslator(tiny()), sources(), max_len, START, 2)


@pytest.mark.parametrize("cache", [True, False])
def test_generate_accepts_a_source_that_exactly_fits(cache):
    model, src = GPTTranslator(tiny(max_len=10)), sources()[:, :6]
    with torch.no_grad():
        model(src, tokens(4, 4, seed=14))  # the longest row generate feeds: 6 source tokens, start, 3 generated
    assert generate(model, src, 4, START, -1, cache=cache).shape == (4, 4)


def test_generate_refuses_other_models_and_bad_sources():
    model = GPTTranslator(tiny())
    with pytest.raises(ValueError, match="GPTTranslator.*GPT"):
        generate(model.gpt, sources(), 3, START, 2)
    with pytest.raises(ValueError, match="src must be a 2-D"):
        generate(model, sources()[0], 3, START, 2)
    with pytest.raises(ValueError, match=re.escape(f"src ids must be in [0, {V})")):
        generate(model, sources() + V, 3, START, 2)


# --------------------------------------------------------------------------- more bad input
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16])
def test_integer_dtypes_the_embedding_cannot_take_raise_value_error(dtype):
    with pytest.raises(ValueError, match=f"integer token ids.*{dtype}"):
        tiny()(torch.ones(2, 3, dtype=dtype))
    assert tiny()(torch.ones(2, 3, dtype=torch.int32)).isfinite().all()


@pytest.mark.parametrize("positions", ["learned", "none"])
def test_an_odd_width_needs_no_sinusoidal_table(positions):
    assert tiny(d_model=15, num_heads=3, positions=positions)(tokens(2, 4, seed=1)).shape == (2, 4, V)
    with pytest.raises(ValueError, match="even for the sinusoidal table, got 15"):
        config(d_model=15, num_heads=3, positions="sinusoidal")


@pytest.mark.parametrize("field, value, match", [("positions", "rope", "'rope'"), ("num_layers", 0, "num_layers"),
                                                 ("pad_id", 99, "pad_id=99")])
def test_gpt_checks_a_config_changed_after_it_was_made(field, value, match):
    c = config()
    setattr(c, field, value)
    with pytest.raises(ValueError, match=match):
        GPT(c)


def test_translator_wraps_only_a_gpt_and_names_the_bad_side():
    with pytest.raises(ValueError, match="wraps a GPT, got Linear"):
        GPTTranslator(nn.Linear(3, 3))
    src, tgt = pair()
    with pytest.raises(ValueError, match="tgt must hold integer token ids"):
        GPTTranslator(tiny())(src, tgt.float())


@pytest.mark.parametrize("start_id, end_id, match", [(V, 2, f"start_id.*got {V}"), (1.5, 2, r"start_id.*got 1\.5"),
                                                     (None, 2, "start_id.*None"), (START, True, "end_id.*True"),
                                                     (START, "x", "end_id.*'x'")])
@pytest.mark.parametrize("cache", [True, False])
def test_generate_refuses_bad_ids_and_restores_the_mode(start_id, end_id, match, cache):
    model = GPTTranslator(tiny()).train()
    with pytest.raises(ValueError, match=match):
        generate(model, sources(), 3, start_id, end_id, cache=cache)
    assert model.training


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_cached_generation_works_in_the_models_dtype(dtype):
    model = GPTTranslator(tiny()).to(dtype)
    assert start_gpt_cache(model.gpt, 2).keys[0].dtype == dtype
    assert torch.equal(generate(model, sources(), 5, START, 2), generate(model, sources(), 5, START, 2, cache=False))


def test_feed_refuses_what_the_cache_cannot_take():
    gpt = tiny(max_len=10)
    cache = start_gpt_cache(gpt, 2)
    feed(gpt, tokens(2, 8, seed=1), cache)
    with pytest.raises(ValueError, match="holds 8 tokens; 3 more would pass the model's max_len=10"):
        feed(gpt, tokens(2, 3, seed=2), cache)
    with pytest.raises(ValueError, match="3 rows, the cache 2"):
        feed(gpt, tokens(3, 1, seed=2), cache)
    with pytest.raises(ValueError, match=rf"ids must be in \[0, {V}\)"):
        feed(gpt, torch.full((2, 1), V), cache)
    assert feed(gpt, tokens(2, 2, seed=3), cache).shape == (2, 2, V)


def test_feed_refuses_a_cache_made_for_another_gpt():
    gpt = tiny()
    with pytest.raises(ValueError, match=r"\(layers, heads, d_k\) = \(2, 2, 8\); this GPT has \(3, 2, 8\)"):
        feed(tiny(num_layers=3), tokens(1, 2, seed=1), start_gpt_cache(gpt, 1))
    with pytest.raises(ValueError, match=r"this GPT has \(2, 4, 4\)"):
        feed(tiny(num_heads=4), tokens(1, 2, seed=1), start_gpt_cache(gpt, 1))
    with pytest.raises(ValueError, match="cache must be a GPTCache"):
        feed(gpt, tokens(1, 2, seed=1), None)
    for batch_size in (-1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 0"):
            start_gpt_cache(gpt, batch_size)


def test_translator_names_src_and_tgt_when_the_row_is_too_long():
    model = GPTTranslator(tiny(max_len=16))
    with pytest.raises(ValueError, match=r"src \(length 10\) and tgt \(length 10\) make a row of 20 tokens"):
        model(tokens(1, 10, seed=1), tokens(1, 10, seed=2))
    assert model(tokens(1, 10, seed=1), tokens(1, 6, seed=2)).shape == (1, 6, V)


def test_parameter_count_takes_only_a_gpt_config():
    with pytest.raises(ValueError, match="config must be a GPTConfig, got dict"):
        gpt_parameter_count({"vocab_size": V})
