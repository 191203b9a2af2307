"""The report's figures, each a PNG plus a caption generated from the numbers it shows.

Every figure function takes the loaded runs and the output folder and returns
`Figure`s (and `Note`s where the data for a figure is missing). Captions are
fragment lists (`reports.numbers`), so each number in them is traceable to a run's
metrics.json.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from imlab import stages
from reports.architecture import ARCHITECTURES
from reports.diagrams import draw
from reports.numbers import Calc, Num, Text, join
from reports.rundata import NO_FAULT, RunData, stage_key
from reports.style import (
    KIND_HATCH,
    KIND_LINE,
    new_figure,
    plain_log_axis,
    save,
    stage_color,
    stage_marker,
)

Floats = npt.NDArray[np.float64]
Loc = Literal["best", "lower right", "upper left"]

# A stage "keeps up" while it accepts at least this share of the offered sends.
KEEP_UP = 0.9
_PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99_9", 0.999))
_CURVE_POINTS = 600
_LATENCY_X = "push latency from intended send time (ms, log scale)"


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


# ---------------------------------------------------------------- helpers


def _slug(*parts: str) -> str:
    raw = "-".join(parts).lower()
    return "".join(c if c.isalnum() else "-" for c in raw).strip("-")


def _by_scenario(runs: Iterable[RunData]) -> dict[str, list[RunData]]:
    out: dict[str, list[RunData]] = {}
    for r in runs:
        out.setdefault(r.scenario, []).append(r)
    return out


def _stages(runs: Iterable[RunData]) -> list[str]:
    return sorted({r.stage for r in runs}, key=stage_key)


def _who(r: RunData) -> str:
    """How a caption names a run: its stage, marked when simulated."""
    return f"{r.stage} (sim)" if r.kind == "sim" else r.stage


def _missing(shown: Iterable[RunData], all_runs: Sequence[RunData], where: str) -> Text:
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


def _pick(runs: Sequence[RunData]) -> list[RunData]:
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


def _curve(sample: Floats) -> tuple[Floats, Floats]:
    """(latency, fraction at or below) at a few hundred ranks, dense in the tail."""
    n = sample.size
    body = np.linspace(0, n - 1, _CURVE_POINTS // 2)
    tail = n - np.geomspace(1, n, _CURVE_POINTS // 2)
    idx = np.unique(np.clip(np.concatenate([body, tail]).astype(np.int64), 0, n - 1))
    return sample[idx], (idx + 1) / n


def _latency_floor(runs: Iterable[RunData]) -> float:
    """Left end of a log latency axis: below the fastest 0.1% of any run, above zero."""
    lows = [
        float(r.latencies_ms[r.latencies_ms.size // 1000])
        for r in runs
        if r.latencies_ms is not None
    ]
    positive = [x for x in lows if x > 0]
    return min(positive) / 1.5 if positive else 0.1


def _plot_latency(ax_cdf: Axes, ax_tail: Axes | None, r: RunData, floor: float) -> bool:
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
    pts = [(r.value(f"latency_ms.push.{k}"), q) for k, q in _PERCENTILES]
    got = [(x, q) for x, q in pts if x is not None]
    if not got:
        return False
    xs, qs = zip(*got, strict=True)
    ax_cdf.plot(xs, qs, linestyle=":", marker=stage_marker(r.stage), **style)
    if ax_tail is not None:
        ax_tail.plot(xs, [1 - q for q in qs], linestyle=":", marker=stage_marker(r.stage), **style)
    return True


def _cdf_axes(ax: Axes, floor: float, title: str) -> None:
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


def _legend(ax: Axes, stages: Sequence[str], kinds: Iterable[str], loc: Loc = "best") -> None:
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


# ---------------------------------------------------------------- architecture


def architecture(runs: Sequence[RunData], out: Path) -> list[Item]:
    """One diagram per described stage, with its message path spelled out."""
    items: list[Item] = []
    for stage, arch in ARCHITECTURES.items():
        file = f"arch-{_slug(stage)}.png"
        draw(arch, out / file)
        names = {n.id: n.label for n in arch.nodes}
        steps = [f"{names[e.src]} → {names[e.dst]}: {e.label}" for e in arch.path()]
        caption: Text = [
            f"{stage} (seed section {arch.seed_section}). One message, step by step: ",
            "; ".join(steps),
            f". Hand-off to a member on another node: {arch.handoff}. ",
            f"The seed's open problem, which the runs measure: {arch.open_problem}.",
        ]
        items.append(Figure("architecture", f"{stage}: {arch.title}", file, caption))
    undescribed = [s for s in _stages(runs) if s not in ARCHITECTURES]
    if undescribed:
        items.append(
            Note(
                "architecture",
                ["No architecture description for ", *join([[s] for s in undescribed]), "."],
            )
        )
    return items


# ---------------------------------------------------------------- latency


def latency_cdfs(runs: Sequence[RunData], out: Path) -> list[Item]:
    """Push-latency CDFs of every stage, one plot per scenario, fault-free runs."""
    items: list[Item] = []
    for scenario, sruns in _by_scenario(runs).items():
        shown = _pick([r for r in sruns if r.fault_label == NO_FAULT])
        if not shown:
            items.append(Note("latency", [f"Scenario {scenario}: no fault-free run."]))
            continue
        fig = new_figure(11, 4.2)
        ax_cdf, ax_tail = fig.subplots(1, 2)
        floor = _latency_floor(shown)
        drawn = [r for r in shown if _plot_latency(ax_cdf, ax_tail, r, floor)]
        _cdf_axes(ax_cdf, floor, "Distribution (CDF)")
        _tail_axes(ax_tail, floor)
        _legend(ax_cdf, _stages(drawn), (r.kind for r in drawn), loc="lower right")
        fig.suptitle(f"Push latency, scenario {scenario}, no fault", fontweight="bold")
        file = f"latency-{_slug(scenario)}.png"
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
            [[_who(r), " ", r.num("latency_ms.push.p50"), " / ", r.num(p99)] for r in with_push]
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
            text += [f" {_who(slow)}'s p99 is ", ratio, f" {_who(fast)}'s."]
    for r in shown:
        if r not in with_push:
            text += [
                f" {_who(r)} delivered nothing by push (",
                r.num("sends.acked_ok"),
                " sends acked ok, ",
                r.num("sends.acked_error"),
                " refused with an error).",
            ]
    text += _missing(shown, all_runs, "for this scenario")
    if text and isinstance(text[0], str):
        text[0] = text[0].lstrip()
    return text


# ---------------------------------------------------------------- throughput


def throughput(runs: Sequence[RunData], out: Path) -> list[Item]:
    """Accepted sends/s and p99 latency against offered load, per scenario."""
    items: list[Item] = []
    for scenario, sruns in _by_scenario(runs).items():
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
        _legend(ax_tp, _stages(base), (r.kind for r in base), loc="upper left")
        fig.suptitle(
            f"Throughput vs offered load, scenario {scenario}, no fault", fontweight="bold"
        )
        file = f"throughput-{_slug(scenario)}.png"
        save(fig, out / file)
        caption = _throughput_caption([series[k] for k in keys], runs)
        items.append(Figure("throughput", f"Throughput vs offered load: {scenario}", file, caption))
    return items


def _keeps_up(r: RunData) -> bool:
    offered = r.offered_value() or 0.0
    return (r.value("throughput.accepted_sends_per_s") or 0.0) >= KEEP_UP * offered


def _offered(r: RunData) -> Num | Calc:
    o = r.offered()
    if o is None:
        raise ValueError(f"{r.rid}: no offered load")
    return o


def _saturation(rs: list[RunData]) -> Text:
    """What one stage's series shows: where it stopped keeping up, if it did."""
    who = _who(rs[0])
    accepted = "throughput.accepted_sends_per_s"
    if all(not r.value("sends.acked_ok") and r.value("sends.acked_error") for r in rs):
        return [
            who,
            " accepted nothing: all ",
            rs[-1].num("sends.acked_error"),
            " sends of its largest run were refused with an error",
        ]
    fail = next((r for r in rs if not _keeps_up(r)), None)
    if fail is None:
        last = rs[-1]
        return [
            who,
            " kept up at every load tried, up to ",
            _offered(last),
            " sends/s (accepted ",
            last.num(accepted),
            "/s)",
        ]
    text: Text = [who]
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
    text += [*join([_saturation(rs) for rs in ordered], sep="; ", last="; "), "."]
    tops = [rs[-1] for rs in ordered if rs[-1].value("latency_ms.push.p99") is not None]
    if tops:
        text += [" At each one's highest load, p99 push latency was "]
        text += join([[_who(r), " ", r.num("latency_ms.push.p99"), " ms"] for r in tops])
        text.append(".")
    text += _missing([r for rs in ordered for r in rs], all_runs, "with a known load here")
    return text


