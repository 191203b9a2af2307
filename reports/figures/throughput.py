"""Throughput against offered load: accepted sends/s and p99 push latency, per scenario."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes

from reports.figures.capacity import in_ladder
from reports.figures.common import (
    KEEP_UP,
    Figure,
    Item,
    Note,
    by_scenario,
    legend,
    missing_stages,
    slug,
    stage_names,
    who,
)
from reports.numbers import Calc, Num, Text, join
from reports.rundata import NO_FAULT, RunData, stage_key
from reports.style import (
    KIND_LINE,
    new_figure,
    plain_log_axis,
    save,
    stage_color,
    stage_marker,
    suptitle,
)


def throughput(runs: Sequence[RunData], out: Path) -> list[Item]:
    """Accepted sends/s and p99 latency against offered load, per scenario."""
    items: list[Item] = []
    for scenario, sruns in by_scenario(runs).items():
        # A capacity ladder's levels have their own figure (reports/figures/capacity.py).
        sruns = [r for r in sruns if not in_ladder(r)]
        if not sruns:
            continue
        base = [r for r in sruns if r.fault_label == NO_FAULT and r.offered_value() is not None]
        if not base:
            text = f"Scenario {scenario}: no fault-free run with a known load."
            items.append(Note("throughput", [text]))
            continue
        series: dict[tuple[str, str], list[RunData]] = {}
        for r in sorted(base, key=lambda r: (r.offered_value() or 0.0, r.rid)):
            series.setdefault((r.stage, r.kind), []).append(r)
        keys = sorted(series, key=lambda sk: (stage_key(sk[0]), sk[1]))
        fig = new_figure(11, 4.2)
        ax_tp, ax_lat = fig.subplots(1, 2)
        top = max(r.offered_value() or 0.0 for r in base) * 1.05
        ax_tp.plot([0, top], [0, top], color="#bbbbbb", linewidth=1, zorder=0)
        ax_tp.annotate(
            "accepted = offered",
            (top * 0.55, top * 0.55),
            fontsize=7.5,
            color="#888888",
            ha="right",
            va="bottom",
        )
        for n, (stage, kind) in enumerate(keys):
            rs = series[(stage, kind)]
            xs = [r.offered_value() for r in rs]
            style: dict[str, Any] = {
                "color": stage_color(stage),
                "linestyle": KIND_LINE[kind],
                "marker": stage_marker(stage),
                "markerfacecolor": "white" if kind == "sim" else stage_color(stage),
                # Earlier stages drawn thicker, so a line hidden under a later one shows.
                "linewidth": max(3.6 - 0.8 * n, 1.2),
                "markersize": max(10 - 1.6 * n, 4),
                "alpha": 0.9,
            }
            ax_tp.plot(xs, [r.value("throughput.accepted_sends_per_s") for r in rs], **style)
            lat = [r.value("latency_ms.push.p99") for r in rs]
            ax_lat.plot(xs, [np.nan if v is None else v for v in lat], **style)
            knee = next((r for r in rs if not _keeps_up(r)), None)
            if knee is not None and knee is not rs[0]:
                _mark_knee(ax_tp, knee, knee.value("throughput.accepted_sends_per_s"), stage)
                _mark_knee(ax_lat, knee, knee.value("latency_ms.push.p99"), stage)
        ax_tp.set_xlabel("offered load (sends/s: users × rate)")
        ax_tp.set_ylabel("accepted sends/s (acked ok)")
        ax_tp.set_title("Throughput")
        ax_tp.set_xlim(0, top)
        ax_tp.set_ylim(0, top)
        ax_lat.set_xlabel("offered load (sends/s: users × rate)")
        ax_lat.set_ylabel("p99 push latency (ms, log scale)")
        ax_lat.set_yscale("log")
        plain_log_axis(ax_lat.yaxis)
        ax_lat.set_xlim(0, top)
        ax_lat.set_title("p99 push latency")
        legend(ax_tp, stage_names(base), (r.kind for r in base), loc="upper left")
        suptitle(fig, f"Throughput vs offered load, scenario {scenario}, no fault")
        file = f"throughput-{slug(scenario)}.png"
        save(fig, out / file)
        caption = _throughput_caption([series[k] for k in keys], runs)
        items.append(Figure("throughput", f"Throughput vs offered load: {scenario}", file, caption))
    return items


def _mark_knee(ax: Axes, r: RunData, y: float | None, stage: str) -> None:
    """Ring the first load a stage did not keep up with (after one it did): its knee."""
    x = r.offered_value()
    if x is None or y is None:
        return
    ax.scatter([x], [y], s=260, facecolors="none", edgecolors=stage_color(stage), linewidths=1.8,
               zorder=5)  # fmt: skip
    ax.annotate(f"{who(r)} knee", (x, y), textcoords="offset points", xytext=(8, -14),
                fontsize=8, color=stage_color(stage))  # fmt: skip


def _keeps_up(r: RunData) -> bool:
    offered = r.offered_value() or 0.0
    return (r.value("throughput.accepted_sends_per_s") or 0.0) >= KEEP_UP * offered


def _offered(r: RunData) -> Num | Calc:
    o = r.offered()
    if o is None:
        raise ValueError(f"{r.rid}: no offered load")
    return o


def saturation(rs: list[RunData]) -> Text:
    """What one stage's series shows: where it stopped keeping up, if it did."""
    name = who(rs[0])
    accepted = "throughput.accepted_sends_per_s"
    if all(not r.value("sends.acked_ok") and r.value("sends.acked_error") for r in rs):
        return [
            name,
            " accepted nothing: all ",
            rs[-1].num("sends.acked_error"),
            " sends of its largest run were refused with an error",
        ]
    fail = next((r for r in rs if not _keeps_up(r)), None)
    if fail is None:
        last = rs[-1]
        return [
            name,
            " kept up at every load tried, up to ",
            _offered(last),
            " sends/s (accepted ",
            last.num(accepted),
            "/s)",
        ]
    text: Text = [name]
    before = [
        r for r in rs if _keeps_up(r) and (r.offered_value() or 0) < (fail.offered_value() or 0)
    ]
    if before:
        text += [" kept up to ", _offered(before[-1]), " sends/s and"]
    return [*text, " fell behind at ", _offered(fail), " (accepted ", fail.num(accepted), "/s)"]


def _throughput_caption(series: list[list[RunData]], all_runs: Sequence[RunData]) -> Text:
    ordered = sorted(series, key=lambda rs: (rs[0].kind != "real", stage_key(rs[0].stage)))
    text: Text = []
    if all(len(rs) == 1 for rs in ordered):
        text.append("Each stage ran at one load only, so no saturation point shows. ")
    text += ["Accepting at least nine tenths of the offered sends: "]
    text += [*join([saturation(rs) for rs in ordered], sep="; ", last="; "), "."]
    tops = [rs[-1] for rs in ordered if rs[-1].value("latency_ms.push.p99") is not None]
    if tops:
        text += [" At each one's highest load, p99 push latency was "]
        text += join([[who(r), " ", r.num("latency_ms.push.p99"), " ms"] for r in tops])
        text.append(".")
    text += missing_stages([r for rs in ordered for r in rs], all_runs, "with a known load here")
    return text
