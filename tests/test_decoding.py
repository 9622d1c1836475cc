"""book.decoding: the key/value cache and beam search (chapter 9), against what they replace."""
import itertools
import math

import pytest
import torch

from book.data import date_tokenizer
from book.decoding import (
    beam_search, decode_step, greedy_decode, lp, sequence_log_prob, start_cache, translate_beam,
)
from book.residual import LayerNorm
from book.train import greedy_decode as recompute_greedy_decode
from book.train import translate
from book.transformer import Transformer, TransformerConfig

TOKENIZER = date_tokenizer()
START, END = TOKENIZER.start_id, TOKENIZER.end_id
V = len(TOKENIZER)
SOURCES = ["25 November 2026", "1.1.2000", "Wednesday, November 25, 2026", "the 3rd of May 1999", "Jan 9, 1901"]

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def tiny(seed=0, **sizes):
    config = dict(src_vocab_size=V, tgt_vocab_size=V, d_model=16, num_heads=2, num_layers=2, d_ff=32,
                  dropout=0.0, max_len=64)
    config.update(sizes)
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(**config)).eval()


CONFIGS = {
    "post-norm": {},
    "one layer": dict(num_layers=1),
    "three layers, 4 heads": dict(num_layers=3, num_heads=4),
    "d_k and d_v apart": dict(d_k=3, d_v=5),
    "shared embeddings": dict(share_embeddings=True),
}


def padded_sources():
    src = TOKENIZER.encode_batch(SOURCES)
    assert (src == TOKENIZER.pad_id).any(dim=1).sum() >= 3  # most rows are padded
    return src


def stepwise_logits(model, src, ids):
    """Per-step logits (B, L, V): recomputed from each whole prefix, and from the cache."""
    src_mask = (src != model.config.pad_id).unsqueeze(1)
    tgt_in = torch.cat([torch.full_like(ids[:, :1], START), ids], dim=1)
    with torch.no_grad():
        memory = model.encode(src, src_mask)
        recomputed = torch.stack([model.decode(tgt_in[:, :t + 1], memory, src_mask)[:, -1]
                                  for t in range(ids.size(1))], dim=1)
        caches = start_cache(model, memory)
        cached = torch.stack([decode_step(model, tgt_in[:, t], t, caches, src_mask)
                              for t in range(ids.size(1))], dim=1)
    return recomputed, cached


# --- The cache


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("max_len", [1, 2, 11, 40])
def test_cached_greedy_gives_the_recomputing_ids(name, max_len):
    src = padded_sources()
    for seed in range(2):
        model = tiny(seed, **CONFIGS[name])
        for end in (END, -1):  # -1: no row ever ends, every row runs max_len steps
            expected = recompute_greedy_decode(model, src, max_len, START, end)
            assert torch.equal(greedy_decode(model, src, max_len, START, end), expected)
            assert torch.equal(greedy_decode(model, src, max_len, START, end, cache=False), expected)


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_of_every_step_agree_within_1e_5(name):
    src = padded_sources()
    model = tiny(1, **CONFIGS[name])
    for end in (END, -1):
        ids = greedy_decode(model, src, 30, START, end)
        recomputed, cached = stepwise_logits(model, src, ids)
        assert recomputed.shape == cached.shape == (src.size(0), ids.size(1), V)
        assert (recomputed - cached).abs().max() < 1e-5


def test_rows_that_finished_early_still_agree():
    # Take as END a token that the rows first write at different steps: the finished rows are then
    # padded while the others go on.
    src = padded_sources()
    def first_steps(model):  # per token: the set of steps at which the rows first write it
        free = recompute_greedy_decode(model, src, 20, START, -1).tolist()
        return [{row.index(end) if end in row else 20 for row in free} for end in range(V)]

    model, end = next((m, end) for m in map(tiny, range(10)) for end, first in enumerate(first_steps(m))
                      if len(first) > 1 and min(first) < 19)
    ids = recompute_greedy_decode(model, src, 20, START, end)
    assert (ids == TOKENIZER.pad_id).any()
    assert torch.equal(greedy_decode(model, src, 20, START, end), ids)
    recomputed, cached = stepwise_logits(model, src, ids)
    assert (recomputed - cached).abs().max() < 1e-5
    beam_ids, _ = beam_search(model, src, 20, START, end, beam_size=1)
    assert torch.equal(beam_ids, ids)


def test_a_generated_padding_token_is_masked_as_in_the_recomputing_decoder():
    # Force the model to emit pad_id as a real token: the decoder must ignore it as a key either way.
    model = tiny(0)
    src = padded_sources()
    ids = greedy_decode(model, src, 10, START, -1)
    ids[:, 2] = TOKENIZER.pad_id
    recomputed, cached = stepwise_logits(model, src, ids)
    assert (recomputed - cached).abs().max() < 1e-5


