# Generated from chapters/09_decoding.ipynb by tools/export.py: edit the notebook, not this file.
"""Decoding faster and better: a key/value cache and beam search (chapter 9).

greedy_decode(..., cache=True) gives exactly the ids of book.train.greedy_decode while
computing only the new position at each step; beam_search keeps beam_size hypotheses per
source and returns the best by the length-normalized score of Wu et al. (2016).
"""
import math
from dataclasses import dataclass

import torch

from book.attention import padding_mask, scaled_dot_product_attention
from book.multi_head import merge_heads, split_heads
from book.train import greedy_decode as _recompute_greedy_decode
from book.train import evaluating, translate


@dataclass
class LayerCache:
    """What one decoder layer keeps between steps, for t decoded positions and S source positions.

    self_k: (B, h, t, d_k) and self_v: (B, h, t, d_v), the self-attention keys and values of the
    decoded positions, one row more after each step. keep: (B, 1, 1, t) bool, False where a decoded
    token is padding. cross_k: (B, h, S, d_k) and cross_v: (B, h, S, d_v), the memory's keys and
    values for cross-attention, computed once.
    """
    self_k: torch.Tensor
    self_v: torch.Tensor
    keep: torch.Tensor
    cross_k: torch.Tensor
    cross_v: torch.Tensor


def _heads(attn, projection, x):
    """x (B, T, D) through one of attn's projections, split into heads: (B, h, T, d)."""
    return split_heads(projection(x), attn.num_heads)


def start_cache(model, memory):
    """One LayerCache per decoder layer of ``model``: nothing decoded yet, memory (B, S, D) projected once."""
    _check_memory(model, memory)
    caches = []
    none_yet = memory[:, :0]  # (B, 0, D): projects to empty keys and values of the right shape
    for layer in model.decoder_layers:
        self_attn, cross_attn = layer.self_attn, layer.cross_attn
        caches.append(LayerCache(
            self_k=_heads(self_attn, self_attn.k_proj, none_yet),
            self_v=_heads(self_attn, self_attn.v_proj, none_yet),
            keep=torch.ones(memory.size(0), 1, 1, 0, dtype=torch.bool, device=memory.device),
            cross_k=_heads(cross_attn, cross_attn.k_proj, memory),
            cross_v=_heads(cross_attn, cross_attn.v_proj, memory),
        ))
    return caches


def attend(attn, h, k, v, mask):
    """attn's multi-head attention of one new position h (B, 1, D) to keys k and values v (B, h, t, d)."""
    q = _heads(attn, attn.q_proj, h)  # (B, h, 1, d_k)
    out, _ = scaled_dot_product_attention(q, k, v, mask, dropout=attn.dropout)
    return attn.out_proj(merge_heads(out))


def cached_layer(layer, x, cache, src_mask):
    """Chapter 7's DecoderLayer on the new position x (B, 1, D), reading and extending its cache."""
    def self_attention(h):  # h: the new position as the sublayer sees it
        a = layer.self_attn
        cache.self_k = torch.cat([cache.self_k, _heads(a, a.k_proj, h)], dim=2)
        cache.self_v = torch.cat([cache.self_v, _heads(a, a.v_proj, h)], dim=2)
        return attend(a, h, cache.self_k, cache.self_v, cache.keep)

    def cross_attention(h):
        return attend(layer.cross_attn, h, cache.cross_k, cache.cross_v, src_mask)

    x = layer.self_residual(x, self_attention)
    x = layer.cross_residual(x, cross_attention)
    return layer.ff_residual(x, layer.feed_forward)


def decode_step(model, token, position, caches, src_mask):
    """Logits (B, V) after the new tokens (B,) at ``position``; every layer's cache grows by one row.

    caches: from start_cache, holding t = position decoded positions; src_mask: (B, 1, S) bool, the
    source's padding mask.
    """
    _check_step(model, token, position, caches, src_mask)
    x = model.tgt_embed(token[:, None]) + model.positions.pe[position]  # (B, 1, D)
    x = model.positions.dropout(x)
    real = (token != model.config.pad_id)[:, None, None, None]
    for layer, cache in zip(model.decoder_layers, caches):
        cache.keep = torch.cat([cache.keep, real], dim=-1)
        x = cached_layer(layer, x, cache, src_mask[:, None])  # the mask, shared by all heads
    return model.generator(model.decoder_norm(x))[:, 0]  # chapter 7: an identity unless pre-norm


