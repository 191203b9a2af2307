"""What every figure shares: the `Figure` and `Note` items a figure function returns, and
the helpers that choose the runs to show and name them in captions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from reports.architecture import ARCHITECTURES
from reports.numbers import Text, join
from reports.rundata import RunData, stage_key
from reports.style import KIND_LINE, stage_color, stage_marker

Floats = npt.NDArray[np.float64]
Loc = Literal["best", "lower right", "upper left"]

# A stage "keeps up" while it accepts at least this share of the offered sends.
KEEP_UP = 0.9


@dataclass
class Figure:
    section: str
    title: str
    file: str  # PNG file name in the output folder
    caption: Text


@dataclass
class Note:
    """A statement where a figure would be, because its data is missing."""

    section: str
    text: Text


Item = Figure | Note


def slug(*parts: str) -> str:
    raw = "-".join(parts).lower()
    return "".join(c if c.isalnum() else "-" for c in raw).strip("-")


def by_scenario(runs: Iterable[RunData]) -> dict[str, list[RunData]]:
    out: dict[str, list[RunData]] = {}
    for r in runs:
        out.setdefault(r.scenario, []).append(r)
    return out


def stage_names(runs: Iterable[RunData]) -> list[str]:
    return sorted({r.stage for r in runs}, key=stage_key)


def who(r: RunData) -> str:
    """How a caption names a run: its stage, marked when simulated."""
    return f"{r.stage} (sim)" if r.kind == "sim" else r.stage


def missing_stages(shown: Iterable[RunData], all_runs: Sequence[RunData], where: str) -> Text:
    """`No v3 or v4 run <where>.` for the stages of the story missing from `shown`."""
    known = set(ARCHITECTURES) | {r.stage for r in all_runs}
    missing = sorted(known - {r.stage for r in shown}, key=stage_key)
    if not missing:
        return []
    return [" No ", *join([[s] for s in missing], last=" or "), f" run {where}."]


def standard_load(runs: Sequence[RunData]) -> tuple[float, float] | None:
    """The load (users, rate) that the most stages ran at; ties go to the higher load."""
    stages_at: dict[tuple[float, float], set[str]] = {}
    for r in runs:
        if r.load_key is not None:
            stages_at.setdefault(r.load_key, set()).add(r.stage)
    if not stages_at:
        return None
    return max(stages_at, key=lambda k: (len(stages_at[k]), k[0] * k[1], k))


def pick(runs: Sequence[RunData]) -> list[RunData]:
    """One run per (stage, kind): at the standard load when it ran there, else its highest."""
    load = standard_load(runs)
    best: dict[tuple[str, str], RunData] = {}

    def rank(r: RunData) -> tuple[bool, float, str]:
        return (r.load_key == load, r.offered_value() or 0.0, r.rid)

    for r in runs:
        cur = best.get((r.stage, r.kind))
        if cur is None or rank(r) > rank(cur):
            best[(r.stage, r.kind)] = r
    return sorted(best.values(), key=lambda r: r.sort_key)


def legend(ax: Axes, stages: Sequence[str], kinds: Iterable[str], loc: Loc = "best") -> None:
    """Stage colours (with their markers) and, when both kinds are shown, line styles."""
    handles: list[Any] = [
        Line2D([], [], color=stage_color(s), linewidth=2.5, marker=stage_marker(s)) for s in stages
    ]
    labels = list(stages)
    kinds = sorted(set(kinds))
    if kinds != ["real"]:
        for kind in kinds:
            handles.append(Line2D([], [], color="#444444", linestyle=KIND_LINE[kind]))
            labels.append("simulated" if kind == "sim" else "real")
    ax.legend(handles, labels, loc=loc)