def count_rows(model, decode):
    counts = {"ff": 0, "memory": 0}
    layer = model.decoder_layers[-1]

    def hook(name):
        def count(module, inputs, output):
            counts[name] += inputs[0].shape[:-1].numel()
        return count

    handles = [layer.feed_forward.register_forward_hook(hook("ff")),
               layer.cross_attn.k_proj.register_forward_hook(hook("memory"))]
    decode()
    for h in handles:
        h.remove()
    return counts


@pytest.mark.parametrize("n", [1, 5, 17])
def test_each_step_computes_only_the_new_position(n):
    model = tiny(0)
    src = TOKENIZER.encode_batch(["25 November 2026", "1.1.2000"])
    B, S = src.shape
    cached = count_rows(model, lambda: greedy_decode(model, src, n, START, -1))
    assert cached == {"ff": B * n, "memory": B * S}
    recomputed = count_rows(model, lambda: recompute_greedy_decode(model, src, n, START, -1))
    assert recomputed == {"ff": B * n * (n + 1) // 2, "memory": B * S * n}


def test_the_cache_grows_by_one_row_per_step_and_projects_the_memory_once():
    model = tiny(0, d_k=3, d_v=5)
    src = padded_sources()
    B, S = src.shape
    with torch.no_grad():
        memory = model.encode(src)
        caches = start_cache(model, memory)
        token = torch.full((B,), START)
        for t in range(4):
            cross = [(c.cross_k, c.cross_v) for c in caches]
            token = decode_step(model, token, t, caches, (src != 0).unsqueeze(1)).argmax(-1)
            for c, (k, v) in zip(caches, cross):
                assert c.self_k.shape == (B, 2, t + 1, 3) and c.self_v.shape == (B, 2, t + 1, 5)
                assert c.keep.shape == (B, 1, 1, t + 1)
                assert c.cross_k is k and c.cross_v is v  # never recomputed
                assert c.cross_k.shape == (B, 2, S, 3) and c.cross_v.shape == (B, 2, S, 5)


def test_a_pre_norm_decoder_is_cached_exactly():
    # Chapter 6's Residual in its pre-norm form: the cache calls each layer's own Residual.
    model = tiny(0)
    for module in model.modules():
        if hasattr(module, "norm_first"):
            module.norm_first = True
    src = padded_sources()
    ids = greedy_decode(model, src, 25, START, -1)
    assert torch.equal(ids, recompute_greedy_decode(model, src, 25, START, -1))
    recomputed, cached = stepwise_logits(model, src, ids)
    assert (recomputed - cached).abs().max() < 1e-5


def test_a_norm_first_transformer_with_final_norms_is_cached_exactly():
    # Chapter 7's pre-norm model: pre-norm layers and a final LayerNorm (decoder_norm) after the decoder stack.
    model = tiny(0, norm_first=True)
    assert isinstance(model.decoder_norm, LayerNorm)
    with torch.no_grad():  # norms that are not the identity at initialization: gains and shifts of their own
        for module in model.modules():
            if isinstance(module, LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    src = padded_sources()
    ids = greedy_decode(model, src, 25, START, -1)
    assert torch.equal(ids, recompute_greedy_decode(model, src, 25, START, -1))
    recomputed, cached = stepwise_logits(model, src, ids)
    assert (recomputed - cached).abs().max() < 1e-5
    beam_ids, _ = beam_search(model, src, 25, START, -1, beam_size=1)
    assert torch.equal(beam_ids, ids)


def test_the_training_mode_is_restored():
    model = tiny(0)
    model.train()
    src = padded_sources()
    greedy_decode(model, src, 5, START, END)
    beam_search(model, src, 5, START, END)
    assert model.training
    model.eval()
    greedy_decode(model, src, 5, START, END)
    assert not model.training


# --- Beam search


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("max_len", [1, 3, 11, 40])
def test_beam_size_one_gives_greedys_ids(name, max_len):
    src = padded_sources()
    for seed in range(2):
        model = tiny(seed, **CONFIGS[name])
        for end in (END, -1):
            ids, scores = beam_search(model, src, max_len, START, end, beam_size=1)
            assert torch.equal(ids, greedy_decode(model, src, max_len, START, end))
            assert scores.shape == (src.size(0),)


@pytest.mark.parametrize("beam_size", [2, 3, 4, 7])
@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_scores_are_the_teacher_forced_log_probability_over_the_penalty(beam_size, alpha):
    src = padded_sources()
    for seed in range(2):
        model = tiny(seed)
        for max_len, end in ((12, END), (6, -1)):
            ids, scores = beam_search(model, src, max_len, START, end, beam_size, alpha)
            log_p, n = sequence_log_prob(model, src, ids, START, end)
            assert torch.allclose(scores, log_p / lp(n, alpha), atol=1e-5, rtol=1e-5)
            # By hand: n counts the tokens up to the first END, included.
            for row, count in zip(ids.tolist(), n.tolist()):
                assert count == (row.index(end) + 1 if end in row else len(row))


def test_beam_output_is_in_greedys_format():
    src = padded_sources()
    for seed in range(5):
        ids, scores = beam_search(tiny(seed), src, 20, START, END, beam_size=3)
        assert ids.dtype == torch.long and ids.dim() == 2 and ids.size(0) == src.size(0) and ids.size(1) <= 20
        assert torch.isfinite(scores).all() and (scores <= 0).all()
        for row in ids.tolist():
            if END in row:
                after = row[row.index(END) + 1:]
                assert all(t == TOKENIZER.pad_id for t in after)
            else:
                assert len(row) == ids.size(1)
        # the longest answer sets the width
        lengths = [(r.index(END) + 1 if END in r else len(r)) for r in ids.tolist()]
        assert max(lengths) == ids.size(1)


def test_a_hypothesis_without_end_finishes_at_max_len():
    model = tiny(0)
    src = padded_sources()
    ids, scores = beam_search(model, src, 7, START, -1, beam_size=4, length_penalty=0.6)
    assert ids.shape == (src.size(0), 7)
    log_p, n = sequence_log_prob(model, src, ids, START, -1)
    assert (n == 7).all()
    assert torch.allclose(scores, log_p / ((5 + 7) / 6) ** 0.6, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_a_beam_as_wide_as_every_output_finds_the_best_one(alpha):
    # Vocabulary of 5: every output of at most 3 tokens fits in a beam of 125, so nothing is pruned. With
    # alpha = 0 the stopping rule loses nothing either (log P only falls); with 0.6 it holds on these sources.
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=9, tgt_vocab_size=5, d_model=8, num_heads=2,
                                          num_layers=1, d_ff=16, dropout=0.0, max_len=8)).eval()
    with torch.no_grad():
        model.generator.weight.mul_(8.0)  # sharper distributions: greedy and the best output differ more
    src = torch.tensor([[3, 4, 5, 6, 2], [7, 8, 2, 0, 0]])
    start, end, max_len = 1, 2, 3
    for row in range(src.size(0)):
        outputs = [seq for n in range(1, max_len + 1) for seq in itertools.product(range(5), repeat=n)
                   if end not in seq[:-1] and (seq[-1] == end or n == max_len)]
        width = max_len
        ids = torch.tensor([list(seq) + [0] * (width - len(seq)) for seq in outputs])
        log_p, n = sequence_log_prob(model, src[row:row + 1].expand(len(outputs), -1), ids, start, end)
        best = (log_p / lp(n, alpha)).max()
        found, score = beam_search(model, src[row:row + 1], max_len, start, end, beam_size=125, length_penalty=alpha)
        assert abs(score.item() - best.item()) < 1e-5
        greedy_ids = greedy_decode(model, src[row:row + 1], max_len, start, end)
        g_log_p, g_n = sequence_log_prob(model, src[row:row + 1], greedy_ids, start, end)
        assert score.item() >= (g_log_p / lp(g_n, alpha)).item() - 1e-6


def test_length_penalty_values():
    assert lp(1, 0.6) == 1.0  # (5 + 1) / 6 = 1
    assert lp(11, 0.0) == 1.0
    assert math.isclose(lp(11, 0.6), (16 / 6) ** 0.6)
    assert lp(20, 0.6) > lp(10, 0.6)


def test_the_penalty_only_changes_answers_of_another_length():
    src = padded_sources()
    model = tiny(3)
    ids0, _ = beam_search(model, src, 15, START, END, 4, 0.0)
    ids2, _ = beam_search(model, src, 15, START, END, 4, 3.0)
    n0 = sequence_log_prob(model, src, ids0, START, END)[1]
    n2 = sequence_log_prob(model, src, ids2, START, END)[1]
    width = max(ids0.size(1), ids2.size(1))
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.size(1)))
    changed = (pad(ids0) != pad(ids2)).any(dim=1)
    assert (n0[changed] != n2[changed]).all()


