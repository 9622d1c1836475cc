# Generated from chapters/02_attention.ipynb by tools/export.py: edit the notebook, not this file.
"""Scaled dot-product attention, softmax and masks (chapter 2).

Masks are boolean and ``True`` means "may attend", the convention of
``torch.nn.functional.scaled_dot_product_attention``.
"""
import math
import operator

import torch


def softmax(x, dim=-1):
    """Numerically stable softmax along ``dim``; equals ``torch.softmax``.

    x: a floating-point tensor of any shape. Returns a tensor of the same shape
    and dtype whose entries along ``dim`` are >= 0 and sum to 1. A slice that is
    entirely ``-inf`` (a query with no key it may attend to) becomes all zeros
    instead of NaN, and so does its gradient. Half-precision input (float16,
    bfloat16) is computed in float32 and rounded once, at the end.
    """
    if _nothing_to_normalise(x, dim):
        return x.clone()
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # half precision: compute in float32, round once at the end
    shift = x.amax(dim=dim, keepdim=True).detach()
    exps = torch.exp(x - shift.clamp(min=torch.finfo(x.dtype).min))
    return (exps / exps.sum(dim=dim, keepdim=True).clamp(min=1.0)).to(dtype)


def _nothing_to_normalise(x, dim):
    """Raise ValueError unless ``x`` is a floating-point tensor with an axis ``dim``; True if that axis is empty."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        kind = x.dtype if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"softmax expects a floating-point tensor, got {kind}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -max(x.dim(), 1) <= dim < max(x.dim(), 1):
        raise ValueError(f"softmax: dim={dim!r} is not an axis of a tensor of shape {_shape(x)}")
    return x.dim() > 0 and x.size(dim) == 0


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
    _check_attention_inputs(query, key, value, mask)
    scores = (query / math.sqrt(query.size(-1))) @ key.transpose(-2, -1)  # Q K^T / sqrt(d_k)
    if mask is not None:
        scores = scores + torch.where(mask, 0.0, float("-inf")).to(scores.dtype)
    weights = softmax(scores, dim=-1)
    mixing = weights if dropout is None else dropout(weights)
    return mixing @ value, weights


def _shape(tensor):
    return tuple(tensor.shape)


def _broadcast(*shapes):
    """The shape that ``shapes`` broadcast to, by NumPy's rules, or None if they do not."""
    width = max(map(len, shapes))
    result = []
    for sizes in zip(*((1,) * (width - len(shape)) + tuple(shape) for shape in shapes)):
        larger = set(sizes) - {1}
        if len(larger) > 1:
            return None
        result.append(larger.pop() if larger else 1)
    return tuple(result)


def _check_attention_inputs(query, key, value, mask):
    """Raise ValueError, naming the shapes, unless query (..., T_q, d_k), key (..., T_k, d_k),
    value (..., T_k, d_v) and the bool mask (broadcastable to (..., T_q, T_k)) fit together."""
    if query.dim() < 2 or key.dim() < 2 or value.dim() < 2:
        raise ValueError(
            f"query, key and value need at least 2 dimensions (..., T, d), got shapes "
            f"{_shape(query)}, {_shape(key)}, {_shape(value)}"
        )
    if query.size(-1) != key.size(-1):
        raise ValueError(
            f"query width d_k={query.size(-1)} (shape {_shape(query)}) does not match "
            f"key width {key.size(-1)} (shape {_shape(key)})"
        )
    if query.size(-1) == 0:
        raise ValueError(f"query and key width d_k must be >= 1, got shape {_shape(query)}")
    if key.size(-2) != value.size(-2):
        raise ValueError(
            f"key length T_k={key.size(-2)} (shape {_shape(key)}) does not match "
            f"value length {value.size(-2)} (shape {_shape(value)})"
        )
    if not (query.dtype == key.dtype == value.dtype and query.is_floating_point()):
        raise ValueError(
            f"query, key and value must share a floating-point dtype, got {query.dtype}, {key.dtype}, {value.dtype}"
        )
    batch = _broadcast(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    if batch is None:
        raise ValueError(
            f"batch dimensions of query {_shape(query)}, key {_shape(key)} and "
            f"value {_shape(value)} do not broadcast"
        )
    if mask is not None:
        _check_mask(mask, (*batch, query.size(-2), key.size(-2)))


def _check_mask(mask, scores_shape):
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        dtype = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor (True = may attend), got {dtype}")
    if _broadcast(_shape(mask), scores_shape) != scores_shape:
        raise ValueError(
            f"mask of shape {_shape(mask)} does not broadcast to the attention scores "
            f"of shape {scores_shape} (..., T_q, T_k)"
        )


def padding_mask(tokens, pad_id):
    """Bool (B, 1, T), True where ``tokens`` (B, T) is not ``pad_id``."""
    _check_tokens(tokens)
    return (tokens != pad_id).unsqueeze(1)


def _check_tokens(tokens):
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (batch, length), got shape {_shape(tokens)}")


def causal_mask(size, device=None):
    """Bool (size, size), True on and below the diagonal: position i may attend to j <= i."""
    size = _mask_size(size)
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()


def _mask_size(size):
    """``size`` as an int >= 1, or ValueError naming it."""
    try:
        size = operator.index(size)
    except TypeError:
        raise ValueError(f"causal mask size must be an integer, got {size!r}") from None
    if size < 1:
        raise ValueError(f"causal mask size must be >= 1, got {size}")
    return size