@torch.no_grad()
def greedy_decode(model, src, max_len, start_id, end_id, cache=True):
    """Generate target ids one token at a time, always taking the most likely next token.

    src: (B, S) ids. Returns (B, <= max_len) ids, end_id included and pad_id after it: the ids of
    book.train.greedy_decode, which cache=False calls. With cache=True each step runs the decoder
    on the new position only (decode_step). An end_id the model cannot produce (say -1) makes
    every row run max_len steps.
    """
    _check_decoding(model, src, max_len, start_id, end_id)
    if not cache:
        return _recompute_greedy_decode(model, src, max_len, start_id, end_id)
    with evaluating(model):
        src_mask = padding_mask(src, model.config.pad_id)
        caches = start_cache(model, model.encode(src, src_mask))
        token = torch.full((src.size(0),), start_id, dtype=torch.long, device=src.device)
        finished = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        out = []
        for position in range(max_len):
            token = decode_step(model, token, position, caches, src_mask).argmax(dim=-1)
            token = token.masked_fill(finished, model.config.pad_id)
            out.append(token)
            finished |= token == end_id
            if finished.all():
                break
    return torch.stack(out, dim=1)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _shape(value):
    return tuple(value.shape) if torch.is_tensor(value) else type(value).__name__


def _check_memory(model, memory):
    d_model = model.config.d_model
    if not torch.is_tensor(memory) or memory.dim() != 3 or memory.size(-1) != d_model \
            or not memory.is_floating_point():
        got = f"{_shape(memory)} {memory.dtype}" if torch.is_tensor(memory) else _shape(memory)
        raise ValueError(f"memory must be the encoder's output, floats of shape (B, S, d_model={d_model}), got {got}")


def _check_step(model, token, position, caches, src_mask):
    # shapes and Python ints only: no value is read from the device, so the check costs nothing per step
    layers = len(model.decoder_layers)
    if not isinstance(caches, (list, tuple)) or len(caches) != layers:
        got = len(caches) if isinstance(caches, (list, tuple)) else type(caches).__name__
        raise ValueError(f"caches must be start_cache's list of {layers} LayerCache, one per decoder layer, got {got}")
    B, S, t = caches[0].cross_k.size(0), caches[0].cross_k.size(2), caches[0].keep.size(-1)
    max_len = model.config.max_len
    if not _is_int(position) or not 0 <= position < max_len:
        raise ValueError(f"position must be an integer from 0 to the model's max_len - 1 = {max_len - 1}, got {position!r}")
    if position != t:
        raise ValueError(f"position must be {t}, the number of positions already in the cache, got {position}")
    if not torch.is_tensor(token) or token.shape != (B,):
        raise ValueError(f"token must be a ({B},) tensor of ids, one per row of the cache, got {_shape(token)}")
    if not torch.is_tensor(src_mask) or src_mask.shape != (B, 1, S):
        raise ValueError(f"src_mask must be ({B}, 1, {S}), the padding mask of the cached memory, got {_shape(src_mask)}")


