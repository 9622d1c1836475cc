"""Unit tests of book.rnn: the recurrent network of chapter 1 against torch.nn.RNN."""
import math

import pytest
import torch
from torch import nn

from book.rnn import RNN, RNNCell


def copy_from_torch(ours, reference):
    """Copy torch.nn.RNN's layer-0 weights into our RNN (names without "_l0")."""
    with torch.no_grad():
        for name, parameter in ours.cell.named_parameters():
            parameter.copy_(getattr(reference, f"{name}_l0"))


def pair(input_size, hidden_size, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    reference = nn.RNN(input_size, hidden_size, batch_first=True).to(dtype)
    ours = RNN(input_size, hidden_size).to(dtype)
    copy_from_torch(ours, reference)
    return ours, reference


SHAPES = [  # (B, T, I, H)
    (1, 1, 1, 1),
    (3, 5, 4, 6),
    (2, 17, 8, 32),
    (4, 3, 10, 2),
]


@pytest.mark.parametrize("batch, length, input_size, hidden_size", SHAPES)
@pytest.mark.parametrize("with_h0", [False, True])
def test_matches_torch_rnn(batch, length, input_size, hidden_size, with_h0):
    ours, reference = pair(input_size, hidden_size)
    x = torch.randn(batch, length, input_size)
    h0 = torch.randn(batch, hidden_size) if with_h0 else None
    outputs, h_T = ours(x, h0)
    ref_outputs, ref_h_T = reference(x, None if h0 is None else h0.unsqueeze(0))
    assert outputs.shape == (batch, length, hidden_size)
    assert h_T.shape == (batch, hidden_size)
    torch.testing.assert_close(outputs, ref_outputs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h_T, ref_h_T[0], atol=1e-6, rtol=1e-5)
    assert torch.equal(outputs[:, -1], h_T)


@pytest.mark.parametrize("with_h0", [False, True])
def test_cell_matches_torch_rnn_cell(with_h0):
    torch.manual_seed(0)
    reference = nn.RNNCell(5, 7)
    ours = RNNCell(5, 7)
    with torch.no_grad():
        for name, parameter in ours.named_parameters():
            parameter.copy_(getattr(reference, name))
    x = torch.randn(3, 5)
    h = torch.randn(3, 7) if with_h0 else None
    torch.testing.assert_close(ours(x, h), reference(x, h), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("with_h0", [False, True])
def test_gradients_match_torch_rnn(with_h0):
    ours, reference = pair(4, 6, dtype=torch.float64)
    x = torch.randn(3, 9, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(3, 6, dtype=torch.float64, requires_grad=True) if with_h0 else None

    def loss(outputs, h_T):
        # Weight every position and the last state differently so no gradient is trivial.
        return (outputs * torch.linspace(-1, 1, outputs.size(1), dtype=outputs.dtype)[:, None]).sum() + h_T.square().sum()

    loss(*ours(x, h0)).backward()
    ours_grads = [x.grad.clone()] + ([h0.grad.clone()] if with_h0 else [])
    ours_grads += [p.grad for p in ours.cell.parameters()]
    x.grad = None
    if with_h0:
        h0.grad = None
    loss(*reference(x, None if h0 is None else h0.unsqueeze(0))).backward()
    ref_grads = [x.grad] + ([h0.grad] if with_h0 else [])
    ref_grads += [getattr(reference, f"{name}_l0").grad for name, _ in ours.cell.named_parameters()]
    assert len(ours_grads) == len(ref_grads)
    for got, expected in zip(ours_grads, ref_grads):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


def test_gradcheck():
    torch.manual_seed(0)
    rnn = RNN(2, 3).double()
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h0: rnn(x, h0), (x, h0))


def test_parameter_layout_matches_torch():
    ours, reference = RNN(3, 5), nn.RNN(3, 5, batch_first=True)
    shapes = {name: tuple(p.shape) for name, p in ours.cell.named_parameters()}
    assert shapes == {"weight_ih": (5, 3), "weight_hh": (5, 5), "bias_ih": (5,), "bias_hh": (5,)}
    for name, shape in shapes.items():
        assert tuple(getattr(reference, f"{name}_l0").shape) == shape
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    assert (ours.input_size, ours.hidden_size) == (3, 5)


def test_initialisation_within_pytorch_bound():
    torch.manual_seed(0)
    rnn = RNN(10, 16)
    bound = 1 / math.sqrt(16)
    for parameter in rnn.parameters():
        assert parameter.abs().max() <= bound


def test_no_h0_means_zeros():
    torch.manual_seed(0)
    rnn = RNN(3, 4)
    x = torch.randn(2, 5, 3)
    outputs, h_T = rnn(x)
    outputs_zero, h_T_zero = rnn(x, torch.zeros(2, 4))
    assert torch.equal(outputs, outputs_zero) and torch.equal(h_T, h_T_zero)


def test_keeps_dtype():
    rnn = RNN(3, 4).double()
    outputs, h_T = rnn(torch.randn(2, 5, 3, dtype=torch.float64))
    assert outputs.dtype == h_T.dtype == torch.float64


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((7, 3), "(7, 3)"),          # no batch axis
        ((2, 7, 4), "(2, 7, 4)"),    # wrong width
        ((2, 7, 3, 1), "(2, 7, 3, 1)"),
        ((2, 0, 3), "(2, 0, 3)"),    # empty sequence
    ],
)
def test_bad_input_shape_raises(shape, expected):
    rnn = RNN(3, 5)
    with pytest.raises(ValueError) as info:
        rnn(torch.randn(shape))
    assert expected in str(info.value)


