"""book.train: label smoothing, the schedule, the loop, greedy decoding (chapter 8)."""
import io
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from book.data import batch_for_step, date_tokenizer, examples_for, split_dates
from book.train import (
    TrainConfig, build_model, exact_match, greedy_decode, label_smoothed_cross_entropy, learning_rate,
    make_optimizer, noam_rate, train, translate,
)

TOKENIZER = date_tokenizer()
SPLIT = split_dates()
TINY = dict(d_model=32, num_heads=2, num_layers=1, d_ff=64, batch_size=32, warmup=20, lr_factor=1.0, eval_every=10)


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def batches(settings):
    return lambda step: batch_for_step(SPLIT.train, TOKENIZER, settings.batch_size, settings.seed, step)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_equals_torch(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    target = torch.randint(1, 11, (3, 5))
    target[0, 3:] = 0
    target[2, 1:] = 0
    ours = label_smoothed_cross_entropy(logits, target, smoothing, pad_id=0)
    theirs = nn.CrossEntropyLoss(ignore_index=0, label_smoothing=smoothing)(logits.reshape(-1, 11), target.reshape(-1))
    assert torch.allclose(ours, theirs, atol=1e-6)
    grad_ours, = torch.autograd.grad(ours, logits)
    grad_theirs, = torch.autograd.grad(theirs, logits)
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-7)


def test_label_smoothing_by_hand():
    # Three tokens, logits (2, 0, 0), right token 0, smoothing 0.3.
    p = torch.softmax(torch.tensor([2.0, 0.0, 0.0]), 0)
    expected = 0.7 * -math.log(p[0]) + 0.3 * -(p.log().mean().item())
    got = label_smoothed_cross_entropy(torch.tensor([[[2.0, 0.0, 0.0]]]), torch.tensor([[0]]), 0.3, pad_id=-1)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_label_smoothing_rejects_bad_input():
    logits = torch.zeros(2, 3, 5)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        label_smoothed_cross_entropy(logits, torch.ones(2, 4, dtype=torch.long), 0.1, 0)
    with pytest.raises(ValueError, match="1.5"):
        label_smoothed_cross_entropy(logits, torch.ones(2, 3, dtype=torch.long), 1.5, 0)
    with pytest.raises(ValueError, match="padding"):
        label_smoothed_cross_entropy(logits, torch.zeros(2, 3, dtype=torch.long), 0.1, 0)
    for wrong in (5, -1):  # an id the logits have no column for
        target = torch.ones(2, 3, dtype=torch.long)
        target[1, 2] = wrong
        with pytest.raises(ValueError, match=rf"in \[0, 5\) or pad_id, got torch.int64 ids from {min(wrong, 1)} to {max(wrong, 1)}"):
            label_smoothed_cross_entropy(logits, target, 0.1, 0)


def test_noam_rate_values():
    d, w = 512, 4000
    assert noam_rate(1, d, w) == pytest.approx(d ** -0.5 * w ** -1.5)
    assert noam_rate(w, d, w) == pytest.approx((d * w) ** -0.5)
    assert noam_rate(4 * w, d, w) == pytest.approx((d * w) ** -0.5 / 2)
    assert noam_rate(100, d, w) == pytest.approx(100 * noam_rate(1, d, w))  # linear during warmup
    assert noam_rate(10_000, 64, 400, factor=0.5) == pytest.approx(0.5 * 64 ** -0.5 * 10_000 ** -0.5)
    rates = [noam_rate(s, d, w) for s in range(1, 3 * w)]
    assert max(range(len(rates)), key=rates.__getitem__) + 1 == w


@pytest.mark.parametrize("step, d_model, warmup", [(0, 64, 400), (1, 0, 400), (1, 64, 0)])
def test_noam_rate_rejects_bad_arguments(step, d_model, warmup):
    with pytest.raises(ValueError, match=f"step={step}, d_model={d_model}, warmup={warmup}"):
        noam_rate(step, d_model, warmup)


