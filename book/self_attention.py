# Generated from chapters/03_self_attention.ipynb by tools/export.py: edit the notebook, not this file.
"""Self-attention without learned weights, and sinusoidal positions (chapter 3)."""
import torch

from book.attention import scaled_dot_product_attention


def self_attention(x, mask=None):
    """Each position attends to every position of the same sequence: Q = K = V = x.

    x: (..., T, D); mask: bool, broadcastable to (..., T, T), True = may attend.
    Returns (output (..., T, D), weights (..., T, T)).
    """
    _check_sequence(x)
    return scaled_dot_product_attention(x, x, x, mask)  # softmax(x x^T / sqrt(D)) x


def _check_sequence(x):
    if not torch.is_tensor(x) or x.dim() < 2:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (..., T, D), got {shape}")


def sinusoidal_positional_encoding(max_len, d_model):
    """The paper's fixed positional encoding, a (max_len, d_model) table.

    PE[p, 2i] = sin(p * w_i), PE[p, 2i + 1] = cos(p * w_i), w_i = 10000^(-2i / d_model).
    """
    _check_table_size(max_len, d_model)
    p = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)  # (max_len, 1)
    omega = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (d_model / 2,)
    pe = torch.empty(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(p * omega)
    pe[:, 1::2] = torch.cos(p * omega)
    return pe.to(torch.get_default_dtype())


def _check_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")


def _check_d_model(d_model):
    _check_int("d_model", d_model)
    if d_model < 2 or d_model % 2:
        raise ValueError(f"d_model must be even and >= 2 (sines and cosines come in pairs), got {d_model}")


def _check_table_size(max_len, d_model):
    _check_int("max_len", max_len)
    _check_d_model(d_model)
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")


def positional_shift_matrix(offset, d_model):
    """The (d_model, d_model) matrix M_k with PE(p + k) = PE(p) @ M_k for every position p.

    Block diagonal: one 2x2 rotation by the angle k * w_i per sine/cosine pair. offset k may be negative.
    """
    _check_shift(offset, d_model)
    omega = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    cos, sin = torch.cos(offset * omega), torch.sin(offset * omega)
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    m[0::2, 0::2] = torch.diag(cos)
    m[0::2, 1::2] = torch.diag(-sin)
    m[1::2, 0::2] = torch.diag(sin)
    m[1::2, 1::2] = torch.diag(cos)
    return m.to(torch.get_default_dtype())


def _check_shift(offset, d_model):
    _check_int("offset", offset)
    _check_d_model(d_model)
