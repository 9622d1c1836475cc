"""book.checks: every check passes on the book's Transformer, catches the bug it is made for, and refuses bad input."""
import math

import pytest
import torch

from book.attention import padding_mask, scaled_dot_product_attention
from book.checks import (CheckResult, check_attention, check_batch_independence, check_causal, check_components,
                         check_gradients, check_masked_rows, check_overfit, check_padding, run_checks)
from book.multi_head import MultiHeadAttention
from book.residual import LayerNorm
from book.transformer import TorchReference, Transformer, TransformerConfig

V = 13


def tiny(cls=Transformer, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return cls(TransformerConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=16, num_heads=2, num_layers=1, d_ff=32,
                                 dropout=dropout, max_len=32))


def data():
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(1, V, (3, 7), generator=g), torch.randint(1, V, (3, 6), generator=g)
    src[1, 4:] = 0
    tgt[2, 4:] = 0
    return src, tgt


def with_attention(model, cls):
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.__class__ = cls
    return model


class LeakyMask(Transformer):
    def decode(self, tgt, memory, src_mask=None, tgt_mask=None):
        ahead = torch.ones(tgt.size(1), tgt.size(1), dtype=torch.bool).tril(1)
        return super().decode(tgt, memory, src_mask, padding_mask(tgt, self.config.pad_id) & ahead)


class QueryMask(Transformer):
    def encode(self, src, src_mask=None):
        return super().encode(src, (src != self.config.pad_id).unsqueeze(2))


class Detached(Transformer):
    def encode(self, src, src_mask=None):
        return super().encode(src, src_mask).detach()


class BatchMean(Transformer):
    def forward(self, src, tgt):
        logits = super().forward(src, tgt)
        return logits + logits.mean(dim=0, keepdim=True)


class NaNRows(MultiHeadAttention):
    def forward(self, query, key, value, mask=None):
        q, k, v = (self.q_proj(query), self.k_proj(key), self.v_proj(value))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return self.out_proj(torch.softmax(scores, dim=-1) @ v)  # a single head, with NaN for an empty row


class WrongScale(MultiHeadAttention):
    def forward(self, query, key, value, mask=None):
        return 1.5 * super().forward(query, key, value, mask)


class UnbiasedNorm(LayerNorm):
    def forward(self, x):
        mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
        return self.weight * (x - mean) / (std + self.eps) + self.bias


class Constant(torch.nn.Module):
    """Ignores its input: it cannot learn a batch by heart."""
    def __init__(self):
        super().__init__()
        self.config = TransformerConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=16, num_heads=2)
        self.bias = torch.nn.Parameter(torch.zeros(V))

    def forward(self, src, tgt):
        return self.bias.expand(*tgt.shape, V)


