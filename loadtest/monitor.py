"""Watching a load run from outside: CPU use of the load generator and of the stage's
processes (sampled with psutil), the Locust processes' status summed, and the verdict
whether the generator rather than the server was the limit (docs/PROTOCOL.md section 8).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

# A Locust process runs its users on gevent, one core at most: near that, it is the limit.
GENERATOR_BUSY_PCT = 90.0
MACHINE_BUSY_PCT = 80.0
OTHER_BUSY_PCT = 25.0
LATE_S = 0.1
# On a machine the generator shares with the stage, a Locust process well short of a whole
# core can already be the limit (measured: 61% per process, sends 205 ms late at the median,
# the stage at 50%; an independent generator then saw the same stage 60x faster). So when
# half the sends are late while no stage process is near a core, the generator is blamed.
GENERATOR_SHARED_PCT = 50.0
STAGE_IDLE_PCT = 70.0


@dataclass
class _Sample:
    t: float
    machine: float
    groups: dict[str, dict[int, float]]  # group -> pid -> % of one core


@dataclass
class CpuSampler:
    """Samples CPU use (in % of one core) of named process groups once per `interval`."""

    groups: dict[str, Callable[[], Iterable[int]]]
    interval: float = 1.0
    samples: list[_Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self.names: dict[int, str] = {}  # pid -> executable name, for telling services apart
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def start(self) -> CpuSampler:
        psutil.cpu_percent(None)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _pct(self, pid: int) -> float | None:
        proc = self._procs.get(pid)
        try:
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
                self.names[pid] = proc.name()
                proc.cpu_percent(None)  # primes the counter; the next call measures
                return None
            return float(proc.cpu_percent(None))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._procs.pop(pid, None)
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            groups: dict[str, dict[int, float]] = {}
            for name, pids in self.groups.items():
                try:
                    current = list(pids())
                except (psutil.Error, OSError):
                    current = []
                got = {pid: pct for pid in current if (pct := self._pct(pid)) is not None}
                groups[name] = got
            self.samples.append(_Sample(time.time(), psutil.cpu_percent(None), groups))

    def summary(self, start: float, end: float) -> dict[str, Any]:
        """Mean and max CPU of each group (sum of its processes) and of its busiest
        process, over the samples in [start, end]; the machine's in % of all cores."""
        window = [s for s in self.samples if start <= s.t <= end + self.interval]
        out: dict[str, Any] = {"samples": len(window), "interval_s": self.interval}
        if not window:
            return out
        machine = [s.machine for s in window]
        out["machine_pct"] = {"mean": _mean(machine), "max": round(max(machine), 1)}
        cores = psutil.cpu_count() or 1
        others = [
            max(0.0, s.machine * cores - sum(sum(g.values()) for g in s.groups.values()))
            for s in window
        ]
        out["other_processes_pct_mean"] = _mean(others)
        for name in self.groups:
            totals = [sum(s.groups.get(name, {}).values()) for s in window]
            per_pid: dict[int, list[float]] = {}
            for s in window:
                for pid, pct in s.groups.get(name, {}).items():
                    per_pid.setdefault(pid, []).append(pct)
            busiest = max((_mean(v) for v in per_pid.values()), default=0.0)
            out[name] = {
                "processes": len(per_pid),
                "total_pct_mean": _mean(totals),
                "total_pct_max": round(max(totals), 1),
                "busiest_process_pct_mean": busiest,
                "per_process_pct_mean": {str(pid): _mean(v) for pid, v in per_pid.items()},
                "names": {str(pid): self.names.get(pid, "?") for pid in per_pid},
            }
        return out


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 1) if values else 0.0


def process_tree(pid: int | None) -> list[int]:
    """`pid` and all its descendants (empty once it is gone)."""
    if pid is None:
        return []
    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.Error:
        return []


# ---------------------------------------------------------------- status files


def total_status(statuses: list[dict[str, Any]]) -> dict[str, Any]:
    """Counters summed over the Locust processes (events by kind under `events`)."""
    total: dict[str, Any] = {"processes": len(statuses), "events": {}}
    for st in statuses:
        for key, value in st.items():
            if key == "events":
                for ev, n in value.items():
                    total["events"][ev] = total["events"].get(ev, 0) + n
            elif key in ("lag_max_s", "lag_max_all_s"):
                total[key] = max(total.get(key, 0.0), value)
            elif isinstance(value, int | float) and key not in ("pid", "worker", "t"):
                total[key] = total.get(key, 0) + value
    return total


