"""The report's look: the Agg backend, one colour per stage in every figure, one line
style per run kind (real solid, simulated dashed), and how figures are saved."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from reports.numbers import fmt

# Fixed colours for the stages of the story, so v2 is the same orange everywhere;
# stages added later take the next free colour of the same palette.
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
_KNOWN = ["v1", "v2", "v3", "v4", "v5"]
_extra: dict[str, str] = {}

_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]

KIND_LINE: dict[str, Literal["-", "--"]] = {"real": "-", "sim": "--"}
KIND_HATCH = {"real": "", "sim": "//"}
DPI = 110

plt.rcParams.update(
    {
        "font.size": 9.5,
        "axes.titlesize": 10.5,
        "axes.titleweight": "bold",
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "legend.fontsize": 8.5,
        "legend.frameon": False,
        "figure.dpi": DPI,
    }
)


def stage_color(stage: str) -> str:
    if stage in _KNOWN:
        return _PALETTE[_KNOWN.index(stage)]
    if stage not in _extra:
        _extra[stage] = _PALETTE[(len(_KNOWN) + len(_extra)) % len(_PALETTE)]
    return _extra[stage]


def stage_marker(stage: str) -> str:
    """A marker per stage, so points of stages that coincide stay distinguishable."""
    stage_color(stage)  # gives a new stage its place
    order = _KNOWN + list(_extra)
    return _MARKERS[order.index(stage) % len(_MARKERS)]


def plain_log_axis(axis: Axis) -> None:
    """Tick labels like 10, 100, 1,000 on a log axis instead of powers of ten; 20 and 50
    as well when the axis spans few decades. Call it after the data is plotted."""
    axis.axes.autoscale_view()
    lo, hi = axis.get_view_interval()
    decades = math.log10(hi / lo) if lo > 0 else 99.0
    subs: tuple[float, ...] = (1.0,)
    if decades <= 1.2:  # within about a decade: every digit, or 1, 2, 5 give one tick
        subs = tuple(float(d) for d in range(1, 10))
    elif decades <= 3.0:
        subs = (1.0, 2.0, 5.0)
    axis.set_major_locator(LogLocator(10, subs=subs, numticks=12))
    # Three significant digits (the report's own `fmt`), so 3.5 never shows as a second 4.
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt(float(v))))
    axis.set_minor_formatter(NullFormatter())


def suptitle(fig: Figure, text: str) -> None:
    """A bold figure title, wrapped to the figure's width so it is never clipped."""
    chars = max(20, int(fig.get_figwidth() * 11))  # bold 10.5 pt: about 11 characters/inch
    fig.suptitle(textwrap.fill(text, chars), fontweight="bold")


def new_figure(width: float, height: float) -> Figure:
    return plt.figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, path: Path) -> Path:
    """Write the figure as PNG and free it."""
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return path
