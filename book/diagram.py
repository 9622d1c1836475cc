"""One drawing style for the book's diagrams of mechanisms (written by hand, not exported).

Every chapter draws at least one schematic of what it builds: boxes for tensors with their
shapes, boxes for operations, arrows for data, a blue path for the residual (identity) stream
and red for gradients. All of them use these few helpers, so colours, fonts, arrow heads and
the way a tensor shows its shape are the same on every page. Shapes are passed in from the
tensors the chapter's code makes (``tensor(ax, x, y, "Q", q.shape)``), never typed by hand, so a
diagram cannot drift from the code.

Coordinates are in "diagram units": ``canvas(width, height)`` gives an axes where (0, 0) is the
bottom left and one unit is about 0.55 inches, so a box of width 1.6 reads comfortably.

Example::

    fig, ax = canvas(6, 2)
    x = tensor(ax, 1, 1, "x", (3, 4), role="input")
    y = box(ax, 4, 1, "softmax", role="op")
    arrow(ax, x.right, y.left, "scores")
"""
from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch, Rectangle

# Fill colours by role, the same in every chapter.
COLORS = {
    "input": "#eeeeee",      # tokens and other raw inputs
    "embedding": "#d9ead3",  # embeddings, positional encodings
    "query": "#fce5cd",      # queries (and anything playing the query's role)
    "key": "#d0e0e3",        # keys
    "value": "#d9d2e9",      # values
    "weights": "#fff2cc",    # scores and attention weights
    "op": "#ffffff",         # an operation: matmul, softmax, add & norm
    "layer": "#cfe2f3",      # a learned sublayer (attention, feed-forward, RNN cell)
    "param": "#f3f3f3",      # learned matrices such as W^Q
    "output": "#f4cccc",     # logits, outputs, losses
    "state": "#e6f2e6",      # hidden states, caches, memory
}
EDGE = "0.3"
ARROW = "0.25"
RESIDUAL = "tab:blue"    # the identity path of a residual connection
GRADIENT = "tab:red"     # gradients flowing backwards
MASKED = "0.75"          # masked (forbidden) entries
FONT = 9                 # text inside boxes
SMALL = 7.5              # shapes, labels on arrows, notes
ATTENTION_CMAP = "viridis"   # attention weights, 0..1, as in every plot of the book
SIGNED_CMAP = "RdBu_r"       # signed values, symmetric range
UNIT = 0.55                  # inches per diagram unit


@dataclass(frozen=True)
class Box:
    """A drawn box: its centre and size, with the midpoints of its four sides as anchors."""

    x: float
    y: float
    width: float
    height: float

    @property
    def top(self):
        return (self.x, self.y + self.height / 2)

    @property
    def bottom(self):
        return (self.x, self.y - self.height / 2)

    @property
    def left(self):
        return (self.x - self.width / 2, self.y)

    @property
    def right(self):
        return (self.x + self.width / 2, self.y)


def shape_text(shape):
    """``(2, 3, 4)`` for a torch.Size, a tuple of ints or of symbols such as ``("B", "T", "D")``."""
    return "(" + ", ".join(str(int(s)) if hasattr(s, "__index__") else str(s) for s in shape) + ")"