def test_cooldown_is_a_straight_line_to_almost_zero_at_the_last_step():
    settings = TrainConfig(d_model=64, warmup=400, lr_factor=0.5, steps=2500, cooldown=500)
    for step in (1, 400, 1000, 2000):  # before the cooldown: the paper's rate
        assert learning_rate(step, settings, 64) == noam_rate(step, 64, 400, 0.5)
    assert learning_rate(2001, settings, 64) == pytest.approx(noam_rate(2001, 64, 400, 0.5) * 500 / 501)
    assert learning_rate(2500, settings, 64) == pytest.approx(noam_rate(2500, 64, 400, 0.5) / 501)
    rates = [learning_rate(s, settings, 64) for s in range(2000, 2501)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    paper = TrainConfig(steps=2500, cooldown=0)
    assert learning_rate(2500, paper, 64) == noam_rate(2500, 64, paper.warmup, paper.lr_factor)


def test_the_default_run_ties_the_embeddings():
    model = build_model(TrainConfig(**TINY), TOKENIZER)
    assert model.generator.weight is model.src_embed.weight is model.tgt_embed.weight
    untied = build_model(TrainConfig(**TINY, share_embeddings=False), TOKENIZER)
    saved = sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in model.parameters())
    assert saved == 2 * len(TOKENIZER) * TINY["d_model"]


def test_train_uses_the_loss_it_is_given():
    settings = TrainConfig(**TINY, steps=3)
    seen = []

    def loss_fn(logits, target, smoothing, pad_id):
        seen.append((tuple(logits.shape[:2]) == tuple(target.shape), smoothing, pad_id))
        return label_smoothed_cross_entropy(logits, target, smoothing, pad_id)

    model = build_model(settings, TOKENIZER)
    train(model, make_optimizer(model), batches(settings), settings, progress=False, loss_fn=loss_fn)
    assert seen == [(True, settings.label_smoothing, TOKENIZER.pad_id)] * 3


@pytest.mark.parametrize("field, value", [("cooldown", -1), ("steps", 0), ("batch_size", -1), ("label_smoothing", 1.0),
                                          ("lr_factor", 0), ("seed", -1), ("seed", 2 ** 64), ("seed", 1.5)])
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_the_optimizer_is_the_papers_adam():
    model = build_model(TrainConfig(**TINY), TOKENIZER)
    group = make_optimizer(model).param_groups[0]
    assert group["betas"] == (0.9, 0.98) and group["eps"] == 1e-9


def test_build_model_is_seeded():
    a = build_model(TrainConfig(**TINY), TOKENIZER)
    b = build_model(TrainConfig(**TINY), TOKENIZER)
    c = build_model(TrainConfig(**TINY, seed=1), TOKENIZER)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.src_embed.weight, c.src_embed.weight)


def test_a_tiny_run_lowers_the_loss():
    settings = TrainConfig(**TINY, steps=80)
    model = build_model(settings, TOKENIZER)
    valid = examples_for(SPLIT.valid[:24])
    history = train(model, make_optimizer(model), batches(settings), settings,
                    validate=lambda m: exact_match(m, TOKENIZER, valid)[0], progress=False)
    first, last = sum(history["loss"][:10]) / 10, sum(history["loss"][-10:]) / 10
    assert last < 0.75 * first, (first, last)
    assert history["step"] == list(range(1, 81))
    assert history["valid_step"] == [10, 20, 30, 40, 50, 60, 70, 80]
    assert all(0 <= a <= 1 for a in history["valid_accuracy"] + history["token_accuracy"])


def test_after_step_can_stop_training():
    settings = TrainConfig(**TINY, steps=50)
    model = build_model(settings, TOKENIZER)
    seen = []
    history = train(model, make_optimizer(model), batches(settings), settings,
                    after_step=lambda step, h: seen.append(step) or step == 7, progress=False)
    assert seen == list(range(1, 8)) and history["step"] == list(range(1, 8))


