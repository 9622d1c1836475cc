# Generated from chapters/01_problems_solved.ipynb by tools/export.py: edit the notebook, not this file.
"""A recurrent neural network built from scratch (chapter 1).

The baseline the rest of the book replaces: an Elman RNN with a tanh, whose
parameters are laid out as in ``torch.nn.RNN`` so weights can be copied over.
"""
import math
import operator

import torch
from torch import nn


class RNNCell(nn.Module):
    """One step of a recurrent network: h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh).

    Parameters as in ``torch.nn.RNNCell`` and layer 0 of ``torch.nn.RNN``
    (I = input_size, H = hidden_size):
        weight_ih (H, I), weight_hh (H, H), bias_ih (H,), bias_hh (H,),
    initialised uniformly in [-1/sqrt(H), 1/sqrt(H)], as PyTorch does.

    forward(x, h=None): x (B, I), h (B, H) or None for zeros -> h' (B, H).
    """

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        H, I = self.hidden_size, self.input_size
        self.weight_ih = nn.Parameter(torch.empty(H, I))
        self.weight_hh = nn.Parameter(torch.empty(H, H))
        self.bias_ih = nn.Parameter(torch.empty(H))
        self.bias_hh = nn.Parameter(torch.empty(H))
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def extra_repr(self):
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}"

    def forward(self, x, h=None):
        """x: (B, I); h: (B, H) or None (zeros). Returns the next state (B, H)."""
        h = _check_step(x, h, self.input_size, self.hidden_size)
        return torch.tanh(
            x @ self.weight_ih.T + self.bias_ih + h @ self.weight_hh.T + self.bias_hh
        )


class RNN(nn.Module):
    """A one-layer recurrent network: the update of ``RNNCell`` at every time step.

    Equals ``torch.nn.RNN(input_size, hidden_size, batch_first=True)`` with the
    same weights. Its parameters are ``cell.weight_ih`` (H, I), ``cell.weight_hh``
    (H, H), ``cell.bias_ih`` (H,) and ``cell.bias_hh`` (H,): PyTorch's ``*_l0``.

    forward(x, h0=None): x (B, T, I), h0 (B, H) or None for zeros
        -> (outputs (B, T, H), the state after every step; h_T (B, H), the last).
    """

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.cell = RNNCell(input_size, hidden_size)

    @property
    def input_size(self):
        return self.cell.input_size

    @property
    def hidden_size(self):
        return self.cell.hidden_size

    def forward(self, x, h0=None):
        """x: (B, T, I); h0: (B, H) or None. Returns (outputs (B, T, H), h_T (B, H))."""
        h = _check_sequence(x, h0, self.input_size, self.hidden_size)
        cell = self.cell
        # The input half of the update does not depend on earlier steps: all at once.
        from_inputs = x @ cell.weight_ih.T + cell.bias_ih  # (B, T, H)
        outputs = []
        for t in range(x.size(1)):  # the recurrent half needs step t - 1: one at a time
            h = torch.tanh(from_inputs[:, t] + h @ cell.weight_hh.T + cell.bias_hh)
            outputs.append(h)
        return torch.stack(outputs, dim=1), h


def _shape(value):
    # A tensor's shape as a tuple, or the type of a value that is no tensor.
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return type(value).__name__


def _check_size(name, value):
    """A layer size must be a positive integer; return it as an ``int``."""
    try:
        size = operator.index(value)
    except TypeError:
        size = None
    if size is None or isinstance(value, bool) or size < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return size


def _check_input(x, dims, input_size, who):
    """``x`` must be a floating-point tensor with ``dims`` axes, the last of width I."""
    layout = "(B, I)" if dims == 2 else "(B, T, I)"
    if not isinstance(x, torch.Tensor) or x.dim() != dims or x.size(-1) != input_size:
        hint = ""
        if isinstance(x, torch.Tensor) and x.dim() == dims - 1:
            hint = " (add a batch axis with x.unsqueeze(0))"
        raise ValueError(
            f"{who} expects x of shape {layout} with I={input_size}, "
            f"got {_shape(x)}{hint}"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{who} expects a floating-point x, got dtype {x.dtype} "
            "(one-hot encode token ids first)"
        )


def _check_state(h, x, hidden_size, name):
    """The state ``h`` must be (B, H), with the batch size and dtype of ``x``."""
    expected = (x.size(0), hidden_size)
    if _shape(h) != expected:
        # torch.nn.RNN takes h0 as (num_layers, B, H); our one-layer RNN takes (B, H).
        hint = ""
        if _shape(h) == (1, *expected):
            hint = f" (drop the layer axis: {name}.squeeze(0))"
        raise ValueError(
            f"{name} must have shape (B, H) = {expected} for x of shape {_shape(x)}, "
            f"got {_shape(h)}{hint}"
        )
    if h.dtype != x.dtype:
        raise ValueError(f"{name} has dtype {h.dtype}, but x has dtype {x.dtype}")


def _check_step(x, h, input_size, hidden_size):
    """Check RNNCell's x (B, I) and h (B, H) or None; return h, zeros for None."""
    _check_input(x, 2, input_size, "RNNCell")
    if h is None:
        return x.new_zeros(x.size(0), hidden_size)
    _check_state(h, x, hidden_size, "h")
    return h


def _check_sequence(x, h0, input_size, hidden_size):
    """Check RNN's x (B, T, I), T >= 1, and h0 (B, H) or None; return h0, zeros for None."""
    _check_input(x, 3, input_size, "RNN")
    if x.size(1) < 1:
        raise ValueError(f"RNN needs a length T >= 1, got x of shape {_shape(x)}")
    if h0 is None:
        return x.new_zeros(x.size(0), hidden_size)
    _check_state(h0, x, hidden_size, "h0")
    return h0