# ---------------------------------------------------------------- schedule lag


def schedule_lag(history_files: Iterable[Path]) -> dict[str, Any]:
    """How far sends went out behind their scheduled (`intended`) time."""
    lags: list[float] = []
    for path in history_files:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if '"ev":"send"' not in line:
                    continue
                try:
                    e = json.loads(line)
                    lags.append(float(e["t"]) - float(e["intended"]))
                except (ValueError, KeyError, TypeError):
                    continue
    if not lags:
        return {"sends": 0}
    lags.sort()
    n = len(lags)

    def pct(q: float) -> float:
        return round(lags[min(n - 1, int(q * n))] * 1000.0, 2)

    return {
        "sends": n,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(lags[-1] * 1000.0, 2),
        "late_fraction": round(sum(1 for x in lags if x > LATE_S) / n, 4),
        "late_threshold_ms": LATE_S * 1000.0,
    }


# ---------------------------------------------------------------- verdict


def generator_verdict(
    cpu: dict[str, Any],
    lag: dict[str, Any],
    status: dict[str, Any] | None = None,
    planned: int | None = None,
    tool: str = "Locust",
) -> dict[str, Any]:
    """Was the load generator (`tool`'s processes), not the stage, the limit of this run?"""
    gen = cpu.get("load_generator") or {}
    busiest = float(gen.get("busiest_process_pct_mean", 0.0))
    machine = float((cpu.get("machine_pct") or {}).get("mean", 0.0))
    p99_lag = float(lag.get("p99_ms", 0.0)) / 1000.0
    p50_lag = float(lag.get("p50_ms", 0.0)) / 1000.0
    behind = p99_lag > LATE_S
    stage = cpu.get("stage") or {}
    stage_busiest = stage.get("busiest_process_pct_mean")
    reasons: list[str] = []
    if busiest >= GENERATOR_BUSY_PCT:
        reasons.append(
            f"a {tool} process averaged {busiest:.0f}% of a core (one core is its ceiling)"
        )
    if behind and busiest >= 0.75 * GENERATOR_BUSY_PCT:
        reasons.append(
            f"sends fell behind schedule (p99 lag {p99_lag * 1000:.0f} ms) "
            f"while the generator was busy ({busiest:.0f}%)"
        )
    elif (
        p50_lag > LATE_S
        and busiest >= GENERATOR_SHARED_PCT
        and stage_busiest is not None
        and float(stage_busiest) < STAGE_IDLE_PCT
    ):
        reasons.append(
            f"half the sends went out over {p50_lag * 1000:.0f} ms behind schedule while no "
            f"stage process was busy (busiest {float(stage_busiest):.0f}% of a core) and the "
            f"{tool} processes used {busiest:.0f}% of a core each on shared cores: "
            "the generator could not keep its schedule"
        )
    st = status or {}
    if st.get("stopped_early") or st.get("surplus"):
        reasons.append(
            f"{tool} stopped {st.get('stopped_early', 0)} users mid-run and started "
            f"{st.get('surplus', 0)} beyond the plan: what those users missed is the "
            "generator's doing, not the stage's"
        )
    if planned is not None and st.get("started", 0) < planned:
        reasons.append(
            f"{tool} started only {st.get('started', 0)} of the {planned} planned users: "
            "what the others would have received counts as lost"
        )
    notes: list[str] = []
    if st.get("connect_failed"):
        notes.append(f"{st['connect_failed']} users never connected")
    if behind and not reasons:
        notes.append(
            f"sends fell behind schedule (p99 lag {p99_lag * 1000:.0f} ms) with the generator "
            "not busy: acks came slowly, the stage was the limit"
        )
    if machine >= MACHINE_BUSY_PCT:
        notes.append(
            f"the machine's cores were {machine:.0f}% busy: generator and stage competed for them"
        )
    other = float(cpu.get("other_processes_pct_mean", 0.0))
    if other >= OTHER_BUSY_PCT:
        notes.append(
            f"processes outside this run used {other:.0f}% of a core meanwhile: "
            "the stage and the generator had that much less CPU"
        )
    return {
        "other_processes_pct": other,
        "generator_limited": bool(reasons),
        "reasons": reasons,
        "notes": notes,
        "behind_schedule": behind,
        "busiest_generator_process_pct": busiest,
        "busiest_stage_process_pct": stage_busiest,
        "machine_pct_mean": machine,
    }