# ---------------------------------------------------------------- anomalies

ANOMALY_PANELS = (
    ("lost", "lost deliveries"),
    ("duplicated", "duplicated deliveries"),
    ("unexpected", "unexpected deliveries"),
    ("seq_backwards", "pushes with seq going backwards"),
    ("order_disagreements", "message pairs members saw in opposite order"),
    ("fifo_violations", "sender FIFO violations"),
)


def anomalies(runs: Sequence[RunData], out: Path) -> list[Item]:
    """Bars of every anomaly count per stage and fault, one figure per scenario."""
    items: list[Item] = []
    for scenario, sruns in _by_scenario(runs).items():
        faults = sorted({r.fault_label for r in sruns}, key=lambda f: (f != NO_FAULT, f))
        cells = {f: _pick([r for r in sruns if r.fault_label == f]) for f in faults}
        widest = max(len(rs) for rs in cells.values())
        width = 0.8 / widest
        fig = new_figure(12, 6.4)
        axes = fig.subplots(2, 3)
        for ax, (key, title) in zip(axes.flat, ANOMALY_PANELS, strict=True):
            top = 0.0
            for i, f in enumerate(faults):
                rs = cells[f]
                for j, r in enumerate(rs):
                    v = r.value(f"anomalies.{key}") or 0.0
                    top = max(top, v)
                    x = i + (j - (len(rs) - 1) / 2) * width
                    sim = r.kind == "sim"
                    ax.bar(
                        x,
                        v,
                        width * 0.9,
                        color=stage_color(r.stage),
                        hatch=KIND_HATCH[r.kind],
                        edgecolor="#333333" if sim else "white",
                        linewidth=0.5,
                    )
                    label = f"{v:,.0f}"
                    ax.annotate(
                        label,
                        (x, v),
                        xytext=(0, 2),
                        textcoords="offset points",
                        ha="center",
                        va="bottom",
                        fontsize=7 if v else 6.5,
                        color="#222222" if v else "#999999",
                        rotation=90 if len(label) > 3 else 0,
                    )
            ax.set_xticks(range(len(faults)), faults, fontsize=8)
            ax.set_xlim(-0.5, len(faults) - 0.5)
            ax.set_title(title, fontsize=9.5)
            ax.set_ylim(0, max(top * 1.3, 1))
            ax.yaxis.get_major_locator().set_params(integer=True)
            ax.grid(axis="x", visible=False)
        for ax in axes[:, 0]:
            ax.set_ylabel("count in the run")
        shown = [r for rs in cells.values() for r in rs]
        handles: list[Any] = [Patch(color=stage_color(s), label=s) for s in _stages(shown)]
        if any(r.kind == "sim" for r in shown):
            handles.append(
                Patch(facecolor="white", edgecolor="#333333", hatch="//", label="simulated")
            )
        fig.legend(handles=handles, loc="outside right upper")
        fig.suptitle(f"Anomalies per stage and fault, scenario {scenario}", fontweight="bold")
        file = f"anomalies-{_slug(scenario)}.png"
        save(fig, out / file)
        title = f"Loss, duplicates and ordering: {scenario}"
        items.append(Figure("faults", title, file, _anomaly_caption(cells, runs)))
    return items


