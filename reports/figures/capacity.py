"""Capacity: each stage's ladder of offered loads (`imlab capacity`), accepted msgs/s and
push p99 against offered load, the knee ringed and the levels the load generator could
not offer drawn as crosses.

A ladder is the set of run folders beside one capacity.json; its knee is judged again
here from those runs' metrics.json and manifests by the same finder `imlab capacity`
used (reports/knee.py), with the threshold from capacity.json, so what the figure and
caption say follows from the runs shown.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from imlab import stages
from reports.figures.common import Figure, Item, slug
from reports.knee import DEFAULT_THRESHOLD_MS, Knee, Level, find_knee
from reports.numbers import Given, Num, Text, fmt, join
from reports.rundata import CAPACITY, RunData, stage_key
from reports.style import new_figure, plain_log_axis, save, stage_color, stage_marker, suptitle

SECTION = "capacity"
ACCEPTED = "throughput.accepted_sends_per_s"
P99 = "latency_ms.push.p99"
GEN_COLOR = "#555555"


@dataclass
class Ladder:
    """One stage's capacity ladder as the report sees it."""

    folder: Path
    runs: list[RunData]  # its levels, by offered load
    threshold: Given
    knee: Knee

    @property
    def stage(self) -> str:
        return self.runs[0].stage

    @property
    def scenario(self) -> str:
        return self.runs[0].scenario

    def at(self, offered: float | None) -> RunData | None:
        """The level run at this offered load."""
        return next((r for r in self.runs if r.offered_value() == offered), None)

    @property
    def generator_bound(self) -> list[RunData]:
        return [r for r in self.runs if r.generator_bound]


def level(r: RunData) -> Level:
    """A run as a rung of the knee finder, the way `imlab capacity` judged it."""
    count = r.value("latency_ms.push.count")
    return Level(
        offered=r.offered_value() or 0.0,
        p99_ms=r.value(P99) if count else None,
        lost=int(r.value("deliveries.lost") or 0),
        generator_bound=r.generator_bound,
        delivered_per_s=r.value("throughput.deliveries_per_s"),
        run_dir=str(r.path),
    )


def in_ladder(r: RunData) -> bool:
    return r.kind == "real" and (r.path.parent / CAPACITY).exists()


def ladders(runs: Sequence[RunData]) -> list[Ladder]:
    """Every capacity ladder among the runs, by scenario and stage."""
    groups: dict[Path, list[RunData]] = {}
    for r in runs:
        if in_ladder(r) and r.offered_value() is not None:
            groups.setdefault(r.path.parent, []).append(r)
    out: list[Ladder] = []
    for folder, rs in groups.items():
        file = folder / CAPACITY
        summary: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
        raw = summary.get("threshold_ms", DEFAULT_THRESHOLD_MS)
        threshold = Given(str(file), "threshold_ms", raw)
        rs.sort(key=lambda r: (r.offered_value() or 0.0, r.rid))
        knee = find_knee([level(r) for r in rs], float(raw))
        out.append(Ladder(folder, rs, threshold, knee))
    return sorted(out, key=lambda lad: (lad.scenario, stage_key(lad.stage), str(lad.folder)))


# ---------------------------------------------------------------- the figure


def capacity(runs: Sequence[RunData], out: Path) -> list[Item]:
    """Per scenario with a capacity ladder: the ladders of every stage in one figure."""
    items: list[Item] = []
    by_scenario: dict[str, list[Ladder]] = {}
    for lad in ladders(runs):
        by_scenario.setdefault(lad.scenario, []).append(lad)
    for scenario, lads in by_scenario.items():
        file = f"capacity-{slug(scenario)}.png"
        _draw(lads, out / file, scenario)
        items.append(Figure(SECTION, f"Capacity: {scenario}", file, capacity_caption(lads)))
    return items