def test_a_larger_penalty_never_stops_the_search_sooner():
    # alpha enters the stopping rule: a live hypothesis is scored as if it ended now, at its own length,
    # so with a larger alpha it stays ahead of a shorter finished one for longer. The end token is made
    # more likely at every step, so that hypotheses finish at different lengths.
    src = padded_sources()[:1]
    model = tiny(3)
    calls = []

    def end_grows_likelier(module, inputs, logits):  # one call per step
        calls.append(1)
        logits = logits.clone()
        logits[..., END] += 0.2 * len(calls)
        return logits

    model.generator.register_forward_hook(end_grows_likelier)
    steps = {}
    for alpha in (0.0, 0.6, 2.0, 6.0):
        calls.clear()
        beam_search(model, src, 30, START, END, 4, alpha)
        steps[alpha] = len(calls)
    assert list(steps.values()) == sorted(steps.values()), steps
    assert steps[6.0] > steps[0.0], steps


def test_translate_beam_matches_translate_at_beam_one():
    model = tiny(0)
    assert translate_beam(model, TOKENIZER, SOURCES, beam_size=1) == translate(model, TOKENIZER, SOURCES)
    answers = translate_beam(model, TOKENIZER, SOURCES, beam_size=3, batch_size=2)
    assert len(answers) == len(SOURCES) and all(isinstance(a, str) for a in answers)


