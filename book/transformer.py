# Generated from chapters/07_transformer.ipynb by tools/export.py: edit the notebook, not this file.
"""The full encoder-decoder Transformer (chapter 7)."""
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from book.attention import causal_mask, padding_mask
from book.multi_head import MultiHeadAttention
from book.residual import EncoderLayer, FeedForward, Residual
from book.self_attention import sinusoidal_positional_encoding


@dataclass
class TransformerConfig:
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

    def __post_init__(self):
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "num_heads", "d_ff", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise ValueError(f"num_layers must be an integer >= 1, got {self.num_layers!r}")
        if (self.d_k is None or self.d_v is None) and self.d_model % self.num_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                f"pass d_k and d_v explicitly or choose sizes that divide"
            )
        if self.d_model % 2:
            raise ValueError(f"d_model must be even for the sinusoidal encoding, got {self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"share_embeddings needs equal vocabularies, got src_vocab_size={self.src_vocab_size} "
                f"and tgt_vocab_size={self.tgt_vocab_size}"
            )
        if not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(
                f"pad_id={self.pad_id} must be a token id of both vocabularies "
                f"(sizes {self.src_vocab_size} and {self.tgt_vocab_size})"
            )


class Embedding(nn.Module):
    """Token ids (B, T) -> vectors (B, T, D), scaled by sqrt(D) as in the paper."""

    def __init__(self, vocab_size, d_model):
        super().__init__()
        self.vocab_size, self.d_model = vocab_size, d_model
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        nn.init.normal_(self.weight)

    def forward(self, tokens):
        return self.weight[tokens] * math.sqrt(self.d_model)


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal encoding (a buffer, not a parameter), then dropout. (B, T, D) -> (B, T, D)."""

    def __init__(self, d_model, max_len, dropout=0.0):
        super().__init__()
        self.register_buffer("pe", sinusoidal_positional_encoding(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(x + self.pe[: x.size(1)])


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder output, feed-forward.

    x: (B, T, D); memory: (B, S, D); tgt_mask broadcastable to (B, T, T),
    memory_mask to (B, T, S). Returns (B, T, D).
    """

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0, d_k=None, d_v=None):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, d_k, d_v, dropout)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, d_k, d_v, dropout)
        self.feed_forward = FeedForward(d_model, d_ff, dropout)
        self.self_residual = Residual(d_model, dropout)
        self.cross_residual = Residual(d_model, dropout)
        self.ff_residual = Residual(d_model, dropout)

    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        x = self.self_residual(x, lambda h: self.self_attn(h, h, h, tgt_mask))
        x = self.cross_residual(x, lambda h: self.cross_attn(h, memory, memory, memory_mask))
        return self.ff_residual(x, self.feed_forward)


class Transformer(nn.Module):
    """The encoder-decoder of "Attention Is All You Need", post-norm.

    forward(src (B, S), tgt (B, T)) -> logits (B, T, tgt_vocab_size).
    """

    def __init__(self, config):
        super().__init__()
        c = self.config = config
        self.src_embed = Embedding(c.src_vocab_size, c.d_model)
        self.tgt_embed = self.src_embed if c.share_embeddings else Embedding(c.tgt_vocab_size, c.d_model)
        self.positions = PositionalEncoding(c.d_model, c.max_len, c.dropout)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(c.d_model, c.num_heads, c.d_ff, c.dropout, c.d_k, c.d_v) for _ in range(c.num_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(c.d_model, c.num_heads, c.d_ff, c.dropout, c.d_k, c.d_v) for _ in range(c.num_layers)
        )
        self.generator = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        if c.share_embeddings:
            self.generator.weight = self.src_embed.weight
        self.reset_parameters()

    def reset_parameters(self):
        """Xavier-uniform for every weight matrix, as the paper's reference code does."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _check_tokens(self, tokens, vocab_size, name):
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"{name} must be a 2-D (batch, length) tensor of token ids, got {shape}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
        if tokens.size(1) < 1 or tokens.size(1) > self.config.max_len:
            raise ValueError(f"{name} length {tokens.size(1)} is outside [1, max_len={self.config.max_len}]")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
            raise ValueError(
                f"{name} token ids must be in [0, {vocab_size}), got min {tokens.min().item()} "
                f"and max {tokens.max().item()}"
            )

    def encode(self, src, src_mask=None):
        """src: (B, S) -> memory (B, S, D). src_mask defaults to the padding mask (B, 1, S)."""
        self._check_tokens(src, self.config.src_vocab_size, "src")
        if src_mask is None:
            src_mask = padding_mask(src, self.config.pad_id)
        x = self.positions(self.src_embed(src))
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return x

    def decode(self, tgt, memory, src_mask=None, tgt_mask=None):
        """tgt: (B, T), memory: (B, S, D) -> logits (B, T, tgt_vocab_size).

        tgt_mask defaults to padding & causal (B, T, T); src_mask (B, 1, S) hides source padding.
        """
        self._check_tokens(tgt, self.config.tgt_vocab_size, "tgt")
        if tgt_mask is None:
            tgt_mask = padding_mask(tgt, self.config.pad_id) & causal_mask(tgt.size(1), tgt.device)
        x = self.positions(self.tgt_embed(tgt))
        for layer in self.decoder_layers:
            x = layer(x, memory, tgt_mask, src_mask)
        return self.generator(x)

    def forward(self, src, tgt):
        """src: (B, S), tgt: (B, T) token ids -> logits (B, T, tgt_vocab_size)."""
        self._check_tokens(src, self.config.src_vocab_size, "src")
        src_mask = padding_mask(src, self.config.pad_id)
        memory = self.encode(src, src_mask)
        return self.decode(tgt, memory, src_mask)
