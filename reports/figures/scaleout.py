"""The scale-out figure: each stage's simulated knee against its number of processes
(`imlab sim --sweep`, `sim.sweep`), from the sweep's `sweep.json` (a plain dict, so the
report reads it without the simulator). One panel per swept dimension; v2's knee (one
server) is the flat reference line; a point whose first saturated resource is a shared
service (Redis, Kafka, the database) is drawn hollow and the first such is labelled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reports.style import new_figure, plain_log_axis, save, stage_color, stage_marker, suptitle

__all__ = ["scaleout_figure"]

SHARED = {"redis": "Redis", "kafka": "Kafka", "postgres": "DB"}
AXIS = {"nodes": "nodes (v3 servers; v4/v5 gateways = workers)", "servers": "v3 servers",
        "gateways": "gateways", "workers": "workers"}  # fmt: skip


def scaleout_figure(sweep: dict[str, Any], path: Path) -> Path:
    """Draw `sweep` (sweep.json's content) into `path` (PNG)."""
    points = sweep["points"]
    ref = next((p for p in points if p["dim"] == "reference"), None)
    dims = list(dict.fromkeys(p["dim"] for p in points if p["dim"] != "reference")) or ["nodes"]
    fig = new_figure(4.6 * len(dims) + 0.4, 3.9)
    axes = fig.subplots(1, len(dims), squeeze=False)[0]
    for ax, dim in zip(axes, dims, strict=True):
        mine = [p for p in points if p["dim"] == dim]
        counts = sorted({p["count"] for p in mine}) or [1]
        if ref is not None and ref["knee"].get("knee"):
            k = float(ref["knee"]["knee"])
            ax.axhline(k, color=stage_color("v2"), ls="--", lw=1.2, label=f"v2 (1 server) {k:,.0f}")
        for stage in sorted({p["stage"] for p in mine}):
            series = sorted((p for p in mine if p["stage"] == stage), key=lambda p: p["count"])
            xs = [p["count"] for p in series if p["knee"].get("knee")]
            ys = [float(p["knee"]["knee"]) for p in series if p["knee"].get("knee")]
            if not xs:
                continue
            color, marker = stage_color(stage), stage_marker(stage)
            held = ""
            if dim == "gateways":
                held = f" ({series[0]['workers']} workers)"
            elif dim == "workers":
                held = f" ({series[0]['front']} gateways)"
            ax.plot(xs, ys, color=color, marker=marker, ms=0, lw=1.6, label=f"{stage}{held}")
            labelled = False
            for p in series:
                if not p["knee"].get("knee"):
                    continue
                x, y = p["count"], float(p["knee"]["knee"])
                shared = p.get("saturated") in SHARED
                ax.plot([x], [y], marker=marker, color=color, ms=6,
                        mfc="white" if shared else color, mew=1.4)  # fmt: skip
                if shared and not labelled:
                    ax.annotate(f"{SHARED[p['saturated']]}", (x, y), textcoords="offset points",
                                xytext=(4, -11), fontsize=7.5, color=color)  # fmt: skip
                    labelled = True
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts)
        ax.set_xticklabels([str(c) for c in counts])
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
        ax.set_xlabel(AXIS.get(dim, dim))
        ax.set_ylabel("knee, msgs/s offered (simulated)")
        ax.legend(loc="upper left")
    suptitle(
        fig,
        "Knee against node count, simulated: each process on its own core; hollow = "
        "a shared service (Redis, Kafka, DB) saturated first",
    )
    return save(fig, path)