def _check_decoding(model, src, max_len, start_id, end_id, beam_size=1, length_penalty=0.0):
    if not torch.is_tensor(src) or src.dim() != 2 or src.dtype not in (torch.long, torch.int32):
        got = f"{_shape(src)} {src.dtype}" if torch.is_tensor(src) else _shape(src)
        raise ValueError(f"src must be a (B, S) tensor of integer token ids, got {got}")
    if not _is_int(max_len) or not 1 <= max_len <= model.config.max_len:
        raise ValueError(f"max_len must be an integer from 1 to the model's max_len={model.config.max_len}, "
                         f"got {max_len!r}")
    vocab = model.config.tgt_vocab_size
    if not _is_int(start_id) or not 0 <= start_id < vocab:
        raise ValueError(f"start_id must be a target token id in [0, {vocab}), got {start_id!r}")
    if not _is_int(end_id):
        raise ValueError(f"end_id must be an integer, got {end_id!r}")
    if not _is_int(beam_size) or beam_size < 1:
        raise ValueError(f"beam_size must be an integer >= 1, got {beam_size!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) \
            or not 0 <= length_penalty < float("inf"):
        raise ValueError(f"length_penalty (alpha) must be a finite number >= 0, got {length_penalty!r}")
    if length_penalty * math.log((5 + max_len) / 6) > math.log(torch.finfo(torch.float32).max):
        # the scores log P / lp would all round to -0.0, and the first hypothesis to end would win
        raise ValueError(f"length_penalty={length_penalty!r} makes lp(max_len={max_len}) too large for float32 scores")


def lp(n, alpha):
    """The length penalty of Wu et al. (2016), ((5 + n) / 6) ** alpha, for n generated tokens."""
    return ((5 + n) / 6) ** alpha


@torch.no_grad()
def beam_search(model, src, max_len, start_id, end_id, beam_size=4, length_penalty=0.6):
    """Keep the beam_size most likely hypotheses per source, return the best finished one and its score.

    src: (B, S) ids. Returns (ids (B, L), scores (B,)). The score of a hypothesis of n generated
    tokens (end_id included) is log P(Y | X) / lp(n, length_penalty). ids are in greedy_decode's
    format, end_id included and pad_id after it; a hypothesis that reaches max_len without end_id
    finishes there. A source is done when its best finished score is at least that of every live
    hypothesis, scored as if it ended now. beam_size=1 gives greedy_decode's ids.
    """
    _check_decoding(model, src, max_len, start_id, end_id, beam_size, length_penalty)
    B, K, V = src.size(0), beam_size, model.config.tgt_vocab_size
    with evaluating(model):
        src_mask = padding_mask(src, model.config.pad_id)
        memory = model.encode(src, src_mask).repeat_interleave(K, dim=0)  # row b * K + k: hypothesis k of source b
        caches, src_mask = start_cache(model, memory), src_mask.repeat_interleave(K, dim=0)
        dtype = torch.promote_types(memory.dtype, torch.float32)  # of the scores: float64 for a float64 model
        alive = _Alive(B, K, start_id, src.device, dtype)
        finished = _Finished(B, max_len, model.config.pad_id, src.device, dtype)
        for step in range(max_len):
            logits = decode_step(model, alive.last_tokens(), step, caches, src_mask)  # (B * K, V)
            log_p = alive.log_p[:, :, None] + torch.log_softmax(logits, dim=-1).view(B, K, V)
            top, index = log_p.view(B, K * V).topk(min(2 * K, K * V), dim=1)  # best first
            parent, token = index // V, index % V
            rank = torch.arange(top.size(1), device=src.device)
            ends = token == end_id
            survivors = (rank + ends * top.size(1)).argsort(dim=1)[:, :K]  # the K best that did not end
            finishing = ends & (rank < K)
            if step + 1 == max_len:  # no room left: the survivors finish here too
                finishing = finishing.scatter(1, survivors, True)
            divisor = lp(step + 1, length_penalty)
            finished.add(alive.tokens, parent, token, top, finishing, divisor)
            alive.advance(parent.gather(1, survivors), token.gather(1, survivors), top.gather(1, survivors))
            finished.stop_if_unbeaten(alive.log_p.max(dim=1).values / divisor)
            if finished.done.all():
                break
            for cache in caches:  # each new hypothesis continues the cache rows of its parent
                cache.self_k, cache.self_v, cache.keep = (cache.self_k[alive.rows], cache.self_v[alive.rows],
                                                          cache.keep[alive.rows])
    return finished.ids(), finished.score


class _Alive:
    """The live hypotheses: tokens (B, K, t) generated so far and their log-probabilities (B, K)."""

    def __init__(self, batch, beam_size, start_id, device, dtype=torch.float32):
        self.start = torch.full((batch * beam_size,), start_id, dtype=torch.long, device=device)
        self.tokens = torch.zeros(batch, beam_size, 0, dtype=torch.long, device=device)
        self.log_p = torch.full((batch, beam_size), float("-inf"), device=device, dtype=dtype)
        self.log_p[:, 0] = 0.0  # a single hypothesis to begin with: the start token alone
        self.rows = None

    def last_tokens(self):
        """(B * K,) the token each hypothesis feeds to the decoder next."""
        return self.start if self.tokens.size(2) == 0 else self.tokens[:, :, -1].reshape(-1)

    def advance(self, parent, token, log_p):
        """Replace the hypotheses by the extensions ``parent`` (B, K) + ``token`` (B, K)."""
        batch, beam_size = parent.shape
        history = self.tokens.gather(1, parent[:, :, None].expand(-1, -1, self.tokens.size(2)))
        self.tokens = torch.cat([history, token[:, :, None]], dim=2)
        self.log_p = log_p
        self.rows = (torch.arange(batch, device=parent.device)[:, None] * beam_size + parent).reshape(-1)


class _Finished:
    """Per source: the best finished hypothesis so far, its score, and whether the source is done."""

    def __init__(self, batch, max_len, pad_id, device, dtype=torch.float32):
        self.pad_id = pad_id
        self.score = torch.full((batch,), float("-inf"), device=device, dtype=dtype)
        self.best = torch.full((batch, max_len), pad_id, dtype=torch.long, device=device)
        self.length = torch.zeros(batch, dtype=torch.long, device=device)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)

    def add(self, tokens, parent, token, log_p, finishing, divisor):
        """Candidates parent + token (B, C) of log-probability log_p (B, C); those marked finishing finish."""
        finishing = finishing & torch.isfinite(log_p) & ~self.done[:, None]
        score = torch.where(finishing, log_p / divisor, torch.tensor(float("-inf"), device=log_p.device))
        top_score, which = score.max(dim=1)
        better = (top_score > self.score).nonzero().squeeze(1)  # sources with a new best hypothesis
        if len(better):
            pick = which[better]
            hypothesis = torch.cat([tokens[better, parent[better, pick]], token[better, pick, None]], dim=1)
            self.best[better] = self.pad_id
            self.best[better, : hypothesis.size(1)] = hypothesis
            self.length[better] = hypothesis.size(1)
            self.score[better] = top_score[better]

    def stop_if_unbeaten(self, alive_score):
        """A source is done once no live hypothesis (B,), ending now, would score better than its best."""
        self.done |= self.score >= alive_score

    def ids(self):
        return self.best[:, : int(self.length.max()) if len(self.length) else 0]  # (B, longest best)


