# Generated from chapters/11_variants.ipynb by tools/export.py: edit the notebook, not this file.
"""A decoder-only Transformer, GPT-style, and its use on a sequence-to-sequence task (chapter 11).

``GPT(config)`` stacks chapter 6's pre-norm encoder layer under a causal mask: token embedding
plus positions, the blocks, a final LayerNorm, and an output projection tied to the token
embedding. ``GPTTranslator`` reads a source and writes a target as one sequence, with the
interface of chapter 7's Transformer; ``generate`` decodes it greedily with a key/value cache.
"""
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from book.attention import causal_mask, padding_mask
from book.decoding import attend
from book.multi_head import split_heads
from book.residual import EncoderLayer, LayerNorm
from book.self_attention import sinusoidal_positional_encoding
from book.train import evaluating
from book.transformer import Embedding

POSITIONS = ("sinusoidal", "learned", "none")


@dataclass
class GPTConfig:
    """The sizes of a decoder-only Transformer.

    vocab_size V, d_model D (divisible by num_heads h, even for the sinusoidal table), num_layers L,
    d_ff the feed-forward width, max_len the longest sequence, pad_id the padding token.
    positions: "sinusoidal" (the paper's table, a buffer), "learned" (a trained (max_len, D)
    table, the paper's Table 3 row E) or "none".
    """
    vocab_size: int
    d_model: int
    num_heads: int
    num_layers: int
    d_ff: int
    dropout: float = 0.1
    max_len: int = 1024
    pad_id: int = 0
    positions: str = "sinusoidal"

    def __post_init__(self):
        _check_gpt_config(self)


def token_positions(tokens, pad_id):
    """tokens (B, T) -> positions (B, T): how many real (non-padding) tokens come before each one."""
    real = (tokens != pad_id).long()
    return real.cumsum(dim=1) - real


