"""Anomaly bars: every anomaly count per stage and fault, one figure per scenario."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.patches import Patch

from imlab import stages
from reports.figures.common import (
    Figure,
    Item,
    by_scenario,
    missing_stages,
    pick,
    slug,
    stage_names,
    who,
)
from reports.numbers import Text, join
from reports.rundata import NO_FAULT, RunData
from reports.style import KIND_HATCH, new_figure, save, stage_color, suptitle

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
    for scenario, sruns in by_scenario(runs).items():
        faults = sorted({r.fault_label for r in sruns}, key=lambda f: (f != NO_FAULT, f))
        cells = {f: pick([r for r in sruns if r.fault_label == f]) for f in faults}
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
        handles: list[Any] = [Patch(color=stage_color(s), label=s) for s in stage_names(shown)]
        if any(r.kind == "sim" for r in shown):
            handles.append(
                Patch(facecolor="white", edgecolor="#333333", hatch="//", label="simulated")
            )
        fig.legend(handles=handles, loc="outside right upper")
        suptitle(fig, f"Anomalies per stage and fault, scenario {scenario}")
        file = f"anomalies-{slug(scenario)}.png"
        save(fig, out / file)
        title = f"Loss, duplicates and ordering: {scenario}"
        items.append(Figure("faults", title, file, _anomaly_caption(cells, runs)))
    return items


def _loss(r: RunData) -> Text:
    return [
        who(r),
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
            text += [f"{who(r)} stores each message before it publishes it, so what Kafka "
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
            parts.append(["no loss for ", *join([[who(r)] for r in clean])])
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
                    others.append([who(r), where, f", {title}: ", r.num(f"anomalies.{key}")])
    if not others:
        text.append("No stage showed a duplicate, an unexpected delivery or an ordering violation.")
    else:
        text += ["Other anomalies: ", *join(others[:6], sep="; ", last="; ")]
        text.append("; all others zero." if len(others) <= 6 else "; more in the main table.")
    text += missing_stages([r for rs in cells.values() for r in rs], all_runs, "for this scenario")
    return text
