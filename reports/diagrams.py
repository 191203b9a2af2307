"""Architecture diagrams drawn with matplotlib from the stage descriptions in
`reports.architecture`: boxes for processes and stores, numbered arrows for the path
of one message, dashed arrows for what happens off that path."""

from __future__ import annotations

import textwrap
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from reports.architecture import Architecture, Edge, Node
from reports.style import new_figure, save, stage_color

KIND_FILL = {
    "client": "#eeeeee",
    "server": "#d6e6f5",
    "gateway": "#d6e6f5",
    "worker": "#d9f0d3",
    "redis": "#f6d3d3",
    "kafka": "#fde3bd",
    "channel": "#e6dcf3",
}
X, Y = 3.2, 1.9  # data units per grid column and row
W, H = 1.9, 0.95  # box size in data units
_STACK = 0.12  # offset of the shadow boxes behind a node that is one of several


def _xy(node: Node) -> tuple[float, float]:
    return node.col * X, node.row * Y


def _box(ax: Axes, node: Node) -> FancyBboxPatch:
    x, y = _xy(node)
    fill = KIND_FILL.get(node.kind, "#ffffff")
    if node.many:
        for k in (2, 1):
            ax.add_patch(
                FancyBboxPatch(
                    (x - W / 2 + k * _STACK, y - H / 2 - k * _STACK),
                    W,
                    H,
                    boxstyle="round,pad=0,rounding_size=0.12",
                    facecolor=fill,
                    edgecolor="#666666",
                    linewidth=0.8,
                    zorder=1,
                )
            )
    patch = FancyBboxPatch(
        (x - W / 2, y - H / 2),
        W,
        H,
        boxstyle="round,pad=0,rounding_size=0.12",
        facecolor=fill,
        edgecolor="#333333",
        linewidth=1.1,
        zorder=2,
    )
    ax.add_patch(patch)
    dy = 0.14 if node.note else 0.0
    ax.text(x, y + dy, node.label, ha="center", va="center", fontsize=10, weight="bold", zorder=3)
    if node.note:
        ax.text(
            x,
            y - 0.2,
            textwrap.fill(node.note, 24),
            ha="center",
            va="center",
            fontsize=7.5,
            color="#333333",
            zorder=3,
        )
    return patch


def _arrow(ax: Axes, arch: Architecture, edge: Edge, boxes: dict[str, FancyBboxPatch]) -> None:
    (x1, y1), (x2, y2) = _xy(arch.node(edge.src)), _xy(arch.node(edge.dst))
    on_path = edge.step > 0
    ax.add_patch(
        FancyArrowPatch(
            (x1, y1),
            (x2, y2),
            patchA=boxes[edge.src],
            patchB=boxes[edge.dst],
            connectionstyle=f"arc3,rad={edge.bend}",
            arrowstyle="-|>",
            mutation_scale=14,
            linewidth=1.6 if on_path else 1.1,
            linestyle="-" if on_path else (0, (4, 3)),
            color="#222222" if on_path else "#777777",
            shrinkA=3,
            shrinkB=3,
            zorder=4,
        )
    )
    # A point of the arc3 curve (a quadratic Bézier whose control point is `bend`
    # chord lengths off the chord's middle).
    t = edge.at
    cx = (x1 + x2) / 2 + edge.bend * (y2 - y1)
    cy = (y1 + y2) / 2 - edge.bend * (x2 - x1)
    mx = (1 - t) ** 2 * x1 + 2 * t * (1 - t) * cx + t**2 * x2
    my = (1 - t) ** 2 * y1 + 2 * t * (1 - t) * cy + t**2 * y2
    text = f"{edge.step}  {edge.label}" if on_path else edge.label
    ax.text(
        mx,
        my,
        textwrap.fill(text, 22),
        ha="center",
        va="center",
        fontsize=7.8,
        color="#111111" if on_path else "#555555",
        style="normal" if on_path else "italic",
        bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none"},
        zorder=5,
    )


def draw(arch: Architecture, path: Path) -> Path:
    """Draw one stage's diagram into a PNG at `path`."""
    xs = [n.col * X for n in arch.nodes]
    ys = [n.row * Y for n in arch.nodes]
    x0, x1 = min(xs) - W / 2 - 0.3, max(xs) + W / 2 + 0.5
    y0, y1 = min(ys) - H / 2 - 0.7, max(ys) + H / 2 + 0.6
    scale = 0.78  # inches per data unit
    fig = new_figure((x1 - x0) * scale, (y1 - y0) * scale + 0.5)
    ax = fig.add_subplot()
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.axis("off")
    boxes = {n.id: _box(ax, n) for n in arch.nodes}
    for edge in arch.edges:
        _arrow(ax, arch, edge, boxes)
    ax.set_title(
        f"{arch.stage}: {arch.title}", color=stage_color(arch.stage), fontsize=12, loc="left"
    )
    key = "numbered: the path of one message"
    if any(not e.step for e in arch.edges):
        key += "   ·   dashed: off that path"
    if any(n.many for n in arch.nodes):
        key += "   ·   stacked box: one of several"
    ax.text(x0 + 0.1, y0 + 0.15, key, fontsize=7.5, color="#555555", ha="left", va="bottom")
    return save(fig, path)