# --- Bad input


@pytest.mark.parametrize("beam_size", [0, -1, 1.5, True, "4"])
def test_bad_beam_size(beam_size):
    with pytest.raises(ValueError, match="beam_size") as info:
        beam_search(tiny(0), padded_sources(), 5, START, END, beam_size=beam_size)
    assert repr(beam_size) in str(info.value)


@pytest.mark.parametrize("max_len", [0, -3, 2.0, 65, None])
def test_bad_max_len(max_len):
    for decode in (greedy_decode, beam_search):
        with pytest.raises(ValueError, match="max_len") as info:
            decode(tiny(0), padded_sources(), max_len, START, END)
        assert repr(max_len) in str(info.value)


@pytest.mark.parametrize("alpha", [-0.1, -1, float("nan"), float("inf"), "0.6", None])
def test_bad_length_penalty(alpha):
    with pytest.raises(ValueError, match="length_penalty") as info:
        beam_search(tiny(0), padded_sources(), 5, START, END, length_penalty=alpha)
    assert repr(alpha) in str(info.value)


@pytest.mark.parametrize("src", [
    torch.tensor([3, 4, 5]),                 # (S,): no batch axis
    torch.ones(2, 3, 4, dtype=torch.long),   # (B, S, D)
    torch.rand(2, 5),                        # floats, not ids
    torch.ones(2, 5, dtype=torch.bool),
    torch.ones(2, 5, dtype=torch.uint8),     # integers the embedding does not take
    [[3, 4, 5]],                             # not a tensor
])
def test_a_source_that_is_not_batch_by_length_ids(src):
    for decode in (greedy_decode, beam_search):
        with pytest.raises(ValueError, match="src") as info:
            decode(tiny(0), src, 5, START, END)
        got = str(tuple(src.shape)) if torch.is_tensor(src) else type(src).__name__
        assert got in str(info.value)


def test_ids_outside_the_vocabulary_and_bad_special_ids():
    model = tiny(0)
    with pytest.raises(ValueError, match="token ids"):
        beam_search(model, torch.tensor([[3, V + 5]]), 5, START, END)
    with pytest.raises(ValueError, match="start_id"):
        greedy_decode(model, padded_sources(), 5, V, END)
    with pytest.raises(ValueError, match="end_id"):
        beam_search(model, padded_sources(), 5, START, 2.0)



@pytest.mark.parametrize("decode", ["greedy", "beam", "log_prob"])
def test_the_training_mode_is_restored_when_decoding_fails(decode):
    model = tiny(0).train()
    bad = torch.tensor([[3, V + 5]])  # the encoder refuses it, after the model went into eval mode
    with pytest.raises(ValueError, match="token ids"):
        if decode == "greedy":
            greedy_decode(model, bad, 5, START, END)
        elif decode == "beam":
            beam_search(model, bad, 5, START, END)
        else:
            sequence_log_prob(model, bad, torch.tensor([[3, END]]), START, END)
    assert model.training


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_beam_search_scores_in_the_models_precision(dtype):
    model, src = tiny(0).to(dtype), padded_sources()
    ids, scores = beam_search(model, src, 6, START, END, beam_size=3)
    assert scores.dtype == dtype
    log_p, n = sequence_log_prob(model, src, ids, START, END)
    torch.testing.assert_close(scores, log_p / lp(n.to(dtype), 0.6))
    assert torch.equal(beam_search(model, src, 6, START, END, beam_size=1)[0], greedy_decode(model, src, 6, START, END))