@pytest.mark.parametrize("training", [False, True])
def test_every_check_passes_on_the_transformer_and_restores_the_mode(training):
    model = tiny(dropout=0.3).train(training)
    src, tgt = data()
    results = run_checks(model, src, tgt)
    assert len(results) >= 4 and all(isinstance(r, CheckResult) for r in results)
    assert {"causal", "padding", "batch independence", "gradients"} <= {r.name for r in results}
    assert all(r.passed for r in results), [str(r) for r in results if not r.passed]
    assert check_overfit(model, src, tgt).passed
    assert all(m.training == training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_mixed_modes_are_restored():
    model = tiny(dropout=0.3).train()
    model.encoder_layers.eval()
    check_causal(model, *data())
    assert model.training and not model.encoder_layers[0].training and model.decoder_layers[0].training


@pytest.mark.parametrize("cls, check", [
    (LeakyMask, check_causal), (QueryMask, check_padding), (Detached, check_gradients),
    (BatchMean, check_batch_independence), (Constant, check_overfit),
])
def test_each_bug_is_caught_by_its_check(cls, check):
    model = Constant() if cls is Constant else tiny(cls)
    result = check(model, *data())
    assert not result.passed and result.detail


def test_masked_rows_catch_a_softmax_that_returns_nan():
    result = check_masked_rows(with_attention(tiny(), NaNRows), *data())
    assert not result.passed and "NaN" in result.detail


@pytest.mark.parametrize("planted", ["attention", "norm"])
def test_components_catch_a_wrong_layer(planted):
    model = tiny()
    for module in model.modules():
        if planted == "attention" and isinstance(module, MultiHeadAttention):
            module.__class__ = WrongScale
        if planted == "norm" and isinstance(module, LayerNorm):
            module.__class__ = UnbiasedNorm
    assert check_components(model).passed is False
    assert check_components(tiny()).passed


def test_check_attention_against_torch():
    assert check_attention(scaled_dot_product_attention).passed
    assert not check_attention(lambda q, k, v, mask: scaled_dot_product_attention(q * 2, k, v, mask)).passed


def test_nan_logits_never_pass():
    class AllNaN(Transformer):
        def forward(self, src, tgt):
            return super().forward(src, tgt) * float("nan")
    model = tiny(AllNaN)
    for check in (check_causal, check_padding, check_batch_independence, check_masked_rows):
        assert not check(model, *data()).passed


class NoPad(torch.nn.Module):
    def forward(self, src, tgt):
        return torch.zeros(*tgt.shape, V)


@pytest.mark.parametrize("check", [check_causal, check_padding, check_batch_independence, check_gradients,
                                   check_masked_rows, check_overfit, run_checks])
def test_bad_input_raises_value_error_naming_it(check):
    src, tgt = data()
    with pytest.raises(ValueError, match="pad_id"):
        check(NoPad(), src, tgt)
    with pytest.raises(ValueError, match="tgt"):
        check(tiny(), src, tgt[0])
    with pytest.raises(ValueError, match="batch"):
        check(tiny(), src, tgt[:2])
    with pytest.raises(ValueError, match="src"):
        check(tiny(), src.float(), tgt)


@pytest.mark.parametrize("check", [check_gradients, run_checks])
@pytest.mark.parametrize("side", ["src", "tgt"])
def test_gradients_refuse_a_batch_where_a_correct_model_gets_zeros(check, side):
    src, tgt = data()
    one_real = {"src": src, "tgt": tgt}
    one_real[side][:, 1:] = 0  # every row of one side: one real token, then padding
    model = tiny()
    # Why the check must refuse: attention over one key gives it weight 1 whatever q and k are, so a correct
    # model's query projections get exactly zero gradient, and the check would report a bug that is not there.
    logits = model(one_real["src"], one_real["tgt"])
    (logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    attention = model.encoder_layers[0].self_attn if side == "src" else model.decoder_layers[0].self_attn
    assert not attention.q_proj.weight.grad.any()
    with pytest.raises(ValueError, match=rf"non-padding tokens.* 1 in {side}\b"):
        check(tiny(), one_real["src"], one_real["tgt"])
    one_real[side][0, 1] = 3  # a second real token in one row is enough
    assert check_gradients(tiny(), one_real["src"], one_real["tgt"]).passed


def test_padding_check_says_when_the_longer_rows_are_too_long_for_the_model():
    model = tiny()  # max_len=32
    src, tgt = torch.randint(1, V, (2, 31)), torch.randint(1, V, (2, 3))
    with pytest.raises(ValueError, match=r"check_padding appends 2 padding tokens to src \(2, 31\).*max_len=32"):
        check_padding(model, src, tgt)
    assert check_padding(model, src[:, :30], tgt).passed


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_the_torch_references_work_in_any_precision(dtype):
    src, tgt = data()
    assert all(r.passed for r in run_checks(tiny().to(dtype), src, tgt))
    wrong = tiny().to(dtype)
    for module in wrong.modules():
        if isinstance(module, MultiHeadAttention):
            module.__class__ = WrongScale
    assert not check_components(wrong).passed


class NaNNorm(LayerNorm):
    def forward(self, x):
        return super().forward(x) * float("nan")


class NaNAttention(MultiHeadAttention):
    def forward(self, query, key, value, mask=None):
        return super().forward(query, key, value, mask) * float("nan")


@pytest.mark.parametrize("cls", [NaNNorm, NaNAttention])
def test_components_fail_a_layer_whose_output_is_not_finite(cls):
    # NaN compares False with everything: a layer that returns NaN must not slip under the tolerance.
    model = tiny()
    for module in model.modules():
        if isinstance(module, cls.__base__):
            module.__class__ = cls
    result = check_components(model)
    assert not result.passed and "NaN or infinity" in result.detail


def test_check_attention_fails_a_nan_output_and_says_so():
    result = check_attention(lambda q, k, v, mask: scaled_dot_product_attention(q, k, v, mask)[0] * float("nan"))
    assert not result.passed and "NaN or infinity" in result.detail and "matches" not in result.detail


def swapped(q, k, v, mask):
    output, weights = scaled_dot_product_attention(q, k, v, mask)
    return weights, output


@pytest.mark.parametrize("attention, message", [
    (None, "needs a function.*got NoneType"),
    (swapped, r"first element is \(2, 3, 4, 6\), the shape of the weights"),
    (lambda q, k, v, mask: scaled_dot_product_attention(q, k, v, mask)[0][:, :, :1], r"got \(2, 3, 1, 5\)"),
    (lambda q, k, v, mask: "output", "got str"),
])
def test_check_attention_refuses_what_is_no_attention_function(attention, message):
    with pytest.raises(ValueError, match=message):
        check_attention(attention)


def test_check_components_refuses_what_is_no_module():
    with pytest.raises(ValueError, match="torch.nn.Module, got NoneType"):
        check_components(None)


@pytest.mark.parametrize("check, name", [(check_padding, "extra"), (check_overfit, "steps")])
@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_counts_must_be_integers_of_at_least_one(check, name, value):
    # extra=0 would pass vacuously, steps=0 could never pass; the others failed deep inside torch or Python.
    with pytest.raises(ValueError, match=rf"{check.__name__}: {name} must be an integer >= 1, got {value!r}"):
        check(tiny(), *data(), **{name: value})


class DetachedLogits(Transformer):
    def forward(self, src, tgt):
        return super().forward(src, tgt).detach()


def test_overfit_fails_a_model_that_cannot_train_instead_of_raising():
    frozen = tiny().requires_grad_(False)
    result = check_overfit(frozen, *data())
    assert not result.passed and "no trainable parameters" in result.detail
    result = check_overfit(tiny(DetachedLogits), *data())
    assert not result.passed and "does not depend on any trainable parameter" in result.detail


# Issue 28, section 2: the kit never fails a correct model and never passes a broken one.

class LargeLogits(Transformer):
    """A correct model with large logits: the output is 1000 times chapter 7's (a sharper softmax, no bug)."""
    def forward(self, src, tgt):
        return 1000 * super().forward(src, tgt)


def tied_times_100(seed=0):
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=64, num_heads=4, num_layers=2,
                                          d_ff=128, dropout=0.1, max_len=32, share_embeddings=True))
    with torch.no_grad():
        model.src_embed.weight.mul_(100)  # one tied matrix: embeddings and output projection alike
    return model


