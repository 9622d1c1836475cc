"""The shared drawing helper: anchors, shapes from tensors, and refusals of bad input."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from book import diagram  # noqa: E402


def test_shape_text_reads_tensor_shapes_and_symbols():
    assert diagram.shape_text(torch.zeros(2, 3, 4).shape) == "(2, 3, 4)"
    assert diagram.shape_text(("B", "T", 64)) == "(B, T, 64)"


def test_box_anchors_are_the_midpoints_of_its_sides():
    fig, ax = diagram.canvas(6, 3)
    b = diagram.box(ax, 2, 1, "softmax", width=1.0, height=0.5)
    assert b.top == (2, 1.25) and b.bottom == (2, 0.75)
    assert b.left == (1.5, 1) and b.right == (2.5, 1)
    plt.close(fig)


def test_tensor_box_prints_the_shape_it_is_given():
    fig, ax = diagram.canvas(4, 2)
    diagram.tensor(ax, 2, 1, "Q", torch.zeros(3, 8).shape, role="query")
    texts = [t.get_text() for t in ax.texts]
    assert "Q" in texts and "(3, 8)" in texts
    plt.close(fig)


def test_matrix_draws_one_cell_per_entry_and_greys_masked_ones():
    fig, ax = diagram.canvas(4, 4)
    weights = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    mask = torch.tensor([[False, True], [False, False]])
    before = len(ax.patches)
    b = diagram.matrix(ax, 2, 2, weights, masked=mask, cell=0.5)
    assert len(ax.patches) - before == 4
    assert (b.width, b.height) == (1.0, 1.0)
    assert ax.patches[before + 1].get_hatch() == "///"
    assert "0.75" in [t.get_text() for t in ax.texts]
    plt.close(fig)


@pytest.mark.parametrize("call", [
    lambda ax: diagram.box(ax, 0, 0, "x", role="nonsense"),
    lambda ax: diagram.tensor(ax, 0, 0, "x", (1,), role="nonsense"),
    lambda ax: diagram.matrix(ax, 0, 0, [[1.0, 2.0], [3.0]]),
    lambda ax: diagram.matrix(ax, 0, 0, [[1.0]], masked=[[True, False]]),
    lambda ax: diagram.path(ax, [(0, 0)]),
])
def test_bad_input_is_refused_by_name(call):
    fig, ax = diagram.canvas(2, 2)
    with pytest.raises(ValueError):
        call(ax)
    plt.close(fig)


def test_canvas_refuses_an_empty_size():
    with pytest.raises(ValueError, match="0 x 2"):
        diagram.canvas(0, 2)
