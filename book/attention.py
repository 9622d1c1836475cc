# Generated from chapters/02_attention.ipynb by tools/export.py: edit the notebook, not this file.
"""Scaled dot-product attention, softmax and masks (chapter 2)."""
import math

import torch


def softmax(x, dim=-1):
    """Numerically stable softmax along ``dim``; equals ``torch.softmax``.

    Subtracting the row maximum before ``exp`` keeps every exponent <= 0, so
    nothing overflows. A row that is entirely ``-inf`` (a query with no key it
    may attend to) becomes all zeros instead of NaN.

    x: any shape. Returns a tensor of the same shape.
    """
    row_max = x.amax(dim=dim, keepdim=True)
    # An all -inf row has max -inf, and -inf - (-inf) is NaN: shift by 0 instead.
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exps = torch.exp(x - row_max.detach())
    total = exps.sum(dim=dim, keepdim=True)
    # Clamping (not torch.where) keeps the gradient of an empty row at zero, not NaN.
    return exps / total.clamp_min(torch.finfo(exps.dtype).tiny)


def _check_mask(mask, scores_shape):
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = may attend), got dtype {mask.dtype}")
    try:
        broadcast = torch.broadcast_shapes(tuple(mask.shape), tuple(scores_shape))
    except RuntimeError:
        broadcast = None
    if broadcast != tuple(scores_shape):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the attention "
            f"scores of shape {tuple(scores_shape)} (..., T_q, T_k)"
        )


def scaled_dot_product_attention(query, key, value, mask=None, dropout=None):
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V.

    query: (..., T_q, d_k)
    key:   (..., T_k, d_k)
    value: (..., T_k, d_v)
    mask:  bool, broadcastable to (..., T_q, T_k); True = may attend.
    dropout: optional module applied to the weights before they mix the values
             (the returned weights are the ones before dropout).
    Returns (output, weights): output (..., T_q, d_v), weights (..., T_q, T_k).
    A query with no allowed key gets zero weights and a zero output.
    """
    if query.dim() < 2 or key.dim() < 2 or value.dim() < 2:
        raise ValueError(
            f"query, key and value need at least 2 dimensions (..., T, d), got shapes "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    if query.size(-1) != key.size(-1):
        raise ValueError(
            f"query width d_k={query.size(-1)} (shape {tuple(query.shape)}) does not match "
            f"key width {key.size(-1)} (shape {tuple(key.shape)})"
        )
    if key.size(-2) != value.size(-2):
        raise ValueError(
            f"key length T_k={key.size(-2)} (shape {tuple(key.shape)}) does not match "
            f"value length {value.size(-2)} (shape {tuple(value.shape)})"
        )
    try:
        batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"batch dimensions of query {tuple(query.shape)}, key {tuple(key.shape)} and "
            f"value {tuple(value.shape)} do not broadcast"
        ) from None
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))
    if mask is not None:
        _check_mask(mask, (*batch, query.size(-2), key.size(-2)))
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = softmax(scores, dim=-1)
    mixing = weights if dropout is None else dropout(weights)
    return mixing @ value, weights


def causal_mask(size, device=None):
    """Bool (size, size), True on and below the diagonal: position i may see j <= i."""
    if size < 1:
        raise ValueError(f"causal mask size must be >= 1, got {size}")
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()


def padding_mask(tokens, pad_id):
    """Bool (B, 1, T), True where ``tokens`` (B, T) is not ``pad_id``."""
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (batch, length), got shape {tuple(tokens.shape)}")
    return (tokens != pad_id).unsqueeze(1)
