"""Push-latency figures: CDFs and tails of every stage, one plot per scenario, and the
plotting helpers the simulated-vs-real figure shares."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes

from reports.figures.common import (
    Figure,
    Floats,
    Item,
    Note,
    by_scenario,
    legend,
    missing_stages,
    pick,
    slug,
    stage_names,
    who,
)
from reports.numbers import Calc, Text, join
from reports.rundata import NO_FAULT, RunData
from reports.style import (
    KIND_LINE,
    new_figure,
    plain_log_axis,
    save,
    stage_color,
    stage_marker,
    suptitle,
)

PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99_9", 0.999))
_CURVE_POINTS = 600
_LATENCY_X = "push latency from intended send time (ms, log scale)"


def _curve(sample: Floats) -> tuple[Floats, Floats]:
    """(latency, fraction at or below) at a few hundred ranks, dense in the tail."""
    n = sample.size
    body = np.linspace(0, n - 1, _CURVE_POINTS // 2)
    tail = n - np.geomspace(1, n, _CURVE_POINTS // 2)
    idx = np.unique(np.clip(np.concatenate([body, tail]).astype(np.int64), 0, n - 1))
    return sample[idx], (idx + 1) / n


def latency_floor(runs: Iterable[RunData]) -> float:
    """Left end of a log latency axis: below the fastest 0.1% of any run, above zero."""
    lows = [
        float(r.latencies_ms[r.latencies_ms.size // 1000])
        for r in runs
        if r.latencies_ms is not None
    ]
    positive = [x for x in lows if x > 0]
    return min(positive) / 1.5 if positive else 0.1


def plot_latency(ax_cdf: Axes, ax_tail: Axes | None, r: RunData, floor: float) -> bool:
    """Draw the run's CDF (and tail); False when it has no push latency at all."""
    style: dict[str, Any] = {"color": stage_color(r.stage), "linewidth": 1.8}
    if r.latencies_ms is not None:
        x, frac = _curve(r.latencies_ms)
        x = np.maximum(x, floor)
        ax_cdf.plot(x, frac, linestyle=KIND_LINE[r.kind], **style)
        if ax_tail is not None:
            above = 1.0 - frac + 1.0 / r.latencies_ms.size
            ax_tail.plot(x, above, linestyle=KIND_LINE[r.kind], **style)
        return True
    # No sample (a simulation that kept aggregates only): the percentiles as points.
    pts = [(r.value(f"latency_ms.push.{k}"), q) for k, q in PERCENTILES]
    got = [(x, q) for x, q in pts if x is not None]
    if not got:
        return False
    xs, qs = zip(*got, strict=True)
    ax_cdf.plot(xs, qs, linestyle=":", marker=stage_marker(r.stage), **style)
    if ax_tail is not None:
        ax_tail.plot(xs, [1 - q for q in qs], linestyle=":", marker=stage_marker(r.stage), **style)
    return True


def cdf_axes(ax: Axes, floor: float, title: str) -> None:
    ax.set_xscale("log")
    ax.set_xlim(left=floor)
    plain_log_axis(ax.xaxis)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(_LATENCY_X)
    ax.set_ylabel("fraction of push deliveries at or below")
    ax.set_title(title)


def _tail_axes(ax: Axes, floor: float) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(left=floor)
    plain_log_axis(ax.xaxis)
    ax.set_xlabel(_LATENCY_X)
    ax.set_ylabel("fraction at or above (log scale)")
    ax.set_title("Tail")
    for name, q in (("p50", 0.5), ("p90", 0.1), ("p99", 0.01), ("p99.9", 0.001)):
        ax.axhline(q, color="#999999", linewidth=0.7, linestyle=":")
        ax.annotate(
            name,
            (1.0, q),
            xycoords=("axes fraction", "data"),
            fontsize=7.5,
            color="#666666",
            ha="left",
            va="center",
        )


def latency_cdfs(runs: Sequence[RunData], out: Path) -> list[Item]:
    """Push-latency CDFs of every stage, one plot per scenario, fault-free runs."""
    items: list[Item] = []
    for scenario, sruns in by_scenario(runs).items():
        shown = pick([r for r in sruns if r.fault_label == NO_FAULT])
        if not shown:
            items.append(Note("latency", [f"Scenario {scenario}: no fault-free run."]))
            continue
        fig = new_figure(11, 4.2)
        ax_cdf, ax_tail = fig.subplots(1, 2)
        floor = latency_floor(shown)
        drawn = [r for r in shown if plot_latency(ax_cdf, ax_tail, r, floor)]
        cdf_axes(ax_cdf, floor, "Distribution (CDF)")
        _tail_axes(ax_tail, floor)
        legend(ax_cdf, stage_names(drawn), (r.kind for r in drawn), loc="lower right")
        suptitle(fig, f"Push latency, scenario {scenario}, no fault")
        file = f"latency-{slug(scenario)}.png"
        save(fig, out / file)
        caption = _latency_caption(shown, runs)
        items.append(Figure("latency", f"Push latency: {scenario}", file, caption))
    return items


def _latency_caption(shown: list[RunData], all_runs: Sequence[RunData]) -> Text:
    p99 = "latency_ms.push.p99"
    with_push = [r for r in shown if r.value(p99) is not None]
    text: Text = []
    if with_push:
        text += ["At ", *with_push[0].load_text(), ", p50 / p99 push latency was "]
        text += join(
            [[who(r), " ", r.num("latency_ms.push.p50"), " / ", r.num(p99)] for r in with_push]
        )
        text.append(" ms.")
        if len({r.load_key for r in with_push}) > 1:
            text.append(" Not every stage ran at that load; the others show their highest.")
    real = [r for r in with_push if r.kind == "real"] or with_push
    if len(real) >= 2:
        slow = max(real, key=lambda r: r.value(p99) or 0.0)
        fast = min(real, key=lambda r: r.value(p99) or 0.0)
        if (fast.value(p99) or 0.0) > 0 and slow is not fast:
            ratio = Calc("ratio", (slow.num(p99), fast.num(p99)), "x")
            text += [f" {who(slow)}'s p99 is ", ratio, f" {who(fast)}'s."]
    for r in shown:
        if r not in with_push:
            text += [
                f" {who(r)} delivered nothing by push (",
                r.num("sends.acked_ok"),
                " sends acked ok, ",
                r.num("sends.acked_error"),
                " refused with an error).",
            ]
    text += missing_stages(shown, all_runs, "for this scenario")
    if text and isinstance(text[0], str):
        text[0] = text[0].lstrip()
    return text