def _draw(lads: list[Ladder], path: Path, scenario: str) -> None:
    fig = new_figure(11, 4.4)
    ax_tp, ax_lat = fig.subplots(1, 2)
    xs_all = [r.offered_value() or 0.0 for lad in lads for r in lad.runs]
    lo, hi = min(xs_all) / 1.4, max(xs_all) * 1.4
    ax_tp.plot([lo, hi], [lo, hi], color="#bbbbbb", linewidth=1, zorder=0)
    ax_tp.annotate("accepted = offered", (hi / 1.5, hi / 1.5), fontsize=7.5, color="#888888",
                   ha="right", va="bottom")  # fmt: skip
    for n, lad in enumerate(lads):
        color, marker = stage_color(lad.stage), stage_marker(lad.stage)
        xs = [r.offered_value() or 0.0 for r in lad.runs]
        tp = [_nan(r.value(ACCEPTED)) for r in lad.runs]
        p99 = [_nan(r.value(P99)) for r in lad.runs]
        style: dict[str, Any] = {"color": color, "marker": marker, "alpha": 0.9,
                                 "linewidth": max(3.2 - 0.5 * n, 1.2),
                                 "markersize": max(9 - 1.0 * n, 4)}  # fmt: skip
        ax_tp.plot(xs, tp, **style)
        ax_lat.plot(xs, p99, **style)
        for r in lad.generator_bound:
            x = r.offered_value() or 0.0
            for ax, key in ((ax_tp, ACCEPTED), (ax_lat, P99)):
                y = r.value(key)
                if y is not None:
                    ax.scatter([x], [y], marker="X", s=150, color=GEN_COLOR, zorder=6,
                               edgecolors="white", linewidths=0.8)  # fmt: skip
        knee = lad.at(lad.knee.knee)
        if knee is not None:  # a knee, or (no knee in range, generator-bound) a lower bound
            bound = lad.knee.status != "knee"
            label = f"{lad.stage} knee" + (" \u2265" if bound else "")
            for ax, key in ((ax_tp, ACCEPTED), (ax_lat, P99)):
                _ring(ax, knee.offered_value(), knee.value(key), lad.stage, label, bound, n)
    ax_lat.axhline(float(lads[0].threshold.value or DEFAULT_THRESHOLD_MS), color="#aa3333",
                   linestyle=":", linewidth=1.2, zorder=0)  # fmt: skip
    levels = sorted(set(xs_all))
    for ax in (ax_tp, ax_lat):
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.xaxis.set_major_locator(FixedLocator(levels))  # ticks at the ladder's levels
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt(float(v))))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("offered load (msgs/s, log scale; ticks at the levels run)")
    ax_tp.set_yscale("log")
    plain_log_axis(ax_tp.yaxis)
    ax_tp.set_ylim(lo, hi)
    ax_tp.set_ylabel("accepted msgs/s (acked ok, log scale)")
    ax_tp.set_title("Throughput")
    ax_lat.set_yscale("log")
    plain_log_axis(ax_lat.yaxis)
    ax_lat.set_ylabel("p99 push latency (ms, log scale)")
    ax_lat.set_title("p99 push latency (dotted: the knee's threshold)")
    handles: list[Any] = [
        Line2D([], [], color=stage_color(lad.stage), marker=stage_marker(lad.stage), linewidth=2)
        for lad in lads
    ]
    labels = [lad.stage for lad in lads]
    handles += [
        Line2D([], [], linestyle="", marker="o", markersize=12, markerfacecolor="none",
               markeredgecolor="#333333"),
        Line2D([], [], linestyle="", marker="o", markersize=12, markerfacecolor="none",
               markeredgecolor="#333333", markeredgewidth=1.0, alpha=0.6),
        Line2D([], [], linestyle="", marker="X", markersize=10, color=GEN_COLOR),
    ]  # fmt: skip
    labels += [
        "knee",
        "knee at least here (no knee in range, or the generator gave out)",
        "generator-bound level",
    ]
    ax_tp.legend(handles, labels, loc="upper left", fontsize=8)
    suptitle(fig, f"Capacity ladders, scenario {scenario}, stages run one after another")
    save(fig, path)


def _nan(v: float | None) -> float:
    return np.nan if v is None else v


def _ring(
    ax: Axes, x: float | None, y: float | None, stage: str, label: str, bound: bool, n: int
) -> None:
    """Ring a ladder's knee; a lower bound (`bound`) thinner and paler. Labels of
    ladders whose knees coincide are stacked (`n`), not drawn over each other."""
    if x is None or y is None:
        return
    ax.scatter([x], [y], s=300, facecolors="none", edgecolors=stage_color(stage),
               linewidths=1.0 if bound else 1.8, alpha=0.6 if bound else 1.0,
               zorder=5)  # fmt: skip
    ax.annotate(label, (x, y), textcoords="offset points", xytext=(9, -14 - 10 * n),
                fontsize=8, color=stage_color(stage))  # fmt: skip


# ---------------------------------------------------------------- the words


def _offered(r: RunData) -> Num:
    return r.num("run.params.offered_sends_per_s")