@pytest.mark.parametrize("make", [lambda: tiny(LargeLogits), tied_times_100])
def test_large_logits_pass_padding_and_batch_independence(make):
    model = make()
    src, tgt = data()
    assert model.eval()(src, tgt).abs().max() > 100
    for check in (check_causal, check_padding, check_batch_independence):
        result = check(model, src, tgt)
        assert result.passed, result


class TrainOnlyLeak(Transformer):
    """Bug: in training, the decoder's mask lets position t see t + 1; in eval mode it is right."""
    def decode(self, tgt, memory, src_mask=None, tgt_mask=None):
        if self.training and tgt_mask is None:
            ahead = torch.ones(tgt.size(1), tgt.size(1), dtype=torch.bool).tril(1)
            tgt_mask = padding_mask(tgt, self.config.pad_id) & ahead
        return super().decode(tgt, memory, src_mask, tgt_mask)


class TrainOnlyQueryMask(Transformer):
    """Bug: in training, the source mask covers queries instead of keys."""
    def encode(self, src, src_mask=None):
        if self.training:
            src_mask = (src != self.config.pad_id).unsqueeze(2)
        return super().encode(src, src_mask)


@pytest.mark.parametrize("cls, check", [(TrainOnlyLeak, check_causal), (TrainOnlyQueryMask, check_padding)])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_a_bug_that_exists_only_in_training_is_caught(cls, check, dropout):
    model = tiny(cls, dropout=dropout).eval()
    result = check(model, *data())
    assert not result.passed and "train mode" in result.detail, result
    assert not model.training  # and the mode it found is back


