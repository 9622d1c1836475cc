# Generated from chapters/07_transformer.ipynb by tools/export.py: edit the notebook, not this file.
"""The full encoder-decoder Transformer (chapter 7).

``Transformer(config)`` embeds source and target tokens, runs them through the
encoder and decoder stacks (post-norm as in the paper, or pre-norm with a final
LayerNorm after each stack) and turns the decoder's output into logits over the
target vocabulary. ``TorchReference`` rebuilds the same model from ``torch.nn``
parts, for checks and benchmarks.
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from book.attention import causal_mask, padding_mask
from book.multi_head import MultiHeadAttention
from book.residual import EncoderLayer, FeedForward, LayerNorm, Residual
from book.self_attention import sinusoidal_positional_encoding


@dataclass
class TransformerConfig:
    """The sizes of a Transformer.

    The defaults are the paper's base model, with one exception:
    share_embeddings is False, so that source and target may have vocabularies
    of their own. The paper ties the source embedding, the target embedding and
    the output projection into one matrix: share_embeddings=True, which needs
    src_vocab_size == tgt_vocab_size. d_k and d_v (per-head widths of
    queries/keys and values) default to d_model // num_heads. norm_first=False
    is the paper's post-norm; True builds pre-norm layers and a final LayerNorm
    after each stack, as torch.nn.Transformer(norm_first=True). max_len (the
    longest sequence the positional table covers) and pad_id are ours.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 512
    num_heads: int = 8
    num_layers: int = 6
    d_ff: int = 2048
    d_k: Optional[int] = None
    d_v: Optional[int] = None
    dropout: float = 0.1
    max_len: int = 5000
    pad_id: int = 0
    share_embeddings: bool = False
    norm_first: bool = False

    def __post_init__(self):
        _check_config(self)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_config(c):
    for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "num_heads", "num_layers", "d_ff", "max_len"):
        value = getattr(c, name)
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    for name in ("d_k", "d_v"):
        value = getattr(c, name)
        if value is not None and (not _is_int(value) or value < 1):
            raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
    if (c.d_k is None or c.d_v is None) and c.d_model % c.num_heads:
        raise ValueError(
            f"d_model={c.d_model} is not divisible by num_heads={c.num_heads}; "
            f"choose sizes that divide, or pass d_k and d_v explicitly"
        )
    if c.d_model % 2:
        raise ValueError(f"d_model must be even for the sinusoidal encoding, got {c.d_model}")
    if isinstance(c.dropout, bool) or not isinstance(c.dropout, (int, float)) or not 0 <= c.dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {c.dropout!r}")
    for name in ("share_embeddings", "norm_first"):
        if not isinstance(getattr(c, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(c, name)!r}")
    if c.share_embeddings and c.src_vocab_size != c.tgt_vocab_size:
        raise ValueError(
            f"share_embeddings=True needs equal vocabularies, got src_vocab_size={c.src_vocab_size} "
            f"and tgt_vocab_size={c.tgt_vocab_size}"
        )
    if not _is_int(c.pad_id) or not 0 <= c.pad_id < min(c.src_vocab_size, c.tgt_vocab_size):
        raise ValueError(
            f"pad_id={c.pad_id!r} must be a token id of both vocabularies, i.e. in "
            f"[0, {min(c.src_vocab_size, c.tgt_vocab_size)})"
        )


class Embedding(nn.Module):
    """Token ids (B, T) -> vectors (B, T, D): rows of a (V, D) table, times sqrt(D)."""

    def __init__(self, vocab_size, d_model):
        super().__init__()
        self.vocab_size, self.d_model = vocab_size, d_model
        self.scale = math.sqrt(d_model)
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        nn.init.normal_(self.weight)

    def forward(self, tokens, name="the embedding's input"):
        """tokens: (B, T) ids -> (B, T, D); ``name`` is how an error message calls them."""
        _check_ids(tokens, self.vocab_size, name)
        return F.embedding(tokens, self.weight) * self.scale


class PositionalEncoding(nn.Module):
    """x (B, T, D) -> dropout(x + PE[:T]), with the sinusoidal table PE (max_len, D).

    The table is a buffer, not a parameter: it moves with the model (``.to``)
    but is never trained and not stored in the state dict. A table built on the
    meta device is computed again when the module gets real memory (``to_empty``).
    """

    def __init__(self, d_model, max_len, dropout=0.0):
        super().__init__()
        # Built on the current default device: under ``torch.device("meta")`` it
        # holds only a shape, so counting parameters of a big model allocates nothing.
        self.register_buffer("pe", sinusoidal_positional_encoding(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        _check_sequence(x, self.pe)
        return self.dropout(x + self.pe[: x.size(1)])

    def _apply(self, fn, recurse=True):
        # Every move (.to, .double, to_empty) goes through _apply. to_empty hands a meta
        # buffer uninitialized memory, so a table that had no values is computed afresh.
        had_no_values = self.pe.is_meta
        super()._apply(fn, recurse)
        if had_no_values and not self.pe.is_meta:
            with torch.device(self.pe.device):
                self.pe = sinusoidal_positional_encoding(*self.pe.shape).to(self.pe.dtype)
        return self


def _check_ids(tokens, vocab_size, name):
    if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.long, torch.int32):  # what F.embedding takes
        got = f"dtype {tokens.dtype}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise TypeError(f"{name} must hold integer token ids (torch.long or torch.int32), got {got}")
    if tokens.numel() and not tokens.is_meta:  # a meta tensor has a shape but no values to check
        # One reduction and one copy to the host: on a GPU each copy waits for the device.
        low, high = torch.stack(torch.aminmax(tokens)).tolist()
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} token ids must be in [0, {vocab_size}), got min {low} and max {high}")


def _check_sequence(x, pe):
    max_len, d_model = pe.shape
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.size(2) != d_model:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected x of shape (batch, length, d_model={d_model}), got {got}")
    if x.size(1) > max_len:
        raise ValueError(f"x has length {x.size(1)}, but the table holds max_len={max_len} positions")


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder output, feed-forward.

    Each sublayer sits in a ``Residual`` (post-norm by default, as in the paper).
    x: (B, T, D); memory: (B, S, D); tgt_mask: bool, broadcastable to (B, T, T);
    memory_mask: bool, broadcastable to (B, T, S). Returns (B, T, D).
    """

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0, d_k=None, d_v=None, norm_first=False):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, d_k, d_v, dropout)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, d_k, d_v, dropout)
        self.feed_forward = FeedForward(d_model, d_ff, dropout)
        self.self_residual = Residual(d_model, dropout, norm_first)
        self.cross_residual = Residual(d_model, dropout, norm_first)
        self.ff_residual = Residual(d_model, dropout, norm_first)

    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        x = self.self_residual(x, lambda h: self.self_attn(h, h, h, tgt_mask))
        # Queries come from the decoder, keys and values from the encoder.
        x = self.cross_residual(x, lambda h: self.cross_attn(h, memory, memory, memory_mask))
        return self.ff_residual(x, self.feed_forward)


class Transformer(nn.Module):
    """The encoder-decoder of "Attention Is All You Need" (post-norm unless config.norm_first).

    forward(src (B, S), tgt (B, T)) -> logits (B, T, tgt_vocab_size), with the
    padding and causal masks built from ``config.pad_id``. For generation, call
    ``encode`` once and ``decode`` once per new token.
    """

    def __init__(self, config):
        super().__init__()
        c = self.config = _check_is_config(config)
        self.src_embed = Embedding(c.src_vocab_size, c.d_model)
        self.tgt_embed = self.src_embed if c.share_embeddings else Embedding(c.tgt_vocab_size, c.d_model)
        self.positions = PositionalEncoding(c.d_model, c.max_len, c.dropout)
        sizes = (c.d_model, c.num_heads, c.d_ff, c.dropout, c.d_k, c.d_v, c.norm_first)
        self.encoder_layers = nn.ModuleList(EncoderLayer(*sizes) for _ in range(c.num_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(*sizes) for _ in range(c.num_layers))
        # Post-norm layers end with a norm already; a pre-norm stack gets a final one.
        self.encoder_norm = LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.decoder_norm = LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.generator = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        if c.share_embeddings:
            self.generator.weight = self.src_embed.weight  # one (V, D) matrix in three roles
        self.reset_parameters()

    def reset_parameters(self):
        """Xavier-uniform for every weight matrix, each by its own shape (W^Q, W^K, W^V are three
        (h*d_k, D) or (h*d_v, D) maps); vectors (biases, norm gains) keep their modules' values."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def encode(self, src, src_mask=None):
        """src: (B, S) token ids -> memory H (B, S, D); src_mask defaults to padding (B, 1, S).

        The memory carries the mask it was made with, as ``memory.src_mask``.
        """
        _check_tokens(src, "src", self.config)
        if src_mask is None:
            src_mask = padding_mask(src, self.config.pad_id)
        x = self.positions(self.src_embed(src, "src"))
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        memory = self.encoder_norm(x)
        memory.src_mask = src_mask  # decode needs it, and never sees the source tokens
        return memory

    def decode(self, tgt, memory, src_mask=None, tgt_mask=None):
        """tgt: (B, T) token ids, memory: (B, S, D) -> logits (B, T, tgt_vocab_size).

        tgt_mask defaults to padding & causal (B, T, T). src_mask (B, 1, S) defaults to
        ``memory.src_mask``, the mask ``encode`` used; a memory without one (built or changed
        by other code) needs an explicit src_mask, else ValueError.
        """
        _check_decoder_input(tgt, memory, self.config)
        if src_mask is None:
            src_mask = _mask_of(memory)
        if tgt_mask is None:
            tgt_mask = padding_mask(tgt, self.config.pad_id) & causal_mask(tgt.size(1), tgt.device)
        y = self.positions(self.tgt_embed(tgt, "tgt"))
        for layer in self.decoder_layers:
            y = layer(y, memory, tgt_mask, src_mask)
        return self.generator(self.decoder_norm(y))

    def forward(self, src, tgt):
        """src: (B, S), tgt: (B, T) token ids -> logits (B, T, tgt_vocab_size)."""
        _check_batch(src, tgt)
        src_mask = padding_mask(src, self.config.pad_id)
        return self.decode(tgt, self.encode(src, src_mask), src_mask)


def _check_is_config(config):
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    return config


def _check_2d(tokens, name):
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        got = f"shape {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"{name} must be a 2-D (batch, length) tensor of token ids, got {got}")


def _check_tokens(tokens, name, config):
    _check_2d(tokens, name)  # the ids themselves are checked by the embedding, once
    if not 1 <= tokens.size(1) <= config.max_len:
        raise ValueError(f"{name} has length {tokens.size(1)}; expected 1 to max_len={config.max_len}")


def _check_decoder_input(tgt, memory, config):
    _check_tokens(tgt, "tgt", config)
    expected = (tgt.size(0), config.d_model)
    if not isinstance(memory, torch.Tensor) or memory.dim() != 3 or (memory.size(0), memory.size(2)) != expected:
        got = tuple(memory.shape) if isinstance(memory, torch.Tensor) else type(memory).__name__
        raise ValueError(f"memory must be (batch={expected[0]}, source length, d_model={expected[1]}), got {got}")


def _check_batch(src, tgt):
    _check_2d(src, "src")
    _check_2d(tgt, "tgt")
    if src.size(0) != tgt.size(0):
        raise ValueError(f"src and tgt must have the same batch size, got {src.size(0)} and {tgt.size(0)}")


def _mask_of(memory):
    """The source padding mask that encode left on memory; ValueError if there is none."""
    mask = getattr(memory, "src_mask", None)
    if mask is None:
        raise ValueError(
            f"decode got a memory of shape {tuple(memory.shape)} without a src_mask: pass the mask of its "
            f"source (B, 1, S), e.g. padding_mask(src, pad_id), or torch.ones(B, 1, S, dtype=torch.bool) "
            f"for a source without padding"
        )
    return mask


class TorchReference(nn.Module):
    """The same model assembled from torch.nn parts: nn.Embedding, nn.Transformer, nn.Linear.

    ReLU, batch-first. Post-norm without the LayerNorm that nn.Transformer puts
    after each stack by default (the paper's post-norm model has none); with
    config.norm_first, pre-norm layers and those final norms, as
    nn.Transformer(norm_first=True). ``copy_from(model)`` loads the weights of
    one of our ``Transformer`` models. Tokens: src (B, S), tgt (B, T); masks are
    built from ``config.pad_id``.
    """

    def __init__(self, config):
        super().__init__()
        c = self.config = config
        head = c.d_model // c.num_heads
        if c.d_model % c.num_heads or c.d_k not in (None, head) or c.d_v not in (None, head):
            raise ValueError(
                f"nn.Transformer needs d_k = d_v = d_model / num_heads; got d_model={c.d_model}, "
                f"num_heads={c.num_heads}, d_k={c.d_k}, d_v={c.d_v}"
            )
        self.src_embed = nn.Embedding(c.src_vocab_size, c.d_model)
        self.tgt_embed = self.src_embed if c.share_embeddings else nn.Embedding(c.tgt_vocab_size, c.d_model)
        self.register_buffer("pe", sinusoidal_positional_encoding(c.max_len, c.d_model), persistent=False)
        self.dropout = nn.Dropout(c.dropout)
        sizes = dict(d_model=c.d_model, nhead=c.num_heads, dim_feedforward=c.d_ff, dropout=c.dropout,
                     activation="relu", batch_first=True, norm_first=c.norm_first)

        def final_norm():
            return nn.LayerNorm(c.d_model) if c.norm_first else None

        # enable_nested_tensor=False keeps the outputs at padded positions (the
        # nested-tensor fast path would zero them).
        encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**sizes), c.num_layers, norm=final_norm(),
                                        enable_nested_tensor=False)
        decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**sizes), c.num_layers, norm=final_norm())
        self.transformer = nn.Transformer(custom_encoder=encoder, custom_decoder=decoder, **sizes)
        self.generator = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        if c.share_embeddings:
            self.generator.weight = self.src_embed.weight

    def _embed(self, embedding, tokens):
        return self.dropout(embedding(tokens) * math.sqrt(self.config.d_model) + self.pe[: tokens.size(1)])

    @staticmethod
    def _future(length, device):
        # torch's masks say True = "may NOT attend", the opposite of ours.
        return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)

    def encode(self, src):
        """src: (B, S) -> memory (B, S, D), through nn.TransformerEncoder."""
        x = self._embed(self.src_embed, src)
        return self.transformer.encoder(x, src_key_padding_mask=src == self.config.pad_id)

    def decode(self, tgt, memory, src):
        """tgt: (B, T), memory: (B, S, D), src: (B, S) for its padding -> logits (B, T, V)."""
        pad, length = self.config.pad_id, tgt.size(1)
        hidden = self.transformer.decoder(
            self._embed(self.tgt_embed, tgt), memory,
            tgt_mask=self._future(length, tgt.device), tgt_is_causal=True,
            tgt_key_padding_mask=tgt == pad, memory_key_padding_mask=src == pad,
        )
        return self.generator(hidden)

    def forward(self, src, tgt):
        """src: (B, S), tgt: (B, T) -> logits (B, T, V), through nn.Transformer.forward."""
        pad, length = self.config.pad_id, tgt.size(1)
        hidden = self.transformer(
            self._embed(self.src_embed, src), self._embed(self.tgt_embed, tgt),
            tgt_mask=self._future(length, tgt.device), tgt_is_causal=True,
            src_key_padding_mask=src == pad, tgt_key_padding_mask=tgt == pad, memory_key_padding_mask=src == pad,
        )
        return self.generator(hidden)

    @torch.no_grad()
    def copy_from(self, model):
        """Load the weights of our ``Transformer`` with the same config; returns self."""
        if model.config != self.config:
            raise ValueError(f"configs differ: {model.config} vs {self.config}")
        self.src_embed.weight.copy_(model.src_embed.weight)
        self.tgt_embed.weight.copy_(model.tgt_embed.weight)
        self.generator.weight.copy_(model.generator.weight)
        for ours, theirs in zip(model.encoder_layers, self.transformer.encoder.layers):
            _copy_attention(ours.self_attn, theirs.self_attn)
            _copy_sublayers(ours, theirs, [ours.attn_residual, ours.ff_residual])
        for ours, theirs in zip(model.decoder_layers, self.transformer.decoder.layers):
            _copy_attention(ours.self_attn, theirs.self_attn)
            _copy_attention(ours.cross_attn, theirs.multihead_attn)
            _copy_sublayers(ours, theirs, [ours.self_residual, ours.cross_residual, ours.ff_residual])
        if self.config.norm_first:
            for ours, theirs in [(model.encoder_norm, self.transformer.encoder.norm),
                                 (model.decoder_norm, self.transformer.decoder.norm)]:
                theirs.weight.copy_(ours.weight)
                theirs.bias.copy_(ours.bias)
        return self


def _copy_attention(ours, theirs):
    # nn.MultiheadAttention stacks the three input projections into one matrix.
    theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
    theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
    theirs.out_proj.weight.copy_(ours.out_proj.weight)
    theirs.out_proj.bias.copy_(ours.out_proj.bias)


def _copy_sublayers(ours, theirs, residuals):
    for name in ("weight", "bias"):
        getattr(theirs.linear1, name).copy_(getattr(ours.feed_forward.linear1, name))
        getattr(theirs.linear2, name).copy_(getattr(ours.feed_forward.linear2, name))
        for i, residual in enumerate(residuals, start=1):
            getattr(getattr(theirs, f"norm{i}"), name).copy_(getattr(residual.norm, name))