def test_stopping_and_resuming_gives_the_same_weights():
    settings = TrainConfig(**dict(TINY, d_model=16), dropout=0.1, steps=12)  # dropout draws random numbers

    uninterrupted = build_model(settings, TOKENIZER)
    train(uninterrupted, make_optimizer(uninterrupted), batches(settings), settings, progress=False)

    model = build_model(settings, TOKENIZER)
    optimizer = make_optimizer(model)
    history = train(model, optimizer, batches(settings), settings, after_step=lambda s, h: s == 5, progress=False)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(), "history": history}, buffer)
    torch.manual_seed(1234)  # anything the process does in between must not matter
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = build_model(settings, TOKENIZER)
    resumed.load_state_dict(state["model"])
    optimizer = make_optimizer(resumed)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    history = train(resumed, optimizer, batches(settings), settings, start_step=5, history=state["history"],
                    progress=False)
    assert history["step"] == list(range(1, 13))
    for (name, a), b in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


class ScriptedModel(nn.Module):
    """Stands in for a Transformer: predicts script[row][t] at decoder position t."""

    def __init__(self, script, vocab=6):
        super().__init__()
        self.config = SimpleNamespace(pad_id=0)  # greedy_decode reads only the pad id
        self.script, self.vocab = script, vocab

    def encode(self, src, src_mask=None):
        return torch.zeros(src.size(0), src.size(1), 4)

    def decode(self, tgt, memory, src_mask=None, tgt_mask=None):
        logits = torch.zeros(tgt.size(0), tgt.size(1), self.vocab)
        for row, ids in enumerate(self.script):
            for t in range(tgt.size(1)):
                logits[row, t, ids[min(t, len(ids) - 1)]] = 1.0
        return logits


def test_greedy_decode_pads_finished_rows_and_stops_when_all_are_done():
    model = ScriptedModel([[3, 4, 2], [5, 2], [3, 3, 3, 3, 3, 2]])
    model.train()
    out = greedy_decode(model, torch.ones(3, 4, dtype=torch.long), max_len=10, start_id=1, end_id=2)
    assert out.tolist() == [[3, 4, 2, 0, 0, 0], [5, 2, 0, 0, 0, 0], [3, 3, 3, 3, 3, 2]]
    assert model.training, "greedy_decode must restore training mode"
    capped = greedy_decode(model, torch.ones(3, 4, dtype=torch.long), max_len=2, start_id=1, end_id=2)
    assert capped.shape == (3, 2)


def test_greedy_decode_agrees_with_the_teacher_forced_argmax():
    model = build_model(TrainConfig(**TINY), TOKENIZER)
    src = TOKENIZER.encode_batch(["25 November 2026", "03/05/1995", "the 1st of May 1990"])
    out = greedy_decode(model, src, 8, TOKENIZER.start_id, TOKENIZER.end_id)
    model.eval()
    with torch.no_grad():
        tgt_in = torch.cat([torch.full((3, 1), TOKENIZER.start_id), out[:, :-1]], dim=1)
        forced = model(src, tgt_in).argmax(-1)
    for row in range(3):
        ids = out[row].tolist()
        n = ids.index(TOKENIZER.end_id) + 1 if TOKENIZER.end_id in ids else len(ids)
        assert forced[row, :n].tolist() == ids[:n]


def test_translate_and_exact_match_return_one_answer_per_input():
    model = build_model(TrainConfig(**TINY), TOKENIZER)
    answers = translate(model, TOKENIZER, ["25 November 2026"] * 5, batch_size=2)
    assert len(answers) == 5 and len(set(answers)) == 1 and all(isinstance(a, str) for a in answers)
    examples = examples_for(SPLIT.valid[:7])
    score, answers = exact_match(model, TOKENIZER, examples)
    assert len(answers) == 7 and score == sum(a == ex.target for a, ex in zip(answers, examples)) / 7


