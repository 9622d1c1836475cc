# Generated from chapters/03_self_attention.ipynb by tools/export.py: edit the notebook, not this file.
"""Self-attention without learned weights, and sinusoidal positions (chapter 3)."""
import math

import torch

from book.attention import scaled_dot_product_attention


def self_attention(x, mask=None):
    """Each position attends to every position of the same sequence, Q = K = V = x.

    x: (..., T, D); mask: bool, broadcastable to (..., T, T).
    Returns (output (..., T, D), weights (..., T, T)).
    """
    return scaled_dot_product_attention(x, x, x, mask)


def sinusoidal_positional_encoding(max_len, d_model):
    """The paper's fixed positional encoding, (max_len, d_model).

    PE[p, 2i] = sin(p / 10000^(2i/d_model)), PE[p, 2i+1] = cos(same angle).
    """
    if max_len < 1 or d_model < 2 or d_model % 2:
        raise ValueError(
            f"need max_len >= 1 and an even d_model >= 2, got max_len={max_len}, d_model={d_model}"
        )
    position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
    # 1 / 10000^(2i/d) computed in log space, in float64 so long tables stay exact.
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    angle = position * inv_freq
    pe = torch.empty(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe.to(torch.get_default_dtype())
