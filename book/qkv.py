# Generated from chapters/04_query_key_value.ipynb by tools/export.py: edit the notebook, not this file.
"""One attention head with learned query, key and value projections (chapter 4)."""
import torch
from torch import nn

from book.attention import scaled_dot_product_attention


class AttentionHead(nn.Module):
    """A single head: project to queries, keys and values, then scaled dot-product attention.

    q_proj, k_proj: d_model -> d_k; v_proj: d_model -> d_v.
    """

    def __init__(self, d_model, d_k, d_v, bias=True):
        super().__init__()
        _check_sizes(d_model=d_model, d_k=d_k, d_v=d_v)
        self.d_model = d_model
        self.q_proj = nn.Linear(d_model, d_k, bias=bias)
        self.k_proj = nn.Linear(d_model, d_k, bias=bias)
        self.v_proj = nn.Linear(d_model, d_v, bias=bias)
        self.attention_weights = None

    def forward(self, query, key, value, mask=None):
        """query: (B, T_q, D); key, value: (B, T_k, D); mask: bool, broadcastable to (B, T_q, T_k).

        Returns (B, T_q, d_v). The weights (B, T_q, T_k) are kept, detached, in ``attention_weights``.
        """
        _check_inputs(self.d_model, query, key, value)
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        output, weights = scaled_dot_product_attention(q, k, v, mask)
        self.attention_weights = weights.detach()
        return output


def _check_sizes(**sizes):
    """Raise ValueError unless every size is a positive integer."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_inputs(d_model, query, key, value):
    """Raise ValueError unless query, key and value are tensors of shape (..., T, d_model)."""
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not torch.is_tensor(x) or x.dim() < 2 or x.size(-1) != d_model:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"{name} must have shape (..., T, d_model={d_model}), got {shape}")