def test_translate_and_exact_match_use_the_decoder_they_are_given():
    """decode= replaces greedy decoding: a decoder that always writes the target's ids scores 100%."""
    model = build_model(TrainConfig(**TINY), TOKENIZER)
    examples = examples_for(SPLIT.valid[:5])
    calls = []

    def oracle(model_, src, max_len, start_id, end_id):
        calls.append((model_, src.shape, max_len, start_id, end_id))
        sources = TOKENIZER.decode_batch(src)
        answers = [next(ex.target for ex in examples if ex.source == s) for s in sources]
        return TOKENIZER.encode_batch(answers)  # ids and end token, in greedy_decode's format

    assert translate(model, TOKENIZER, [ex.source for ex in examples], batch_size=2, decode=oracle) == \
        [ex.target for ex in examples]
    assert [shape[0] for _, shape, *_ in calls] == [2, 2, 1]
    assert all(m is model and tuple(rest) == (16, TOKENIZER.start_id, TOKENIZER.end_id) for m, _, *rest in calls)
    assert exact_match(model, TOKENIZER, examples, decode=oracle)[0] == 1.0
    # without decode= the untrained model's greedy answers are not the targets
    assert exact_match(model, TOKENIZER, examples)[0] < 1.0


def test_learning_rate_refuses_a_step_past_the_last():
    settings = TrainConfig(steps=10, warmup=2, cooldown=4)
    assert learning_rate(10, settings, 64) > 0
    with pytest.raises(ValueError, match="step 11 .* settings.steps=10"):
        learning_rate(11, settings, 64)


def test_greedy_decode_refuses_a_max_len_the_model_cannot_read_and_restores_the_mode_on_error():
    model = build_model(TrainConfig(**TINY), TOKENIZER).train()
    src = TOKENIZER.encode_batch(["25 November 2026"])
    with pytest.raises(ValueError, match="max_len=200 .* config.max_len=128"):
        greedy_decode(model, src, 200, TOKENIZER.start_id, TOKENIZER.end_id)
    with pytest.raises(ValueError, match="999"):
        greedy_decode(model, src, 8, 999, TOKENIZER.end_id)
    assert model.training and all(m.training for m in model.modules())


def test_translate_and_exact_match_refuse_bad_input():
    model = build_model(TrainConfig(**TINY), TOKENIZER)
    with pytest.raises(ValueError, match="one string '25 Nov'"):
        translate(model, TOKENIZER, "25 Nov")
    for batch_size in (0, -1, 2.0):
        with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {batch_size}"):
            translate(model, TOKENIZER, ["25 Nov 2026"], batch_size=batch_size)
    with pytest.raises(ValueError, match="at least one example"):
        exact_match(model, TOKENIZER, [])


# --- Sources and targets with vocabularies of their own (chapter 13's letters and phones).

def test_build_model_sizes_the_target_side_from_its_tokenizer():
    from book.data import CharTokenizer
    letters, sounds = CharTokenizer("abc"), CharTokenizer("uvwxyz")
    untied = TrainConfig(d_model=16, num_heads=2, num_layers=1, d_ff=32, share_embeddings=False)
    model = build_model(untied, letters, target_tokenizer=sounds)
    assert model.src_embed.weight.shape[0] == len(letters) and model.generator.weight.shape[0] == len(sounds)
    tied = TrainConfig(d_model=16, num_heads=2, num_layers=1, d_ff=32, share_embeddings=True)
    with pytest.raises(ValueError, match="6 source and 9 target tokens"):
        build_model(tied, letters, target_tokenizer=sounds)


def test_translate_writes_with_the_target_tokenizer():
    from book.data import CharTokenizer
    letters, sounds = CharTokenizer("abc"), CharTokenizer("uvwxyz")
    settings = TrainConfig(d_model=16, num_heads=2, num_layers=1, d_ff=32, share_embeddings=False)
    model = build_model(settings, letters, target_tokenizer=sounds)
    answers = translate(model, letters, ["abc", "a"], target_tokenizer=sounds)
    assert len(answers) == 2 and all(set(a) <= set("uvwxyz") for a in answers)
    score, _ = exact_match(model, letters, [("abc", answers[0]), ("a", answers[1] + "u")], target_tokenizer=sounds)
    assert score == 0.5