@torch.no_grad()
def sequence_log_prob(model, src, ids, start_id, end_id):
    """log P(ids | src) by teacher forcing, and n, the number of tokens summed.

    src: (B, S); ids: (B, L) in greedy_decode's format. Sums the log-probabilities of the tokens
    up to the first end_id, included (all L when there is none). Returns (log_p (B,), n (B,)).
    """
    _check_output_ids(model, src, ids)
    with evaluating(model):
        tgt_in = torch.cat([torch.full_like(ids[:, :1], start_id), ids[:, :-1]], dim=1)
        log_probs = torch.log_softmax(model(src, tgt_in), dim=-1).gather(2, ids[:, :, None])[:, :, 0]
    ends = (ids == end_id).long()
    counted = ends.cumsum(dim=1) - ends == 0  # no end_id before this position
    return torch.where(counted, log_probs, 0.0).sum(dim=1), counted.sum(dim=1)


def _check_output_ids(model, src, ids):
    vocab = model.config.tgt_vocab_size
    if not torch.is_tensor(ids) or ids.dim() != 2 or ids.dtype not in (torch.long, torch.int32):
        got = f"{_shape(ids)} {ids.dtype}" if torch.is_tensor(ids) else _shape(ids)
        raise ValueError(f"ids must be a (B, L) tensor of integer target ids, got {got}")
    if torch.is_tensor(src) and src.dim() == 2 and src.size(0) != ids.size(0):
        raise ValueError(f"ids must have one row per source: src has {src.size(0)} rows, ids {ids.size(0)}")
    low, high = (ids.min().item(), ids.max().item()) if ids.numel() else (0, 0)
    if low < 0 or high >= vocab:
        raise ValueError(f"ids must be target token ids in [0, {vocab}), got min {low} and max {high}")


def translate_beam(model, tokenizer, texts, beam_size=4, length_penalty=0.6, batch_size=500, max_len=16):
    """Read a list of texts with beam search, return the model's answer for each, as strings."""
    def decode(model, src, max_len, start_id, end_id):
        return beam_search(model, src, max_len, start_id, end_id, beam_size, length_penalty)[0]
    return translate(model, tokenizer, texts, batch_size, max_len, decode=decode)