def canvas(width, height, title=None):
    """A blank figure of ``width`` x ``height`` diagram units; returns ``(fig, ax)``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"canvas needs a positive width and height, got {width} x {height}")
    fig, ax = plt.subplots(figsize=(width * UNIT, height * UNIT))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=FONT + 1.5)
    return fig, ax


def box(ax, x, y, text, role="op", width=1.6, height=0.55, size=FONT, dashed=False, color=None):
    """An operation or component centred at (x, y); returns its ``Box``."""
    if role not in COLORS:
        raise ValueError(f"unknown role {role!r}; expected one of {sorted(COLORS)}")
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=color or COLORS[role], ec=EDGE, lw=1.0, ls="--" if dashed else "-"))
    ax.text(x, y, text, ha="center", va="center", fontsize=size)
    return Box(x, y, width, height)


def tensor(ax, x, y, name, shape, role="input", width=1.6, height=0.7):
    """A tensor: its name above its shape, in a square-cornered box; returns its ``Box``."""
    if role not in COLORS:
        raise ValueError(f"unknown role {role!r}; expected one of {sorted(COLORS)}")
    ax.add_patch(Rectangle((x - width / 2, y - height / 2), width, height,
                           fc=COLORS[role], ec=EDGE, lw=1.0))
    ax.text(x, y + height * 0.14, name, ha="center", va="center", fontsize=FONT, weight="bold")
    ax.text(x, y - height * 0.22, shape_text(shape), ha="center", va="center", fontsize=SMALL,
            family="monospace", color="0.2")
    return Box(x, y, width, height)


def arrow(ax, start, end, label=None, color=ARROW, style="-|>", lw=1.2, ls="-", rad=0.0,
          label_side="right", size=SMALL):
    """An arrow from ``start`` to ``end`` (points or box anchors), with an optional label beside it.

    ``rad`` bends it (0 is straight); ``style="<|-|>"`` points both ways, ``"-"`` not at all.
    """
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle=style, color=color, lw=lw, ls=ls, shrinkA=0, shrinkB=0,
                                connectionstyle=f"arc3,rad={rad}", mutation_scale=11))
    if label:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        horizontal = abs(end[0] - start[0]) > abs(end[1] - start[1])
        if horizontal:
            ax.text(mx, my + 0.12, label, ha="center", va="bottom", fontsize=size, color=color)
        else:
            dx = 0.1 if label_side == "right" else -0.1
            ax.text(mx + dx, my, label, ha="left" if label_side == "right" else "right",
                    va="center", fontsize=size, color=color)


def path(ax, points, color=RESIDUAL, lw=1.6, ls="-", end_arrow=True, label=None, size=SMALL):
    """A polyline through ``points`` (the residual stream, a gradient's route), arrow at the end."""
    points = list(points)
    if len(points) < 2:
        raise ValueError(f"a path needs at least 2 points, got {len(points)}")
    xs, ys = zip(*points)
    ax.plot(xs[:-1] if end_arrow else xs, ys[:-1] if end_arrow else ys, color=color, lw=lw, ls=ls,
            solid_capstyle="butt")
    if end_arrow:
        arrow(ax, points[-2], points[-1], color=color, lw=lw, ls=ls)
    if label:
        ax.text(xs[0], ys[0], label, fontsize=size, color=color, ha="center", va="top")


def matrix(ax, x, y, values, cell=0.32, cmap=ATTENTION_CMAP, vmin=0.0, vmax=1.0, masked=None,
           fmt="{:.2f}", row_labels=None, col_labels=None, size=6.5):
    """A small 2-D tensor drawn as a grid of coloured cells centred at (x, y); returns its ``Box``.

    ``values``: (R, C) numbers (a tensor or nested lists). ``masked``: (R, C) booleans, True where
    an entry is forbidden; those cells are grey and crossed out instead of coloured. ``fmt=None``
    leaves the numbers out.
    """
    rows = [[float(v) for v in row] for row in (values.tolist() if hasattr(values, "tolist") else values)]
    if not rows or any(len(r) != len(rows[0]) for r in rows) or not rows[0]:
        raise ValueError("matrix needs a non-empty 2-D table of numbers")
    mask = None if masked is None else (masked.tolist() if hasattr(masked, "tolist") else masked)
    n_rows, n_cols = len(rows), len(rows[0])
    if mask is not None and (len(mask) != n_rows or any(len(m) != n_cols for m in mask)):
        raise ValueError(f"masked must have the values' shape ({n_rows}, {n_cols})")
    colormap = plt.get_cmap(cmap)
    left, top = x - n_cols * cell / 2, y + n_rows * cell / 2
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            x0, y0 = left + j * cell, top - (i + 1) * cell
            if mask is not None and mask[i][j]:
                ax.add_patch(Rectangle((x0, y0), cell, cell, fc=MASKED, ec="white", lw=0.8, hatch="///"))
                continue
            level = min(max((v - vmin) / (vmax - vmin), 0.0), 1.0) if vmax > vmin else 0.5
            ax.add_patch(Rectangle((x0, y0), cell, cell, fc=colormap(level), ec="white", lw=0.8))
            if fmt:
                ink = "white" if (cmap == ATTENTION_CMAP and level < 0.55) else "black"
                ax.text(x0 + cell / 2, y0 + cell / 2, fmt.format(v), ha="center", va="center",
                        fontsize=size, color=ink)
    for i, label in enumerate(row_labels or []):
        ax.text(left - 0.08, top - (i + 0.5) * cell, label, ha="right", va="center", fontsize=SMALL)
    for j, label in enumerate(col_labels or []):
        ax.text(left + (j + 0.5) * cell, top + 0.08, label, ha="center", va="bottom", fontsize=SMALL)
    return Box(x, y, n_cols * cell, n_rows * cell)


def frame(ax, x0, y0, x1, y1, title=None, color="0.55"):
    """A dashed rectangle grouping what lies inside it (a layer, a process), title at top left."""
    ax.add_patch(FancyBboxPatch((x0, y0), x1 - x0, y1 - y0, boxstyle="round,pad=0.02",
                                fc="none", ec=color, ls="--", lw=1.0))
    if title:
        ax.text(x0 + 0.1, y1 - 0.08, title, ha="left", va="top", fontsize=SMALL + 0.5,
                style="italic", color="0.3")


def note(ax, x, y, text, color="0.3", size=SMALL, ha="center", va="center", **kwargs):
    """A short annotation in the diagram's small font."""
    ax.text(x, y, text, ha=ha, va=va, fontsize=size, color=color, **kwargs)