def _loss(r: RunData) -> Text:
    return [
        _who(r),
        " lost ",
        r.num("deliveries.lost"),
        " of ",
        r.num("deliveries.expected"),
        " expected deliveries",
    ]


KAFKA_FAULTS = ("kafka-loss", "broker-down", "broker-kill")


def _stores_before_publish(stage: str) -> bool:
    """Whether the stage stores a message before it publishes it (its stage.toml)."""
    return stage in stages.names() and stages.stage(stage).stores_before_publish


def _stored_first(fault: str, clean: list[RunData]) -> Text:
    """Why a stage that lost Kafka publishes lost no message, when the numbers show it."""
    if not any(k in fault for k in KAFKA_FAULTS):
        return []
    text: Text = []
    for r in clean:
        if _stores_before_publish(r.stage) and r.value("deliveries.sync"):
            text += [f"{_who(r)} stores each message before it publishes it, so what Kafka "
                     "lost cost pushes, not messages: ", r.num("deliveries.sync"),
                     " deliveries came by sync. "]  # fmt: skip
    return text


def _anomaly_caption(cells: dict[str, list[RunData]], all_runs: Sequence[RunData]) -> Text:
    text: Text = []
    for f, rs in cells.items():
        lossy = [r for r in rs if r.value("deliveries.lost")]
        clean = [r for r in rs if not r.value("deliveries.lost")]
        parts = [_loss(r) for r in lossy]
        if clean:
            parts.append(["no loss for ", *join([[_who(r)] for r in clean])])
        head = "Without a fault, " if f == NO_FAULT else f"Under {f}: "
        text += [head, *join(parts, sep="; ", last="; "), ". "]
        text += _stored_first(f, clean)
    if NO_FAULT not in cells:
        text.append("No run of this scenario was free of faults. ")
    elif len(cells) == 1:
        text.append("No run of this scenario had a fault. ")
    others: list[Text] = []
    for f, rs in cells.items():
        where = "" if f == NO_FAULT else f" under {f}"
        for r in rs:
            for key, title in ANOMALY_PANELS[1:]:
                if r.value(f"anomalies.{key}"):
                    others.append([_who(r), where, f", {title}: ", r.num(f"anomalies.{key}")])
    if not others:
        text.append("No stage showed a duplicate, an unexpected delivery or an ordering violation.")
    else:
        text += ["Other anomalies: ", *join(others[:6], sep="; ", last="; ")]
        text.append("; all others zero." if len(others) <= 6 else "; more in the main table.")
    text += _missing([r for rs in cells.values() for r in rs], all_runs, "for this scenario")
    return text