def test_bad_input_width_names_expected_width():
    with pytest.raises(ValueError, match=r"I=3.*\(2, 7, 4\)"):
        RNN(3, 5)(torch.randn(2, 7, 4))


@pytest.mark.parametrize("h0_shape", [(1, 2, 5), (2, 4), (3, 5), (5,)])
def test_bad_h0_shape_raises(h0_shape):
    with pytest.raises(ValueError) as info:
        RNN(3, 5)(torch.randn(2, 7, 3), torch.randn(h0_shape))
    message = str(info.value)
    assert str(tuple(h0_shape)) in message and "(2, 5)" in message


def test_h0_with_layer_axis_gets_a_hint():
    with pytest.raises(ValueError, match=r"squeeze\(0\)"):
        RNN(3, 5)(torch.randn(2, 7, 3), torch.randn(1, 2, 5))


def test_integer_input_raises():
    with pytest.raises(ValueError, match="int64"):
        RNN(3, 5)(torch.zeros(2, 7, 3, dtype=torch.long))


def test_h0_dtype_mismatch_raises():
    with pytest.raises(ValueError, match="float64"):
        RNN(3, 5)(torch.randn(2, 7, 3), torch.randn(2, 5, dtype=torch.float64))


def test_non_tensor_input_raises():
    with pytest.raises(ValueError, match="list"):
        RNN(3, 5)([[1.0, 2.0, 3.0]])


@pytest.mark.parametrize("x_shape, h_shape, expected", [((2, 4), None, "(2, 4)"), ((2, 3), (2, 6), "(2, 6)")])
def test_cell_bad_input_raises(x_shape, h_shape, expected):
    cell = RNNCell(3, 5)
    h = None if h_shape is None else torch.randn(h_shape)
    with pytest.raises(ValueError) as info:
        cell(torch.randn(x_shape), h)
    assert expected in str(info.value)


@pytest.mark.parametrize("sizes", [(0, 4), (3, 0), (-1, 4), (3, 2.5), (True, 4), ("3", 4)])
def test_bad_sizes_raise(sizes):
    with pytest.raises(ValueError, match="must be a positive integer"):
        RNN(*sizes)


def test_cell_without_h_starts_from_zeros():
    torch.manual_seed(0)
    cell = RNNCell(3, 4)
    x = torch.randn(2, 3)
    assert torch.equal(cell(x), cell(x, torch.zeros(2, 4)))