class GPT(nn.Module):
    """A decoder-only Transformer: tokens (B, T) -> logits (B, T, V) for the next token at every position.

    x_0 = E[tokens] * sqrt(D) + P[positions]; each block is a pre-norm EncoderLayer under a padding
    and causal mask; logits = LayerNorm(x_L) E^T, the output projection tied to the embedding.
    """

    def __init__(self, config):
        super().__init__()
        c = self.config = _check_is_gpt_config(config)
        self.tok_embed = Embedding(c.vocab_size, c.d_model)
        if c.positions == "learned":
            self.pe = nn.Parameter(torch.empty(c.max_len, c.d_model))
        else:  # a buffer moves with the model (.to) but is never trained, nor saved
            table = sinusoidal_positional_encoding(c.max_len, c.d_model) if c.positions == "sinusoidal" else None
            self.register_buffer("pe", table, persistent=False)
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(EncoderLayer(c.d_model, c.num_heads, c.d_ff, c.dropout, norm_first=True)
                                    for _ in range(c.num_layers))
        self.final_norm = LayerNorm(c.d_model)
        self.generator = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.generator.weight = self.tok_embed.weight  # one (V, D) matrix reads and writes tokens
        self.reset_parameters()

    def reset_parameters(self):
        """Xavier-uniform for every weight matrix, as chapter 7; a learned position table starts
        at the scale of the sinusoidal one (mean square 1/2)."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if self.config.positions == "learned":
            nn.init.normal_(self.pe, std=math.sqrt(0.5))

    def _apply(self, fn, *args, **kwargs):
        # Every move of the model (.to, .double, .to_empty) passes through here. to_empty leaves
        # buffers uninitialized, and a state dict cannot restore this one (it is not saved), so
        # the sinusoidal table is written again after any move.
        super()._apply(fn, *args, **kwargs)
        if self.config.positions == "sinusoidal" and self.pe.device.type != "meta":
            with torch.no_grad(), torch.device("cpu"):
                self.pe.copy_(sinusoidal_positional_encoding(self.config.max_len, self.config.d_model))
        return self

    def embed(self, tokens, positions):
        """tokens, positions: (B, T) -> x_0 (B, T, D)."""
        x = self.tok_embed(tokens)
        if self.pe is not None:
            # The look-up self.pe[positions], written as F.embedding: its backward sums the gradients
            # of repeated rows in a fixed order, where indexing's backward on several threads does not.
            x = x + F.embedding(positions, self.pe)
        return self.dropout(x)

    def forward(self, tokens):
        """tokens: (B, T) ids -> logits (B, T, V); position t sees the real tokens at 0..t."""
        _check_tokens(tokens, self.config)
        pad = self.config.pad_id
        mask = padding_mask(tokens, pad) & causal_mask(tokens.size(1), tokens.device)  # (B, T, T)
        x = self.embed(tokens, token_positions(tokens, pad))
        for block in self.blocks:
            x = block(x, mask)
        return self.generator(self.final_norm(x))


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_gpt_config(c):
    for name in ("vocab_size", "d_model", "num_heads", "num_layers", "d_ff", "max_len"):
        value = getattr(c, name)
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if c.d_model % c.num_heads:
        raise ValueError(f"d_model={c.d_model} is not divisible by num_heads={c.num_heads}")
    if c.d_model % 2 and c.positions == "sinusoidal":
        raise ValueError(f"d_model must be even for the sinusoidal table, got {c.d_model}")
    if isinstance(c.dropout, bool) or not isinstance(c.dropout, (int, float)) or not 0 <= c.dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {c.dropout!r}")
    if not _is_int(c.pad_id) or not 0 <= c.pad_id < c.vocab_size:
        raise ValueError(f"pad_id={c.pad_id!r} must be a token id in [0, vocab_size={c.vocab_size})")
    if c.positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {c.positions!r}")


def _check_is_gpt_config(config):
    if not isinstance(config, GPTConfig):
        raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
    _check_gpt_config(config)  # again: its fields may have been changed since it was made
    return config


def _check_tokens(tokens, config, name="tokens"):
    if not torch.is_tensor(tokens) or tokens.dim() != 2:
        got = f"shape {tuple(tokens.shape)}" if torch.is_tensor(tokens) else type(tokens).__name__
        raise ValueError(f"{name} must be a 2-D (batch, length) tensor of token ids, got {got}")
    if tokens.dtype not in (torch.long, torch.int32):  # what the embedding takes
        raise ValueError(f"{name} must hold integer token ids (torch.long or torch.int32), got dtype {tokens.dtype}")
    if not 1 <= tokens.size(1) <= config.max_len:
        raise ValueError(f"{name} has length {tokens.size(1)}; expected 1 to max_len={config.max_len}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= config.vocab_size):
        raise ValueError(f"{name} ids must be in [0, {config.vocab_size}), got min {tokens.min().item()} "
                         f"and max {tokens.max().item()}")


def _check_feed(gpt, tokens, cache):
    _check_tokens(tokens, gpt.config)
    c = gpt.config
    if not isinstance(cache, GPTCache):
        raise ValueError(f"cache must be a GPTCache (start_gpt_cache makes one), got {type(cache).__name__}")
    expected = (c.num_layers, c.num_heads, c.d_model // c.num_heads)
    got = (len(cache.keys), cache.keys[0].size(1), cache.keys[0].size(3)) if cache.keys else (0,)
    if got != expected:
        raise ValueError(f"the cache holds (layers, heads, d_k) = {got}; this GPT has {expected}")
    held = cache.keep.size(-1)
    if tokens.size(0) != cache.keep.size(0):
        raise ValueError(f"tokens has {tokens.size(0)} rows, the cache {cache.keep.size(0)}")
    if held + tokens.size(1) > gpt.config.max_len:
        raise ValueError(f"the cache holds {held} tokens; {tokens.size(1)} more would pass the model's "
                         f"max_len={gpt.config.max_len}")


def gpt_parameter_count(config):
    """The number of parameters of GPT(config), from its layout (the chapter's formula)."""
    _check_is_gpt_config(config)
    V, D, L, F = config.vocab_size, config.d_model, config.num_layers, config.d_ff
    learned = config.max_len * D if config.positions == "learned" else 0
    return V * D + L * (4 * D * D + 2 * D * F + F + 9 * D) + 2 * D + learned


class GPTTranslator(nn.Module):
    """A GPT that reads the source, then writes the target, in one sequence.

    forward(src (B, S), tgt (B, T)) -> logits (B, T, V) at the target's positions: the interface
    of chapter 7's Transformer. config is the GPT's (d_model, pad_id, ...).
    """

    def __init__(self, gpt):
        super().__init__()
        if not isinstance(gpt, GPT):
            raise ValueError(f"GPTTranslator wraps a GPT, got {type(gpt).__name__}")
        self.gpt = gpt
        self.config = gpt.config

    def forward(self, src, tgt):
        _check_pair(src, tgt, self.config)
        return self.gpt(torch.cat([src, tgt], dim=1))[:, src.size(1):]


def _check_pair(src, tgt, config):
    for name, x in (("src", src), ("tgt", tgt)):
        _check_tokens(x, config, name)
    if src.size(0) != tgt.size(0):
        raise ValueError(f"src and tgt must have the same batch size, got {src.size(0)} and {tgt.size(0)}")
    if src.size(1) + tgt.size(1) > config.max_len:  # the GPT reads them as one row
        raise ValueError(f"src (length {src.size(1)}) and tgt (length {tgt.size(1)}) make a row of "
                         f"{src.size(1) + tgt.size(1)} tokens, more than max_len={config.max_len}")


@dataclass
class GPTCache:
    """What generation keeps between steps, after t tokens have been fed.

    keys[l]: (B, h, t, d_k) and values[l]: (B, h, t, d_v), block l's keys and values;
    keep: (B, 1, 1, t) bool, False where a fed token is padding; next_position: (B,).
    """
    keys: list
    values: list
    keep: torch.Tensor
    next_position: torch.Tensor


def start_gpt_cache(gpt, batch_size, device=None):
    """An empty GPTCache for ``batch_size`` rows: nothing fed yet."""
    if not _is_int(batch_size) or batch_size < 0:
        raise ValueError(f"batch_size must be an integer >= 0, got {batch_size!r}")
    c = gpt.config
    empty = torch.zeros(batch_size, c.num_heads, 0, c.d_model // c.num_heads, device=device,
                        dtype=gpt.tok_embed.weight.dtype)
    return GPTCache([empty] * c.num_layers, [empty] * c.num_layers,
                    torch.ones(batch_size, 1, 1, 0, dtype=torch.bool, device=device),
                    torch.zeros(batch_size, dtype=torch.long, device=device))


def feed(gpt, tokens, cache):
    """Logits (B, n, V) for tokens (B, n) that follow what ``cache`` holds; the cache grows by n."""
    _check_feed(gpt, tokens, cache)
    real = tokens != gpt.config.pad_id
    positions = cache.next_position[:, None] + token_positions(tokens, gpt.config.pad_id)
    cache.next_position = cache.next_position + real.sum(dim=1)
    cache.keep = torch.cat([cache.keep, real[:, None, None, :]], dim=-1)
    t, n = cache.keep.size(-1), tokens.size(1)
    mask = cache.keep & causal_mask(t, tokens.device)[t - n:]  # the n new queries' rows: (B, 1, n, t)
    x = gpt.embed(tokens, positions)
    for l, block in enumerate(gpt.blocks):
        def self_attention(h, l=l, a=block.self_attn):  # h: the new tokens, normalized
            cache.keys[l] = torch.cat([cache.keys[l], split_heads(a.k_proj(h), a.num_heads)], dim=2)
            cache.values[l] = torch.cat([cache.values[l], split_heads(a.v_proj(h), a.num_heads)], dim=2)
            return attend(a, h, cache.keys[l], cache.values[l], mask)
        x = block.attn_residual(x, self_attention)
        x = block.ff_residual(x, block.feed_forward)
    return gpt.generator(gpt.final_norm(x))


@torch.no_grad()
def generate(model, src, max_len, start_id, end_id, cache=True):
    """Greedy decoding for a GPTTranslator: src (B, S) -> ids (B, <= max_len), as book.train.greedy_decode.

    cache=True feeds the prompt (source and start token) once, then one token per step;
    cache=False runs the whole sequence again at every step.
    """
    _check_generate(model, src, max_len, start_id, end_id)
    pad = model.config.pad_id
    with evaluating(model):
        out = src.new_full((src.size(0), 1), start_id)
        if cache:
            memo = start_gpt_cache(model.gpt, src.size(0), src.device)
            logits = feed(model.gpt, torch.cat([src, out], dim=1), memo)[:, -1]
        finished = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        for step in range(max_len):
            if not cache:
                logits = model(src, out)[:, -1]
            next_id = logits.argmax(-1).masked_fill(finished, pad)
            out = torch.cat([out, next_id[:, None]], dim=1)
            finished |= next_id == end_id
            if finished.all():
                break
            if cache and step < max_len - 1:
                logits = feed(model.gpt, next_id[:, None], memo)[:, -1]
    return out[:, 1:]


def _check_generate(model, src, max_len, start_id, end_id):
    if not isinstance(model, GPTTranslator):
        raise ValueError(f"generate needs a GPTTranslator, got {type(model).__name__}")
    _check_tokens(src, model.config, "src")
    if not _is_int(max_len) or max_len < 1:
        raise ValueError(f"max_len must be an integer >= 1, got {max_len!r}")
    if not _is_int(start_id) or not 0 <= start_id < model.config.vocab_size:
        raise ValueError(f"start_id must be a token id in [0, {model.config.vocab_size}), got {start_id!r}")
    if not _is_int(end_id):
        raise ValueError(f"end_id must be an integer, got {end_id!r}")
    if src.size(1) + max_len > model.config.max_len:  # the longest row fed: source, start, max_len - 1 tokens
        raise ValueError(f"source length {src.size(1)} + max_len {max_len} exceeds the model's "
                         f"max_len={model.config.max_len}")
