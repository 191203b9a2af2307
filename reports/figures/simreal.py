"""Simulated against real: matched runs side by side, latency CDFs and percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D

from reports.figures.common import Figure, Item, Note, legend, stage_names
from reports.figures.latency import PERCENTILES, cdf_axes, latency_floor, plot_latency
from reports.numbers import Calc, Text
from reports.rundata import NO_FAULT, RunData
from reports.style import new_figure, plain_log_axis, save, stage_color, suptitle

# The parameters that make the workload, and so decide whether two runs are twins; the
# rest (seed, drain cap, process counts, what the simulator or Locust alone records) do not.
WORKLOAD = ("users", "rate", "duration", "group_size", "faults", "churn")


def matches(sim: RunData, real: RunData) -> bool:
    """Same stage, scenario and fault, and equal on every workload parameter both record."""
    if (sim.stage, sim.scenario, sim.fault_label) != (real.stage, real.scenario, real.fault_label):
        return False
    common = [k for k in WORKLOAD if k in sim.params and k in real.params]
    return bool(common) and all(sim.params[k] == real.params[k] for k in common)


def sim_vs_real(runs: Sequence[RunData], out: Path) -> list[Item]:
    """Matched simulated and real runs side by side: latency CDFs and percentiles."""
    sims = [r for r in runs if r.kind == "sim"]
    reals = [r for r in runs if r.kind == "real"]
    if not sims or not reals:
        missing = "simulated" if not sims else "real"
        return [Note("sim", [f"No {missing} run in this report, so nothing to compare."])]
    pairs = [(s, r) for s in sims for r in reals if matches(s, r)]
    if not pairs:
        text = (
            "No simulated run here has a real counterpart with the same stage, scenario, "
            "fault and parameters."
        )
        return [Note("sim", [text])]
    fig = new_figure(11, 4.4)
    ax_cdf, ax_pts = fig.subplots(1, 2)
    both = [run for pair in pairs for run in pair]
    floor = latency_floor(both)
    for s, r in pairs:
        plot_latency(ax_cdf, None, r, floor)
        plot_latency(ax_cdf, None, s, floor)
    cdf_axes(ax_cdf, floor, "CDF: real solid, simulated dashed")
    legend(ax_cdf, stage_names(both), ("real", "sim"), loc="lower right")
    lo, hi = math.inf, 0.0
    for s, r in pairs:
        for (name, _q), marker in zip(PERCENTILES[:3], ("o", "s", "^"), strict=True):
            x, y = r.value(f"latency_ms.push.{name}"), s.value(f"latency_ms.push.{name}")
            if x and y:
                ax_pts.scatter(x, y, color=stage_color(s.stage), marker=marker, s=40, zorder=3)
                lo, hi = min(lo, x, y), max(hi, x, y)
    if hi > 0:
        span = np.geomspace(lo / 2, hi * 2, 10)
        ax_pts.plot(span, span, color="#888888", linewidth=1)
        ax_pts.plot(span, span * 2, color="#bbbbbb", linewidth=0.8, linestyle=":")
        ax_pts.plot(span, span / 2, color="#bbbbbb", linewidth=0.8, linestyle=":")
        ax_pts.set_xlim(lo / 2, hi * 2)
        ax_pts.set_ylim(lo / 2, hi * 2)
    ax_pts.set_xscale("log")
    ax_pts.set_yscale("log")
    plain_log_axis(ax_pts.xaxis)
    plain_log_axis(ax_pts.yaxis)
    ax_pts.set_xlabel("real run (ms, log scale)")
    ax_pts.set_ylabel("simulated run (ms, log scale)")
    ax_pts.set_title("Percentiles, simulated against real (dotted: 2x off)")
    marks = [Line2D([], [], color="#444444", marker=m, linestyle="") for m in ("o", "s", "^")]
    ax_pts.legend(marks, ["p50", "p90", "p99"], loc="upper left")
    suptitle(fig, "Simulated vs real: same stage, scenario, fault and parameters")
    file = "sim-vs-real.png"
    save(fig, out / file)
    return [Figure("sim", "Simulated vs real", file, _sim_caption(pairs))]


def _sim_caption(pairs: list[tuple[RunData, RunData]]) -> Text:
    p50 = "latency_ms.push.p50"
    text: Text = []
    for s, r in pairs[:3]:
        text += [f"{s.stage} {s.scenario} at ", *r.load_text()]
        if s.fault_label != NO_FAULT:
            text.append(f" under {s.fault_label}")
        text += [": simulated p50 ", s.num(p50), " ms vs real ", r.num(p50), " ms"]
        sv, rv = s.value(p50), r.value(p50)
        if sv and rv:
            big, small = (
                ((s, "simulation"), (r, "real run"))
                if sv >= rv
                else ((r, "real run"), (s, "simulation"))
            )
            ratio = Calc("ratio", (big[0].num(p50), small[0].num(p50)), "x")
            text += [" (the ", big[1], " ", ratio, " the ", small[1], ")"]
        text += [
            ", p99 ",
            s.num("latency_ms.push.p99"),
            " vs ",
            r.num("latency_ms.push.p99"),
            " ms; accepted ",
            s.num("throughput.accepted_sends_per_s"),
            " vs ",
            r.num("throughput.accepted_sends_per_s"),
            " sends/s; lost ",
            s.num("deliveries.lost"),
            " vs ",
            r.num("deliveries.lost"),
            ". ",
        ]
    if len(pairs) > 3:
        text.append("The other pairs are in the main table.")
    return text