@pytest.mark.parametrize("check", [check_causal, check_padding])
@pytest.mark.parametrize("norm_first", [False, True])
def test_train_mode_with_dropout_passes_a_correct_model(check, norm_first):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=16, num_heads=2, num_layers=2,
                                          d_ff=32, dropout=0.5, max_len=32, norm_first=norm_first)).train()
    state = torch.get_rng_state()
    result = check(model, *data())
    assert result.passed and "train mode" in result.detail, result
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random numbers are not touched


def test_torch_reference_passes_in_train_mode_and_fails_masked_rows_by_convention():
    torch.manual_seed(0)
    config = TransformerConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=16, num_heads=2, num_layers=2, d_ff=32,
                               dropout=0.3, max_len=32)
    reference = TorchReference(config).copy_from(Transformer(config)).train()
    src, tgt = data()
    for check in (check_causal, check_padding, check_batch_independence, check_gradients):
        result = check(reference, src, tgt)
        assert result.passed and ("train" in result.detail) == (check in (check_causal, check_padding)), result
    masked = check_masked_rows(reference, src, tgt)
    assert not masked.passed and "convention" in masked.detail
    assert "convention" in check_masked_rows.__doc__ and "torch.nn.Transformer" in check_masked_rows.__doc__


def test_held_dropout_masks_depend_on_the_index_only():
    from book.checks import HeldDropout
    x = torch.ones(2, 5, 8)
    with HeldDropout(seed=3):
        short = torch.nn.functional.dropout(x, 0.5)
    with HeldDropout(seed=3):
        long = torch.nn.functional.dropout(torch.ones(2, 7, 8), 0.5)
    assert torch.equal(long[:, :5], short) and 0.3 < (short == 0).float().mean() < 0.7
    assert set(short.unique().tolist()) == {0.0, 2.0}


def test_gradients_name_the_key_biases_as_zero_by_construction():
    result = check_gradients(tiny(), *data())
    assert result.passed and "zero by construction" in result.detail and "k_proj.bias" in result.detail, result


def test_gradients_pass_a_correct_model_whose_key_biases_get_exact_zeros():
    # Their exact gradient is zero; rounding may give zeros instead of noise, and the model is still right.
    model = tiny()
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.k_proj.bias.register_hook(torch.zeros_like)
    result = check_gradients(model, *data())
    assert result.passed, result


class WrongAxisSoftmax(MultiHeadAttention):
    """Bug: softmax over the queries; the key bias then matters, and it is judged like any other parameter."""
    def forward(self, query, key, value, mask=None):
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-2)
        return self.out_proj(weights @ v)


def test_gradients_do_not_excuse_a_key_bias_that_the_logits_depend_on():
    result = check_gradients(with_attention(tiny(), WrongAxisSoftmax), *data())
    assert "zero by construction" not in result.detail


class ZeroedMemory(Transformer):
    """Bug: the decoder receives zeros instead of the encoder's output; it can still learn a batch from the prefixes."""
    def encode(self, src, src_mask=None):
        return super().encode(src, src_mask) * 0


def test_overfit_fails_a_decoder_that_never_sees_the_source():
    result = check_overfit(tiny(ZeroedMemory), *data())
    assert not result.passed and "source" in result.detail, result


@pytest.mark.parametrize("seed, norm_first", [(1, False), (2, True)])
def test_overfit_passes_correct_models_of_other_sizes(seed, norm_first):
    torch.manual_seed(seed)
    wider = Transformer(TransformerConfig(src_vocab_size=V, tgt_vocab_size=V, d_model=32, num_heads=4, num_layers=2,
                                          d_ff=64, dropout=0.1, max_len=32, norm_first=norm_first))
    result = check_overfit(wider, *data())
    assert result.passed and "only the source tells" in result.detail, result


@pytest.mark.parametrize("vocab, src", [(2, [[1, 1, 0], [1, 0, 0]]), (V, [[3, 4, 0], [3, 4, 0]])])
def test_overfit_says_when_it_cannot_test_the_source(vocab, src):
    # One non-padding token, or one distinct source: no label can depend on the source alone.
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=16, num_heads=2,
                                          num_layers=1, d_ff=32, dropout=0.0, max_len=32))
    result = check_overfit(model, torch.tensor(src), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]))
    assert result.passed and "not tested" in result.detail, result
