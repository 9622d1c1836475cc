# Generated from chapters/06_residual_connections.ipynb by tools/export.py: edit the notebook, not this file.
"""Residual connections, layer normalization, the feed-forward sublayer and the encoder layer (chapter 6)."""
import torch
from torch import nn
from torch.nn import functional as F

from book.multi_head import MultiHeadAttention


def layer_norm(x, weight, bias, eps=1e-5):
    """Layer normalization written out from its equation. x: (..., D); weight, bias: (D,) -> (..., D)."""
    _check_layer_norm_inputs(x, weight, bias)
    _check_eps(eps)
    mean = x.mean(dim=-1, keepdim=True)
    variance = (x - mean).square().mean(dim=-1, keepdim=True)  # divides by D, not D - 1
    return weight * (x - mean) / torch.sqrt(variance + eps) + bias


def _shape(x):
    return tuple(x.shape) if torch.is_tensor(x) else type(x).__name__


def _check_layer_norm_inputs(x, weight, bias):
    if not (torch.is_tensor(x) and x.dim() >= 1 and torch.is_tensor(weight) and torch.is_tensor(bias)
            and weight.shape == bias.shape == x.shape[-1:]):
        raise ValueError(f"layer_norm expects x (..., D) and a weight and bias of shape (D,), got x "
                         f"{_shape(x)}, weight {_shape(weight)} and bias {_shape(bias)}")


def _check_features(name, x, d_model):
    if not torch.is_tensor(x) or x.dim() < 1 or x.size(-1) != d_model:
        raise ValueError(f"{name} expects shape (..., d_model={d_model}), got {_shape(x)}")


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")


def _check_dropout(dropout):
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")


class LayerNorm(nn.Module):
    """Normalize each position over its D features, then scale by ``weight`` and shift by ``bias``.

    x: (..., D) -> (..., D). The arithmetic of ``layer_norm``; equals ``torch.nn.LayerNorm(D, eps)``.
    """

    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        _check_positive_int("d_model", d_model)
        _check_eps(eps)
        self.d_model, self.eps = d_model, float(eps)
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x):
        _check_features("LayerNorm", x, self.d_model)
        return F.layer_norm(x, (self.d_model,), self.weight, self.bias, self.eps)


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, applied to every position on its own.

    x: (..., D) -> (..., D) through a hidden width d_ff; linear1: D -> d_ff, linear2: d_ff -> D.
    """

    def __init__(self, d_model, d_ff, dropout=0.0):
        super().__init__()
        _check_positive_int("d_model", d_model)
        _check_positive_int("d_ff", d_ff)
        _check_dropout(dropout)
        self.d_model = d_model
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        _check_features("FeedForward", x, self.d_model)
        return self.linear2(self.dropout(torch.relu(self.linear1(x))))


class Residual(nn.Module):
    """A sublayer with a residual connection and layer normalization.

    Post-norm, norm_first=False (the paper): LayerNorm(x + Dropout(sublayer(x)))
    Pre-norm,  norm_first=True:              x + Dropout(sublayer(LayerNorm(x)))
    x: (B, T, D); sublayer: a callable (B, T, D) -> (B, T, D). Returns (B, T, D).
    """

    def __init__(self, d_model, dropout=0.0, norm_first=False):
        super().__init__()
        _check_dropout(dropout)
        self.norm = LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = bool(norm_first)

    def forward(self, x, sublayer):
        if self.norm_first:
            return x + self.dropout(_same_shape(sublayer(self.norm(x)), x))
        return self.norm(x + self.dropout(_same_shape(sublayer(x), x)))


def _same_shape(out, x):
    """The sublayer's output, checked: it is added to x, so it must have x's shape."""
    if not torch.is_tensor(out) or out.shape != x.shape:
        raise ValueError(f"the sublayer must keep the input's shape {_shape(x)}, but it returned {_shape(out)}")
    return out


class EncoderLayer(nn.Module):
    """Self-attention, then the feed-forward sublayer, each wrapped in a ``Residual``.

    x: (B, S, D); mask: bool, broadcastable to (B, S, S), True = may attend, e.g. a
    padding mask (B, 1, S). Returns (B, S, D). norm_first=False is the paper's post-norm.
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