def test_beam_search_of_no_sources_returns_nothing():
    ids, scores = beam_search(tiny(0), padded_sources()[:0], 5, START, END)
    assert ids.shape == (0, 0) and scores.shape == (0,)


def test_a_length_penalty_too_large_for_the_scores_is_refused():
    with pytest.raises(ValueError, match="length_penalty=80 makes lp\\(max_len=20\\) too large"):
        beam_search(tiny(0), padded_sources(), 20, START, END, length_penalty=80)
    beam_search(tiny(0), padded_sources(), 20, START, END, length_penalty=40)  # lp(20) is about 1e25: fine


def test_translate_beam_refuses_a_string_and_a_bad_batch_size():
    with pytest.raises(ValueError, match="one string"):
        translate_beam(tiny(0), TOKENIZER, "25 November 2026")
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        translate_beam(tiny(0), TOKENIZER, SOURCES, batch_size=0)


# --- Bad input to the building blocks: start_cache, decode_step, sequence_log_prob


def started(model, src):
    """A fresh cache for src, its padding mask, and a first token per row."""
    with torch.no_grad():
        mask = (src != TOKENIZER.pad_id).unsqueeze(1)
        return start_cache(model, model.encode(src, mask)), mask, torch.full((src.size(0),), START)


@pytest.mark.parametrize("position, message", [
    (64, r"position must be an integer from 0 to the model's max_len - 1 = 63, got 64"),  # past the table
    (-1, r"position must be an integer from 0 .* got -1"),  # would silently read the table's last row
    (2.0, r"position must be an integer .* got 2.0"),
    (1, r"position must be 0, the number of positions already in the cache, got 1"),
])
def test_decode_step_refuses_a_bad_position(position, message):
    model, src = tiny(0), padded_sources()
    caches, mask, token = started(model, src)
    with pytest.raises(ValueError, match=message):
        decode_step(model, token, position, caches, mask)


def test_decode_step_refuses_tokens_and_masks_that_do_not_fit_the_cache():
    model, src = tiny(0), padded_sources()
    B, S = src.shape
    caches, mask, token = started(model, src)
    with pytest.raises(ValueError, match=rf"token must be a \({B},\) tensor .* got \({B}, 1\)"):
        decode_step(model, token[:, None], 0, caches, mask)
    with pytest.raises(ValueError, match=rf"token must be a \({B},\) tensor .* got \({B - 1},\)"):
        decode_step(model, token[1:], 0, caches, mask)
    with pytest.raises(ValueError, match=rf"src_mask must be \({B}, 1, {S}\).* got \({B - 1}, 1, {S}\)"):
        decode_step(model, token, 0, caches, mask[1:])
    with pytest.raises(ValueError, match=r"caches must be start_cache's list of 2 LayerCache.* got 1"):
        decode_step(model, token, 0, caches[:1], mask)  # zip() would silently skip the second layer
    logits = decode_step(model, token, 0, caches, mask)  # the checks leave good input alone
    assert logits.shape == (B, V)


@pytest.mark.parametrize("memory, got", [
    (torch.randn(2, 5, 8), r"\(2, 5, 8\)"),   # the wrong width
    (torch.randn(5, 16), r"\(5, 16\)"),       # no batch axis
    (torch.ones(2, 5, 16, dtype=torch.long), r"\(2, 5, 16\) torch.int64"),
    ([[0.0] * 16], "list"),
])
def test_start_cache_refuses_memory_that_is_not_the_encoders_output(memory, got):
    with pytest.raises(ValueError, match=r"memory must be .*d_model=16\), got " + got):
        start_cache(tiny(0), memory)


def test_sequence_log_prob_refuses_ids_that_are_not_a_batch_of_outputs():
    model, src = tiny(0), padded_sources()
    ids = greedy_decode(model, src, 6, START, END)
    with pytest.raises(ValueError, match=r"ids must be a \(B, L\) tensor .* got \(6,\)"):
        sequence_log_prob(model, src, ids[0], START, END)
    with pytest.raises(ValueError, match=r"ids must have one row per source: src has 5 rows, ids 2"):
        sequence_log_prob(model, src, ids[:2], START, END)
    beyond = ids.clone()
    beyond[0, -1] = V + 3  # the last column is never fed to the decoder, only looked up
    with pytest.raises(ValueError, match=rf"ids must be target token ids in \[0, {V}\), got min \d+ and max {V + 3}"):
        sequence_log_prob(model, src, beyond, START, END)
