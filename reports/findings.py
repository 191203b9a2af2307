"""The findings at the top of the report: where the runs come from (machine, date, git
commit, broker), which stage loses what under which fault, where each stage stops
keeping up with the offered load, and how far the model is from the real runs.

Every number is a fragment traced to a run's metrics.json (`reports.numbers`); the
provenance (names, dates, a commit) is shown as identifiers.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reports.figures.capacity import capacity_findings, in_ladder
from reports.figures.common import who
from reports.figures.simreal import matches
from reports.figures.throughput import saturation
from reports.numbers import Calc, Code, Text, join
from reports.rundata import NO_FAULT, RunData, stage_key

_REPO = Path(__file__).resolve().parents[1]


def findings(runs: Sequence[RunData]) -> list[Text]:
    """The findings, one item each."""
    items = [provenance(runs)]
    items += fault_findings(runs)
    items += saturation_findings(runs)
    items += capacity_findings(runs)
    items += model_findings(runs)
    return items


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{head} with local changes" if dirty else head


def _broker(runs: Sequence[RunData]) -> str:
    seen: list[str] = []
    for r in runs:
        b = r.manifest.get("broker")
        if r.kind != "real" or not isinstance(b, dict):
            continue
        text = f"{b.get('name')} {b.get('version') or ''}".strip()
        text += f", {b.get('brokers')} node(s)"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen) or "none (no real run used a broker)"


def provenance(runs: Sequence[RunData]) -> Text:
    # A simulated run's clock is its own, so the date is the real runs' (else the build's).
    starts = [float(r.manifest["started_at"]) for r in runs
              if r.kind == "real" and r.manifest.get("started_at")]  # fmt: skip
    stamp = min(starts) if starts else dt.datetime.now(dt.UTC).timestamp()
    when = dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine: dict[str, Any] = next(
        (r.manifest["machine"] for r in runs if isinstance(r.manifest.get("machine"), dict)), {}
    )
    where = ", ".join(
        str(machine[k]) for k in ("hostname", "platform", "processor") if machine.get(k)
    )
    if machine.get("cpu_count"):
        where += f", {machine['cpu_count']} CPUs"
    return [
        "Real runs from " if starts else "Simulated runs only, report built ", Code(when),
        " on ", Code(where or "an unknown machine"),
        ", code at commit ", Code(_commit()), "; broker of the real v3/v4 runs: ",
        Code(_broker(runs)), ".",
    ]  # fmt: skip


def fault_findings(runs: Sequence[RunData]) -> list[Text]:
    """Per fault run (the real ones; simulated where none is real): what was lost,
    refused or never answered."""
    faulted = [r for r in runs if r.fault_label != NO_FAULT and r.kind == "real"]
    faulted = faulted or [r for r in runs if r.fault_label != NO_FAULT]
    faulted.sort(key=lambda r: (r.kind != "real", stage_key(r.stage), r.fault_label, r.rid))
    out: list[Text] = []
    for r in faulted:
        text: Text = [f"{who(r)} under {r.fault_label}: "]
        parts: list[Text] = []
        if r.value("deliveries.lost"):
            parts.append(
                [
                    r.num("deliveries.lost"),
                    " of ",
                    r.num("deliveries.expected"),
                    " expected deliveries lost",
                ]
            )
        if r.value("sends.acked_error"):
            parts.append([r.num("sends.acked_error"), _s(r, "sends.acked_error", " send"),
                          " refused with an error"])  # fmt: skip
        if r.value("sends.never_acked"):
            parts.append([r.num("sends.never_acked"), _s(r, "sends.never_acked", " send"),
                          " never acked"])  # fmt: skip
        if r.value("deliveries.sync"):
            one = r.value("deliveries.sync") == 1
            parts.append([r.num("deliveries.sync"), " delivery" if one else " deliveries",
                          " recovered by sync"])  # fmt: skip
        if not any(r.value(k) for k in ("deliveries.lost", "sends.acked_error")):
            parts.insert(0, ["nothing lost or refused"])
        text += join(parts, sep="; ", last="; ")
        text += ["; p99 push latency ", r.num("latency_ms.push.p99"), " ms."]
        out.append(text)
    return out


def _s(r: RunData, key: str, noun: str) -> str:
    return noun if r.value(key) == 1 else noun + "s"


def saturation_findings(runs: Sequence[RunData]) -> list[Text]:
    """Per stage and kind, from its fault-free runs: where it stopped keeping up (capacity
    ladders have findings of their own)."""
    series: dict[tuple[str, str, str], list[RunData]] = {}
    for r in sorted(runs, key=lambda r: (r.offered_value() or 0.0, r.rid)):
        if r.fault_label == NO_FAULT and r.offered_value() is not None and not in_ladder(r):
            series.setdefault((r.scenario, r.stage, r.kind), []).append(r)
    keys = sorted(series, key=lambda k: (k[2] != "real", stage_key(k[1]), k[0]))
    return [[f"Scenario {k[0]}: ", *saturation(series[k]), "."] for k in keys]


def model_findings(runs: Sequence[RunData]) -> list[Text]:
    """Per stage, over its real runs with a simulated twin: the range of the model's
    latency and throughput as a multiple of the real run's."""
    sims = [r for r in runs if r.kind == "sim"]
    reals = [r for r in runs if r.kind == "real"]
    pairs = [(s, r) for r in reals for s in sims if matches(s, r)]
    if not pairs:
        return [["No simulated run here has a real twin (same stage, scenario, fault and load)."]]
    by_stage: dict[str, list[tuple[RunData, RunData]]] = {}
    for s, r in pairs:
        by_stage.setdefault(r.stage, []).append((s, r))
    items: list[Text] = []
    for stage in sorted(by_stage, key=stage_key):
        mine = by_stage[stage]
        text: Text = [f"Model vs real, {stage}, over its twin pairs: simulated "]
        parts = [
            [label, " ", *_ratio_range(mine, key)]
            for label, key in (
                ("p50", "latency_ms.push.p50"),
                ("p99", "latency_ms.push.p99"),
                ("accepted sends/s", "throughput.accepted_sends_per_s"),
            )
        ]
        items.append([*text, *join(parts), " the real run's."])
    return items


def _ratio_range(pairs: list[tuple[RunData, RunData]], key: str) -> Text:
    ratios = [(Calc("ratio", (s.num(key), r.num(key)), "x")) for s, r in pairs]
    known = sorted((c for c in ratios if c.value is not None), key=lambda c: float(c.value or 0))
    if not known:
        return ["unknown"]
    if len(known) == 1 or known[0].value == known[-1].value:
        return [known[0]]
    return ["from ", known[0], " to ", known[-1]]
