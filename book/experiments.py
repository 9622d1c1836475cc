"""Experiments that rest on more than one run: seeds, verdicts, tables, and attention maps.

Hand-written, not generated from a chapter. Chapter 8 introduces these tools for its ablations;
later chapters use them for their own comparisons. A lesson such as "warmup helps" is only
drawn when every seed of one setting ends ahead of every seed of the other (`verdict`), and
every table shows each seed and the spread (`seed_table`).
"""
import math

import matplotlib.pyplot as plt
import pandas as pd
import torch

from book.train import evaluating, translate

SEEDS = (0, 1, 2)


def seeded(run, seeds=SEEDS):
    """``run(seed)`` for every seed, in order: one result per seed."""
    if not seeds:
        raise ValueError("need at least one seed, got none")
    return [run(seed) for seed in seeds]


def verdict(name_a, scores_a, name_b, scores_b, higher=True):
    """Which setting is ahead, said only when every run of one beats every run of the other.

    scores_a, scores_b: one number per seed. ``higher=False`` for scores where less is better
    (losses, error rates).
    """
    a, b = list(scores_a), list(scores_b)
    if not a or not b:
        raise ValueError(f"need scores for both settings, got {len(a)} for {name_a!r} and {len(b)} for {name_b!r}")
    if any(math.isnan(x) for x in a + b):
        raise ValueError(f"scores must be numbers, got NaN among {a} and {b}")
    if not higher:
        a, b = [-x for x in a], [-x for x in b]
    if min(a) > max(b):
        return f"{name_a} ahead in every seed"
    if min(b) > max(a):
        return f"{name_b} ahead in every seed"
    return "the seeds overlap: no conclusion"


def seed_table(scores, seeds=SEEDS):
    """A table of one row per setting (``scores``: name -> one number per seed), every seed
    in its own column, then the mean and the spread (largest minus smallest)."""
    for name, values in scores.items():
        if len(values) != len(seeds):
            raise ValueError(f"{name!r} has {len(values)} scores for {len(seeds)} seeds {tuple(seeds)}")
    frame = pd.DataFrame({name: list(values) for name, values in scores.items()},
                         index=[f"seed {s}" for s in seeds]).T
    per_seed = frame.copy()
    frame["mean"] = per_seed.mean(axis=1)
    frame["spread"] = per_seed.max(axis=1) - per_seed.min(axis=1)
    return frame


def centred_mean(values, window):
    """The mean of each run of ``window`` consecutive values, placed at the (1-based) step in its centre.

    Returns (steps, means), two tensors of len(values) - window + 1 entries.
    """
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= len(values):
        raise ValueError(f"window must be an integer from 1 to len(values)={len(values)}, got {window!r}")
    means = torch.tensor(values, dtype=torch.float64).unfold(0, window, 1).mean(dim=1)
    return torch.arange(len(means)) + window // 2 + 1, means


def plot_seeded(histories, scores, score_label, window=21):
    """Training loss of every run (left, one colour per setting) and every run's final score (right).

    histories: name -> list of training histories (dicts with "step" and "loss"), one per seed;
    scores: name -> one final score per seed. Returns the figure.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [3, 2]})
    for k, name in enumerate(histories):
        color = f"C{k}"
        for i, history in enumerate(histories[name]):
            steps, loss = centred_mean(history["loss"], window)
            axes[0].plot(steps, loss, color=color, alpha=0.7, lw=1, label=name if i == 0 else None)
        values = list(scores[name])
        axes[1].scatter([k] * len(values), values, color=color, zorder=3)
        axes[1].hlines(sum(values) / len(values), k - 0.2, k + 0.2, color=color)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel(f"training loss (centred mean of {window})")
    axes[0].legend(fontsize=8)
    axes[1].set_xticks(range(len(histories)), [f"({k + 1})" for k in range(len(histories))])
    axes[1].set_xlim(-0.6, len(histories) - 0.4)
    axes[1].set_xlabel("setting, in the order of the legend")
    axes[1].set_ylabel(score_label)
    fig.tight_layout()
    return fig


def attention_maps(model, tokenizer, source, target_tokenizer=None, decode=None, max_len=16):
    """Answer ``source``, then read every attention layer's weights on the model's own answer.

    The decoder is run once more on start + answer (what it read while writing), so each map
    shows the weights behind one written token. Returns (answer, maps): maps["encoder
    self-attention"] holds one (h, S, S) tensor per layer, maps["decoder self-attention"]
    (h, T, T) and maps["cross-attention"] (h, T, S), where S counts the source tokens with
    its end token and T the answer's tokens with the start token. The answer is cut at max_len
    tokens, its end included (translate's default 16 fits a date; pass more for longer answers).
    """
    writer = tokenizer if target_tokenizer is None else target_tokenizer
    answer = translate(model, tokenizer, [source], max_len=max_len, decode=decode,
                       target_tokenizer=target_tokenizer)[0]
    device = next(model.parameters()).device
    src = tokenizer.encode_batch([source], device=device)
    tgt_in = writer.encode_batch([answer], start=True, end=False, device=device)
    with evaluating(model), torch.no_grad():
        model(src, tgt_in)
    return answer, {
        "encoder self-attention": [layer.self_attn.attention_weights[0] for layer in model.encoder_layers],
        "decoder self-attention": [layer.self_attn.attention_weights[0] for layer in model.decoder_layers],
        "cross-attention": [layer.cross_attn.attention_weights[0] for layer in model.decoder_layers],
    }


def plot_heads(weights, row_labels, col_labels, xlabel, ylabel):
    """A grid of attention maps, one row per layer and one column per head, on one 0..1 colour scale.

    weights: one (h, T_q, T_k) tensor per layer; row_labels T_q names, col_labels T_k names.
    """
    n_layers, n_heads = len(weights), weights[0].size(0)
    if any(w.shape[1:] != (len(row_labels), len(col_labels)) for w in weights):
        raise ValueError(f"maps of shape {[tuple(w.shape) for w in weights]} do not match "
                         f"{len(row_labels)} row and {len(col_labels)} column labels")
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(3.2 * n_heads, 3.2 * n_layers), squeeze=False,
                             layout="constrained")
    for layer, w in enumerate(weights):
        for head in range(n_heads):
            ax = axes[layer, head]
            image = ax.imshow(w[head].cpu(), cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(len(col_labels)), col_labels, fontsize=9)
            ax.set_yticks(range(len(row_labels)), row_labels, fontsize=9)
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=10)
            if layer == n_layers - 1:
                ax.set_xlabel(xlabel)
            if head == 0:
                ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=axes, shrink=0.7, label="attention weight")
    return fig
