# Generated from chapters/05_multi_head_attention.ipynb by tools/export.py: edit the notebook, not this file.
"""Multi-head attention: h heads computed in parallel by reshaping (chapter 5)."""
from torch import nn

from book.attention import scaled_dot_product_attention


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O.

    q_proj, k_proj: D -> h*d_k; v_proj: D -> h*d_v; out_proj: h*d_v -> D.
    d_k and d_v default to D // h.
    """

    def __init__(self, d_model, num_heads, d_k=None, d_v=None, dropout=0.0, bias=True):
        super().__init__()
        if not isinstance(d_model, int) or not isinstance(num_heads, int) or d_model < 1 or num_heads < 1:
            raise ValueError(f"d_model and num_heads must be positive integers, got {d_model!r} and {num_heads!r}")
        if (d_k is None or d_v is None) and d_model % num_heads:
            raise ValueError(
                f"d_model={d_model} is not divisible by num_heads={num_heads}; "
                f"pass d_k and d_v explicitly or choose sizes that divide"
            )
        d_k = d_model // num_heads if d_k is None else d_k
        d_v = d_model // num_heads if d_v is None else d_v
        if d_k < 1 or d_v < 1:
            raise ValueError(f"d_k and d_v must be >= 1, got d_k={d_k}, d_v={d_v}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model, self.num_heads, self.d_k, self.d_v = d_model, num_heads, d_k, d_v
        self.q_proj = nn.Linear(d_model, num_heads * d_k, bias=bias)
        self.k_proj = nn.Linear(d_model, num_heads * d_k, bias=bias)
        self.v_proj = nn.Linear(d_model, num_heads * d_v, bias=bias)
        self.out_proj = nn.Linear(num_heads * d_v, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.attention_weights = None

    def _split_heads(self, x, width):
        # (B, T, h*width) -> (B, h, T, width)
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, width).transpose(1, 2)

    def forward(self, query, key, value, mask=None):
        """query: (B, T_q, D); key, value: (B, T_k, D).

        mask: bool, broadcastable to (B, T_q, T_k), True = may attend; the head axis is
        inserted here. Returns (B, T_q, D); ``attention_weights`` holds (B, h, T_q, T_k).
        """
        for name, x in (("query", query), ("key", key), ("value", value)):
            if x.dim() != 3 or x.size(-1) != self.d_model:
                raise ValueError(
                    f"{name} must be (batch, length, d_model={self.d_model}), got shape {tuple(x.shape)}"
                )
        if key.shape[:2] != value.shape[:2] or query.size(0) != key.size(0):
            raise ValueError(
                f"query {tuple(query.shape)}, key {tuple(key.shape)} and value {tuple(value.shape)} "
                f"must share the batch size, and key and value the length"
            )
        if mask is not None:
            if mask.dim() not in (2, 3):
                raise ValueError(f"mask must be (T_q, T_k) or (B, T_q, T_k), got shape {tuple(mask.shape)}")
            if mask.dim() == 3:
                mask = mask.unsqueeze(1)  # the head axis: (B, 1, T_q, T_k)
        q = self._split_heads(self.q_proj(query), self.d_k)
        k = self._split_heads(self.k_proj(key), self.d_k)
        v = self._split_heads(self.v_proj(value), self.d_v)
        heads, weights = scaled_dot_product_attention(q, k, v, mask, dropout=self.dropout)
        self.attention_weights = weights.detach()
        batch, _, length, _ = heads.shape
        concat = heads.transpose(1, 2).reshape(batch, length, self.num_heads * self.d_v)
        return self.out_proj(concat)