# ---------------------------------------------------------------- time series around faults

# Rows of the time-series figure: (y label, scale, ((series key, legend label, colour), ...)).
_SERIES_ROWS: tuple[tuple[str, str, tuple[tuple[str, str, str], ...]], ...] = (
    (
        "sends/s",
        "linear",
        (
            ("sends", "attempted", "#bbbbbb"),
            ("acked_ok", "acked ok", "#2ca02c"),
            ("acked_error", "acked with error", "#d62728"),
        ),
    ),
    (
        "deliveries/s",
        "linear",
        (
            ("deliveries_push", "by push", "#1f77b4"),
            ("deliveries_sync", "by sync", "#9467bd"),
            ("lost", "lost (at send time)", "#d62728"),
        ),
    ),
    (
        "push latency (ms, log)",
        "log",
        (("latency_p50_ms", "p50", "#1f77b4"), ("latency_p99_ms", "p99", "#ff7f0e")),
    ),
    (
        "events/s",
        "linear",
        (
            ("connects", "connects", "#2ca02c"),
            ("disconnects", "disconnects", "#d62728"),
            ("syncs", "syncs", "#9467bd"),
        ),
    ),
)


def fault_timeseries(runs: Sequence[RunData], out: Path) -> list[Item]:
    """Per-second series of the runs with a fault window, the window shaded; one figure per
    scenario, fault and kind, one column per stage."""
    items: list[Item] = []
    groups: dict[tuple[str, str, str], list[RunData]] = {}
    for r in runs:
        if r.windows() and r.metrics.get("series", {}).get("t"):
            groups.setdefault((r.scenario, r.fault_label, r.kind), []).append(r)
    if not groups:
        return [Note("faults", ["No run in this report had a timed fault window."])]
    for (scenario, fault, kind), group in groups.items():
        rs = _pick(group)
        fig = new_figure(3.3 * len(rs) + 1.7, 8.4)
        axes = fig.subplots(len(_SERIES_ROWS), len(rs), sharex="col", sharey="row", squeeze=False)
        for c, r in enumerate(rs):
            _plot_series(list(axes[:, c]), r)
        for row, (ylabel, _scale, _lines) in enumerate(_SERIES_ROWS):
            axes[row, 0].set_ylabel(ylabel)
            handles, labels = axes[row, 0].get_legend_handles_labels()
            if row == 0:
                handles.append(Patch(color="#d62728", alpha=0.15))
                labels.append("fault window")
            axes[row, -1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        kind_text = "simulated" if kind == "sim" else "real"
        fig.suptitle(
            f"Around the fault: {fault}, scenario {scenario}, {kind_text} runs", fontweight="bold"
        )
        file = f"timeseries-{_slug(scenario, fault, kind)}.png"
        save(fig, out / file)
        title = f"Around the fault: {fault}, {scenario} ({kind_text})"
        items.append(Figure("faults", title, file, _series_caption(rs)))
    return items


def _window(r: RunData, f: dict[str, Any]) -> tuple[float, float]:
    """A fault's window in seconds since the start; an open end runs to the series' end."""
    end = f.get("end_rel")
    return float(f["start_rel"]), float(end) if end is not None else r.metrics["series"]["t"][
        -1
    ] + 1.0


def _plot_series(col: Sequence[Axes], r: RunData) -> None:
    s = r.metrics["series"]
    t = np.asarray(s["t"], dtype=np.float64)
    lo, hi = float(t[0]), float(t[-1]) + 1
    wins = [_window(r, f) for _i, f in r.windows()]
    if hi - lo > 120:  # a long run: zoom in on its windows
        lo = max(lo, min(a for a, _b in wins) - 30)
        hi = min(hi, max(b for _a, b in wins) + 60)
    for ax, (_ylabel, scale, lines) in zip(col, _SERIES_ROWS, strict=True):
        for key, label, color in lines:
            if key not in s:
                continue
            y = np.asarray([np.nan if v is None else v for v in s[key]], dtype=np.float64)
            if key == "lost":
                ax.bar(t + 0.5, y, width=0.9, color=color, alpha=0.7, label=label)
            else:
                width = 2.6 if key == "sends" else 1.3
                ax.step(t + 1, y, where="pre", color=color, linewidth=width, label=label)
        for a, b in wins:
            ax.axvspan(a, b, color="#d62728", alpha=0.12, linewidth=0)
        ax.set_yscale(scale)
        if scale == "log":
            plain_log_axis(ax.yaxis)
        ax.set_xlim(lo, hi)
    col[0].set_title(f"{r.stage} {r.kind}", color=stage_color(r.stage))
    col[-1].set_xlabel("seconds since the run started")


def _indices(r: RunData, a: float, b: float) -> list[int]:
    """Series indices of the seconds that overlap [a, b)."""
    t = r.metrics["series"]["t"]
    return list(range(max(math.floor(a) - t[0], 0), min(math.ceil(b) - t[0], len(t))))


def _series_caption(rs: list[RunData]) -> Text:
    text: Text = []
    peaks: list[Text] = []
    for r in rs:
        i, f = r.windows()[0]
        a, b = _window(r, f)
        win = _indices(r, a, b)
        s = r.metrics["series"]
        text += [f"{_who(r)}: {f.get('kind')} from ", r.num(f"faults[{i}].start_rel"), " s"]
        if f.get("end_rel") is not None:
            text += [" to ", r.num(f"faults[{i}].end_rel"), " s"]
        else:
            text += [" to the end"]
        if win:
            ok = s["acked_ok"]
            low = min(win, key=lambda k: (ok[k], k))
            prev = win[0] - 1
            if prev >= 0 and ok[low] >= KEEP_UP * ok[prev]:
                text += [
                    "; accepted sends held at ",
                    r.num(f"series.acked_ok[{low}]"),
                    "/s or more (",
                    r.num(f"series.acked_ok[{prev}]"),
                    "/s the second before)",
                ]
            else:
                text += [
                    "; accepted sends fell to ",
                    r.num(f"series.acked_ok[{low}]"),
                    "/s in second ",
                    r.num(f"series.t[{low}]"),
                ]
                if prev >= 0:
                    text += [" (from ", r.num(f"series.acked_ok[{prev}]"), "/s the second before)"]
            errors = Calc("sum", tuple(r.num(f"series.acked_error[{k}]") for k in win))
            if errors.value:
                text += [", and ", errors, " acks in the window were errors"]
            lost = Calc("sum", tuple(r.num(f"series.lost[{k}]") for k in win))
            if lost.value:
                text += ["; ", lost, " deliveries of messages sent in the window were lost ("]
                text += [r.num("deliveries.lost"), " in the whole run)"]
            else:
                text += ["; no message sent in the window lost a delivery"]
        text.append(". ")
        if len(r.windows()) > 1:
            text.append("Its later fault windows are shaded too; the Runs section lists them. ")
        p99 = s.get("latency_p99_ms") or []
        after = [k for k in range(win[0] if win else 0, len(p99)) if p99[k] is not None]
        if after:
            top = max(after, key=lambda k: (p99[k], -k))
            peaks.append(
                [
                    _who(r),
                    " ",
                    r.num(f"series.latency_p99_ms[{top}]"),
                    " ms in second ",
                    r.num(f"series.t[{top}]"),
                ]
            )
    if peaks:
        text += ["Highest per-second p99 push latency from the fault's start on: ", *join(peaks)]
        text.append(".")
    return text


# ---------------------------------------------------------------- simulated vs real

# Parameters only one kind of run has, which say nothing about the load.
_NOT_MATCHED = frozenset({"seed", "calibration", "processes"})


def matches(sim: RunData, real: RunData) -> bool:
    """Same stage, scenario and fault, and equal on every parameter both runs record."""
    if (sim.stage, sim.scenario, sim.fault_label) != (real.stage, real.scenario, real.fault_label):
        return False
    common = (set(sim.params) & set(real.params)) - _NOT_MATCHED
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
    floor = _latency_floor(both)
    for s, r in pairs:
        _plot_latency(ax_cdf, None, r, floor)
        _plot_latency(ax_cdf, None, s, floor)
    _cdf_axes(ax_cdf, floor, "CDF: real solid, simulated dashed")
    _legend(ax_cdf, _stages(both), ("real", "sim"), loc="lower right")
    lo, hi = math.inf, 0.0
    for s, r in pairs:
        for (name, _q), marker in zip(_PERCENTILES[:3], ("o", "s", "^"), strict=True):
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
    fig.suptitle("Simulated vs real: same stage, scenario, fault and parameters", fontweight="bold")
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


FIGURE_BUILDERS: tuple[Callable[[Sequence[RunData], Path], list[Item]], ...] = (
    architecture,
    latency_cdfs,
    throughput,
    anomalies,
    fault_timeseries,
    sim_vs_real,
)
