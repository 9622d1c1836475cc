"""book.experiments: the tools behind every lesson drawn from several runs."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from book.data import CharTokenizer, make_batch
from book.experiments import SEEDS, attention_maps, centred_mean, plot_heads, plot_seeded, seed_table, seeded, verdict
from book.train import TrainConfig, build_model


def test_seeded_runs_every_seed_in_order():
    assert seeded(lambda seed: seed * 10) == [0, 10, 20]
    assert seeded(str, seeds=(5, 7)) == ["5", "7"]
    with pytest.raises(ValueError, match="at least one seed"):
        seeded(str, seeds=())


def test_verdict_needs_every_seed_on_one_side():
    assert verdict("a", [90, 91, 92], "b", [80, 85, 89]) == "a ahead in every seed"
    assert verdict("a", [80, 85, 89], "b", [90, 91, 92]) == "b ahead in every seed"
    # One seed of b above one seed of a: no conclusion, however far apart the means are.
    assert verdict("a", [99, 99, 50], "b", [10, 10, 51]) == "the seeds overlap: no conclusion"
    # Lower is better for error rates.
    assert verdict("a", [0.1, 0.2], "b", [0.3, 0.4], higher=False) == "a ahead in every seed"
    assert verdict("a", [0.1, 0.2], "b", [0.3, 0.4]) == "b ahead in every seed"


def test_verdict_refuses_empty_or_nan():
    with pytest.raises(ValueError, match="'b'"):
        verdict("a", [1.0], "b", [])
    with pytest.raises(ValueError, match="NaN"):
        verdict("a", [1.0, float("nan")], "b", [0.5])


def test_seed_table_shows_every_seed_mean_and_spread():
    frame = seed_table({"x": [1.0, 2.0, 6.0], "y": [3.0, 3.0, 3.0]})
    assert list(frame.columns) == [f"seed {s}" for s in SEEDS] + ["mean", "spread"]
    assert frame.loc["x", "mean"] == pytest.approx(3.0) and frame.loc["x", "spread"] == pytest.approx(5.0)
    assert frame.loc["y", "spread"] == 0.0
    with pytest.raises(ValueError, match="'x' has 2 scores for 3 seeds"):
        seed_table({"x": [1.0, 2.0]})


def test_centred_mean_equals_numpy_convolution():
    values = np.random.default_rng(0).normal(size=40).tolist()
    steps, means = centred_mean(values, 5)
    expected = np.convolve(values, np.ones(5) / 5, mode="valid")
    np.testing.assert_allclose(means.numpy(), expected, rtol=0, atol=1e-12)
    assert steps[0].item() == 3 and len(steps) == 36  # the first window covers steps 1..5, centred on 3
    with pytest.raises(ValueError, match="window"):
        centred_mean(values, 41)


def test_plot_seeded_draws_one_curve_per_run():
    history = {"step": list(range(1, 31)), "loss": [1.0 / s for s in range(1, 31)]}
    fig = plot_seeded({"a": [history] * 3, "b": [history] * 3}, {"a": [1, 2, 3], "b": [2, 3, 4]}, "score", window=5)
    assert len(fig.axes[0].lines) == 6
    matplotlib.pyplot.close(fig)


@pytest.fixture
def tiny_pair_model():
    letters, sounds = CharTokenizer("abc"), CharTokenizer("xyzw")
    settings = TrainConfig(d_model=16, num_heads=2, num_layers=1, d_ff=32, share_embeddings=False)
    return build_model(settings, letters, target_tokenizer=sounds), letters, sounds


def test_attention_maps_have_the_documented_shapes(tiny_pair_model):
    model, letters, sounds = tiny_pair_model
    answer, maps = attention_maps(model, letters, "abca", target_tokenizer=sounds)
    S, T = len("abca") + 1, len(answer) + 1  # the source's end token; the decoder's start token
    assert [tuple(w.shape) for w in maps["encoder self-attention"]] == [(2, S, S)]
    assert [tuple(w.shape) for w in maps["decoder self-attention"]] == [(2, T, T)]
    assert [tuple(w.shape) for w in maps["cross-attention"]] == [(2, T, S)]
    for weights in maps["cross-attention"]:
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, T))
    assert model.training  # the mode it was in before


def test_attention_maps_cut_the_answer_at_max_len(tiny_pair_model):
    model, letters, sounds = tiny_pair_model
    never_ends = torch.tensor([sounds.pad_id, sounds.start_id, sounds.end_id])  # letters only, until max_len
    model.generator.register_forward_hook(lambda module, inputs, logits: logits.index_fill(-1, never_ends, -1e9))
    for max_len in (3, 16, 20):
        answer, maps = attention_maps(model, letters, "abca", target_tokenizer=sounds, max_len=max_len)
        assert len(answer) == max_len
        assert maps["cross-attention"][0].size(1) == max_len + 1  # the start token, then the answer


def test_plot_heads_refuses_labels_that_do_not_fit():
    weights = [torch.full((2, 3, 4), 0.25)]
    fig = plot_heads(weights, list("abc"), list("wxyz"), "key", "query")
    assert len(fig.axes) == 3  # two heads and the colour bar
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="3 row and 3 column labels"):
        plot_heads(weights, list("abc"), list("xyz"), "key", "query")


def test_pairs_with_their_own_target_vocabulary(tiny_pair_model):
    model, letters, sounds = tiny_pair_model
    batch = make_batch([("ab", "xyzw"), ("cab", "x")], letters, target_tokenizer=sounds)
    assert batch.tgt_out.tolist() == [[3, 4, 5, 6, 2], [3, 2, 0, 0, 0]]  # targets of different lengths
    assert model(batch.src, batch.tgt_in).shape == (2, 5, len(sounds))
