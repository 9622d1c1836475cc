# Generated from chapters/06_residual_connections.ipynb by tools/export.py: edit the notebook, not this file.
"""Layer norm, the feed-forward sublayer, residual wrappers and the encoder layer (chapter 6)."""
import torch
from torch import nn

from book.multi_head import MultiHeadAttention


class LayerNorm(nn.Module):
    """Normalize each position over its D features, then scale and shift.

    x: (..., D) -> (..., D). Equals ``torch.nn.LayerNorm(D, eps)``.
    """

    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        # The biased variance (divide by D), as torch.nn.LayerNorm uses.
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, applied at each position alone.

    x: (..., D) -> (..., D), through a hidden width d_ff.
    """

    def __init__(self, d_model, d_ff, dropout=0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.linear2(self.dropout(torch.relu(self.linear1(x))))


class Residual(nn.Module):
    """A sublayer with a residual path and layer norm.

    Post-norm (the paper): LayerNorm(x + Dropout(sublayer(x))).
    Pre-norm:              x + Dropout(sublayer(LayerNorm(x))).
    x: (B, T, D) -> (B, T, D).
    """

    def __init__(self, d_model, dropout=0.0, norm_first=False):
        super().__init__()
        self.norm = LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x, sublayer):
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Self-attention, then the feed-forward sublayer, each wrapped in ``Residual``.

    x: (B, S, D); mask: bool, broadcastable to (B, S, S). Returns (B, S, D).
    """

    def __init__(self, d_model, num_heads, d_ff, dropout=0.0, d_k=None, d_v=None, norm_first=False):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, d_k, d_v, dropout)
        self.feed_forward = FeedForward(d_model, d_ff, dropout)
        self.attn_residual = Residual(d_model, dropout, norm_first)
        self.ff_residual = Residual(d_model, dropout, norm_first)

    def forward(self, x, mask=None):
        x = self.attn_residual(x, lambda h: self.self_attn(h, h, h, mask))
        return self.ff_residual(x, self.feed_forward)