def knee_text(lad: Ladder) -> Text:
    """What one ladder shows, in one clause: its knee and what lies past it."""
    k, name = lad.knee, lad.stage
    knee, first = lad.at(k.knee), lad.at(k.first_failing)
    text: Text
    if k.status == "knee" and knee is not None and first is not None:
        text = [name, ": knee at ", _offered(knee), " msgs/s (push p99 ", knee.num(P99),
                " ms, accepted ", knee.num(ACCEPTED), "/s); at ", _offered(first),
                " msgs/s ", *_failure(first)]  # fmt: skip
    elif k.status == "no knee within range" and knee is not None:
        text = [name, ": no knee within range, every level held up to ", _offered(knee),
                " msgs/s (push p99 ", knee.num(P99), " ms, accepted ", knee.num(ACCEPTED),
                "/s)"]  # fmt: skip
    elif k.status == "below range" and first is not None:
        text = [name, ": below range, already its lowest level, ", _offered(first),
                " msgs/s, ", *_failure(first)]  # fmt: skip
    elif k.status == "generator-bound" and first is not None:
        text = [name, ": generator-bound at ", _offered(first), " msgs/s, where the load "
                "generator, not the stage, was the limit; "]  # fmt: skip
        if knee is not None:
            text += ["the stage held up to ", _offered(knee), " msgs/s (push p99 ",
                     knee.num(P99), " ms), so its knee is at least that"]  # fmt: skip
        else:
            text += ["no level before it held, so the ladder says nothing of the stage"]
    else:  # pragma: no cover - find_knee always names the levels its status needs
        text = [name, ": no level to judge"]
    noisy = [r for r in (lad.at(x) for x in k.noisy) if r is not None]
    if noisy:
        text += ["; ignored as noise, a failing level between passing ones: "]
        text += [*join([[_offered(r), " msgs/s"] for r in noisy]), ""]
    return text


def _failure(r: RunData) -> Text:
    """Why a level failed: its push p99, and what it lost."""
    out: Text = []
    if not r.value("latency_ms.push.count"):
        out.append("nothing was pushed")
    else:
        out += ["push p99 was ", r.num(P99), " ms"]
    if r.value("deliveries.lost"):
        out += [" and ", r.num("deliveries.lost"), " of ", r.num("deliveries.expected"),
                " deliveries were lost"]  # fmt: skip
    return out


def generator_text(lads: Sequence[Ladder]) -> Text:
    """Which levels were generator-bound (the crosses), or that none was."""
    bound = [lad for lad in lads if lad.generator_bound]
    if not bound:
        return ["No level was generator-bound: at every one the load generator kept its "
                "schedule, so each ladder measured its stage."]  # fmt: skip
    parts = [
        [lad.stage, " at ", *join([[_offered(r)] for r in lad.generator_bound]), " msgs/s"]
        for lad in bound
    ]
    return ["Generator-bound levels (crosses; the generator's own verdict, in each run's "
            "manifest): ", *join(parts, sep="; ", last="; "), "."]  # fmt: skip


def capacity_caption(lads: Sequence[Ladder]) -> Text:
    thresholds = {lad.threshold.value for lad in lads}
    text: Text = [
        "Each stage's ladder of rising offered loads (open loop), the stages run one after "
        "another on the same cores as the load generator. The knee (ringed) is the highest "
        "offered load with push p99 under ",
        lads[0].threshold,
        " ms and nothing lost"
        + (" (each ladder's own threshold; they differ)" if len(thresholds) > 1 else "")
        + ". ",
    ]
    text += [*join([knee_text(lad) for lad in lads], sep="; ", last="; "), ". "]
    text += generator_text(lads)
    missing = sorted(set(stages.names()) - {lad.stage for lad in lads}, key=stage_key)
    if missing:
        text += [" No ", *join([[s] for s in missing], last=" or "),
                 " run with a capacity ladder here."]  # fmt: skip
    return text


def capacity_findings(runs: Sequence[RunData]) -> list[Text]:
    """One finding per ladder: its knee, in the caption's words."""
    out: list[Text] = []
    for lad in ladders(runs):
        gen = [r for r in lad.generator_bound if r.offered_value() != lad.knee.first_failing]
        text: Text = [f"Capacity, scenario {lad.scenario}, ", *knee_text(lad)]
        if gen:
            text += ["; generator-bound also at ", *join([[_offered(r)] for r in gen]),
                     " msgs/s"]  # fmt: skip
        out.append([*text, "."])
    return out


__all__ = ["Ladder", "capacity", "capacity_caption", "capacity_findings", "ladders"]
