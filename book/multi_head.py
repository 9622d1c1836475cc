# Generated from chapters/05_multi_head_attention.ipynb by tools/export.py: edit the notebook, not this file.
"""Multi-head attention: h attention heads computed in parallel by reshaping (chapter 5)."""
import torch
from torch import nn

from book.attention import _broadcast, scaled_dot_product_attention


def split_heads(x, num_heads):
    """Give each head its slice of the features: (B, T, h*d) -> (B, h, T, d).

    Head i receives features [i*d, (i+1)*d) of every position.
    """
    batch, length, features = _check_split(x, num_heads)
    return x.reshape(batch, length, num_heads, features // num_heads).transpose(1, 2)


def merge_heads(x):
    """Undo split_heads, concatenating the heads: (B, h, T, d) -> (B, T, h*d)."""
    batch, heads, length, width = _check_merge(x)
    return x.transpose(1, 2).reshape(batch, length, heads * width)


def _shape(x):
    return tuple(x.shape) if torch.is_tensor(x) else type(x).__name__


def _check_split(x, num_heads):
    """Raise ValueError unless x is (B, T, features) with features divisible by num_heads; return x.shape."""
    if not torch.is_tensor(x) or x.dim() != 3 or num_heads < 1 or x.size(-1) % num_heads:
        raise ValueError(
            f"split_heads expects (batch, length, features) with features divisible by "
            f"num_heads={num_heads}, got {_shape(x)}"
        )
    return x.shape


def _check_merge(x):
    """Raise ValueError unless x is (B, h, T, d); return x.shape."""
    if not torch.is_tensor(x) or x.dim() != 4:
        raise ValueError(f"merge_heads expects (batch, heads, length, width), got {_shape(x)}")
    return x.shape


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O, all heads computed at once.

    q_proj, k_proj: D -> h*d_k;  v_proj: D -> h*d_v;  out_proj: h*d_v -> D.
    Rows [i*d_k, (i+1)*d_k) of q_proj and k_proj, and rows [i*d_v, (i+1)*d_v) of
    v_proj, belong to head i. d_k and d_v default to D // h, which keeps the cost
    of the layer independent of h. store_weights=False keeps no attention_weights.
    """

    def __init__(self, d_model, num_heads, d_k=None, d_v=None, dropout=0.0, bias=True, store_weights=True):
        super().__init__()
        d_k, d_v = _check_config(d_model, num_heads, d_k, d_v, dropout)  # d_k, d_v default to D // h
        self.d_model, self.num_heads, self.d_k, self.d_v = d_model, num_heads, d_k, d_v
        self.q_proj = nn.Linear(d_model, num_heads * d_k, bias=bias)
        self.k_proj = nn.Linear(d_model, num_heads * d_k, bias=bias)
        self.v_proj = nn.Linear(d_model, num_heads * d_v, bias=bias)
        self.out_proj = nn.Linear(num_heads * d_v, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.store_weights = store_weights
        self.attention_weights = None

    def forward(self, query, key, value, mask=None):
        """query: (B, T_q, D); key, value: (B, T_k, D) -> (B, T_q, D).

        mask: bool, broadcastable to (B, T_q, T_k), True = may attend, shared by all heads.
        Afterwards ``attention_weights`` holds every head's weights, (B, h, T_q, T_k), detached,
        or None if ``store_weights`` is False.
        """
        mask = _check_inputs(self, query, key, value, mask)  # and give the mask a head axis
        q = split_heads(self.q_proj(query), self.num_heads)  # (B, h, T_q, d_k)
        k = split_heads(self.k_proj(key), self.num_heads)  # (B, h, T_k, d_k)
        v = split_heads(self.v_proj(value), self.num_heads)  # (B, h, T_k, d_v)
        heads, weights = scaled_dot_product_attention(q, k, v, mask, dropout=self.dropout)
        self.attention_weights = weights.detach() if self.store_weights else None
        return self.out_proj(merge_heads(heads))


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_config(d_model, num_heads, d_k, d_v, dropout):
    """Raise ValueError for a bad configuration; return (d_k, d_v), defaulting to d_model // num_heads."""
    _check_positive_int("d_model", d_model)
    _check_positive_int("num_heads", num_heads)
    if (d_k is None or d_v is None) and d_model % num_heads:
        raise ValueError(
            f"d_model={d_model} is not divisible by num_heads={num_heads}; d_k and d_v default to "
            f"d_model // num_heads, so pass both explicitly or choose num_heads dividing d_model"
        )
    d_k = d_model // num_heads if d_k is None else d_k
    d_v = d_model // num_heads if d_v is None else d_v
    _check_positive_int("d_k", d_k)
    _check_positive_int("d_v", d_v)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    return d_k, d_v


def _check_inputs(mha, query, key, value, mask):
    """Raise ValueError for bad inputs; return the mask as (B or 1, 1, T_q or 1, T_k or 1), or None."""
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not torch.is_tensor(x) or x.dim() != 3 or x.size(-1) != mha.d_model:
            raise ValueError(f"{name} must have shape (batch, length, d_model={mha.d_model}), got {_shape(x)}")
    if not query.size(0) == key.size(0) == value.size(0) or key.size(1) != value.size(1):
        raise ValueError(
            f"query {_shape(query)}, key {_shape(key)} and value {_shape(value)} must share the "
            f"batch size, and key and value the length"
        )
    if mask is None:
        return None
    expected = (query.size(0), query.size(1), key.size(1))
    if not torch.is_tensor(mask) or mask.dtype != torch.bool:
        kind = mask.dtype if torch.is_tensor(mask) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor (True = may attend), got {kind}")
    if mask.dim() > 3 or _broadcast(tuple(mask.shape), expected) != expected:
        raise ValueError(f"mask of shape {_shape(mask)} does not broadcast to (batch, T_q, T_k) = {expected}")
    # Pad the mask to three axes, then add the head axis: one mask serves every head.
    return mask.reshape((1,) * (3 - mask.dim()) + tuple(mask.shape)).unsqueeze(1)
