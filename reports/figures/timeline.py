"""Fault timelines: per-second series of the runs with a fault window, the window shaded."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Patch

from reports.figures.common import KEEP_UP, Figure, Item, Note, pick, slug, who
from reports.numbers import Calc, Text, join
from reports.rundata import RunData
from reports.style import new_figure, plain_log_axis, save, stage_color, suptitle

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
        rs = pick(group)
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
        suptitle(fig, f"Around the fault: {fault}, scenario {scenario}, {kind_text} runs")
        file = f"timeseries-{slug(scenario, fault, kind)}.png"
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


def _sending(r: RunData, a: float, b: float) -> list[int]:
    """`_indices` of [a, b) cut to the seconds in which sends were attempted: after the
    send window nothing is sent, and that drop is not the fault's doing."""
    sends = r.metrics["series"].get("sends") or []
    return [k for k in _indices(r, a, b) if k < len(sends) and (sends[k] or 0) > 0]


def _accepted(r: RunData, win: list[int]) -> Text:
    """What accepted sends/s did in the window's sending seconds, against the second before."""
    ok = r.metrics["series"]["acked_ok"]
    low = min(win, key=lambda k: (ok[k], k))
    high = max(win, key=lambda k: (ok[k], -k))
    prev = win[0] - 1
    ok_low: Text = [r.num(f"series.acked_ok[{low}]"), "/s"]
    ranged: Text = ["; accepted sends ranged from ", *ok_low, " to ",
                    r.num(f"series.acked_ok[{high}]"), "/s"]  # fmt: skip
    if prev < 0:
        return [*ranged, " (the window opens with the run: no second before it)"]
    if not ok[prev]:
        if not ok[high]:
            return ["; no send was accepted in the window, nor in the second before it"]
        return [*ranged, " (none the second before)"]
    before: Text = [r.num(f"series.acked_ok[{prev}]"), "/s the second before"]
    if ok[low] >= KEEP_UP * ok[prev]:
        return ["; accepted sends held at ", *ok_low, " or more (", *before, ")"]
    return ["; accepted sends fell to ", *ok_low, " in second ", r.num(f"series.t[{low}]"),
            " (from ", *before, ")"]  # fmt: skip


def _series_caption(rs: list[RunData]) -> Text:
    text: Text = []
    peaks: list[Text] = []
    for r in rs:
        i, f = r.windows()[0]
        a, b = _window(r, f)
        win = _sending(r, a, b)
        s = r.metrics["series"]
        text += [f"{who(r)}: {f.get('kind')} from ", r.num(f"faults[{i}].start_rel"), " s"]
        if f.get("end_rel") is not None:
            text += [" to ", r.num(f"faults[{i}].end_rel"), " s"]
        else:
            text += [" to the end"]
        if win:
            text += _accepted(r, win)
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
                    who(r),
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
