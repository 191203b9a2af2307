"""`imlab calibrate`: derive a stage model's parameters from real runs of `imlab load`.

From each run folder it reads the manifest (the scenario and load, the send
window, the CPU the stage's processes and the Locust processes used during it,
sampled by the load tool) and the clients' histories (send lag, ack and push
latencies, how many messages and receipts there were). Then:

- `client_send_lag`: mean and cv of `t - intended` over all sends;
- `node_request` and `node_push`: the server processes' CPU seconds split over
  requests and pushed connections by least squares across the runs (with a single
  fan-out the split keeps the default ratio of the two and fits the scale);
- `redis_op`: Redis CPU seconds per command (v2 runs only, where Redis is the one
  process besides the servers);
- `loadgen_event`, `loadgen_processes`: Locust CPU seconds per client event and the
  number of Locust processes, so a run of this machine can be reproduced;
- `client_link`: the one-way client<->server delay is what the CPU figures leave
  unexplained; it is fitted by simulating the runs (those of the lowest-load run's
  stage and scenario) until the simulated median ack latencies match the real ones
  on average (relative errors summing to zero). One delay cannot match them all:
  on this VM the real medians *fall* as load rises (busier processes and virtual
  CPUs wake up faster), while the model's only rise. Push latency is not fitted: it
  stays a prediction that the tests compare with the real one.

Everything not derivable from the runs keeps its default (see `sim.params`).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imlab import stages
from imlab.experiment.faults import parse_faults
from reports.history import HISTORY_GLOB, load_manifest
from sim.params import DEFAULTS, Dist, Params

__all__ = ["CalibrationError", "RunFacts", "calibrate", "read_run"]


class CalibrationError(ValueError):
    """The run folders cannot be calibrated from (the message says why)."""


@dataclass
class RunFacts:
    """What one real run tells the calibration."""

    path: Path
    stage: str
    scenario: str
    users: int
    rate: float
    duration: float
    group_size: int
    window: float
    sends: int
    acked_ok: int
    receipts: int  # every recv, the sender's own echo included: one emit each
    self_receipts: int
    syncs: int
    lag_mean: float
    lag_cv: float
    ack_p50: float
    push_p50: float
    node_cpu_s: float | None
    infra_cpu_s: float | None
    loadgen_cpu_s: float | None
    loadgen_processes: int

    @property
    def requests(self) -> int:
        return self.sends + self.syncs

    @property
    def redis_ops(self) -> int:
        per_send = 2 if self.scenario in ("group", "burst", "large-group") else 1
        return self.sends * per_send + 2 * self.syncs


def _cpu_seconds(pcts: dict[str, float], pids: set[str], window: float, inside: bool) -> float:
    return sum(v for pid, v in pcts.items() if (pid in pids) == inside) / 100.0 * window


def read_run(run_dir: Path | str) -> RunFacts:
    """The facts of one `imlab load` run folder."""
    path = Path(run_dir)
    man = load_manifest(path)
    if man.get("source") == "sim" or man.get("kind") == "sim":
        raise CalibrationError(f"{path}: a simulated run; calibrate from real runs")
    params = man.get("params") or {}
    started, ended = man.get("started_at"), man.get("ended_at")
    if not isinstance(started, int | float) or not isinstance(ended, int | float):
        raise CalibrationError(f"{path}: the manifest has no send window")
    window = float(ended) - float(started)
    intended: dict[str, float] = {}
    lags: list[float] = []
    acks: list[float] = []
    pushes: list[float] = []
    receipts = self_receipts = syncs = acked_ok = 0
    files = sorted(path.glob(HISTORY_GLOB))
    if not files:
        raise CalibrationError(f"{path}: no history files")
    for f in files:
        with f.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                ev = e.get("ev")
                if ev == "send" and "intended" in e:
                    intended[e["msg"]] = float(e["intended"])
                    lags.append(max(0.0, float(e["t"]) - float(e["intended"])))
                elif ev == "ack":
                    if e.get("ok"):
                        acked_ok += 1
                    if e.get("msg") in intended:
                        acks.append(float(e["t"]) - intended[e["msg"]])
                elif ev == "recv":
                    receipts += 1
                    if e.get("user") == e.get("sender"):
                        self_receipts += 1
                    elif e.get("via", "push") == "push" and e.get("msg") in intended:
                        pushes.append(float(e["t"]) - intended[e["msg"]])
                elif ev == "sync":
                    syncs += 1
    if not lags or not acks:
        raise CalibrationError(f"{path}: no sends with acks in the histories")
    cpu = man.get("stage_cpu") or {}
    pcts = {str(k): float(v) for k, v in (cpu.get("per_process_pct_mean") or {}).items()}
    procs = ((man.get("cluster") or {}).get("processes")) or {}
    node_pids = {str(p.get("pid")) for p in procs.values() if isinstance(p, dict)}
    gen = (man.get("load_generator") or {}).get("cpu") or {}
    lag_mean = statistics.fmean(lags)
    lag_sd = statistics.pstdev(lags)
    return RunFacts(
        path=path,
        stage=str(man.get("stage")),
        scenario=str(man.get("scenario")),
        users=int(params.get("users") or 0),
        rate=float(params.get("rate") or 0.0),
        duration=float(params.get("duration") or window),
        group_size=int(params.get("group_size") or 8),
        window=window,
        sends=len(intended),
        acked_ok=acked_ok,
        receipts=receipts,
        self_receipts=self_receipts,
        syncs=syncs,
        lag_mean=lag_mean,
        lag_cv=lag_sd / lag_mean if lag_mean > 0 else 0.0,
        ack_p50=statistics.median(acks),
        push_p50=statistics.median(pushes) if pushes else math.nan,
        node_cpu_s=_cpu_seconds(pcts, node_pids, window, True) if pcts else None,
        infra_cpu_s=_cpu_seconds(pcts, node_pids, window, False) if pcts else None,
        loadgen_cpu_s=float(gen["total_pct_mean"]) / 100.0 * window
        if "total_pct_mean" in gen
        else None,
        loadgen_processes=int((man.get("load_generator") or {}).get("processes") or 0),
    )


def _fit_node_costs(runs: list[RunFacts], base: Params) -> tuple[float, float, str]:
    """(node_request mean, node_push mean, how) from the runs' server CPU.

    A server burns CPU while idle (pings, timers) and gets cheaper per message as its
    loop gets busier, so rates are fitted with an intercept where the runs allow it:
    CPU/s = idle + a·requests/s + b·pushes/s over runs with different fan-outs, else
    CPU/s = idle + a·(requests/s + r·pushes/s) with the default ratio r = b/a over
    runs at different loads, else CPU over work (an upper bound)."""
    rows = [
        (r.requests / r.window, r.receipts / r.window, r.node_cpu_s / r.window)
        for r in runs
        if r.node_cpu_s
    ]
    if not rows:
        return base.node_request.mean, base.node_push.mean, "defaults (no CPU samples)"
    ratio = base.node_push.mean / base.node_request.mean
    q = np.array([x[0] for x in rows])
    p = np.array([x[1] for x in rows])
    c = np.array([x[2] for x in rows])
    fanouts = {round(pi / max(qi, 1e-9), 1) for qi, pi in zip(q, p, strict=True)}
    if len(rows) >= 3 and len(fanouts) > 1:
        coef = np.linalg.lstsq(np.column_stack([np.ones_like(q), q, p]), c, rcond=None)[0]
        idle, a, b = (float(v) for v in coef)
        if a > 0 and b > 0 and idle >= 0:
            return a, b, f"rates over {len(rows)} runs: idle {idle * 100:.2f}% + requests + pushes"
    x = q + ratio * p
    if len(rows) >= 2 and float(np.ptp(x)) > 0.2 * float(x.mean()):
        slope, idle = (float(v) for v in np.polyfit(x, c, 1))
        if slope > 0:
            return (
                slope,
                ratio * slope,
                (
                    f"slope over {len(rows)} runs at different loads (idle {idle * 100:.2f}%), "
                    f"push/request ratio kept at {ratio:.3g}"
                ),
            )
    a = float(c.sum() / x.sum())
    return a, ratio * a, f"CPU over work, push/request ratio kept at {ratio:.3g}"


def _fit_loadgen(runs: list[RunFacts]) -> tuple[float, str]:
    """Locust CPU per client event (a send with its ack, or a receipt): the slope over
    runs at different event rates where there are such runs, else CPU over events."""
    xs = np.array([(r.sends + r.receipts) / r.window for r in runs])
    ys = np.array([(r.loadgen_cpu_s or 0.0) / r.window for r in runs])
    if len(runs) >= 2 and float(np.ptp(xs)) > 0.2 * float(xs.mean()):
        slope, idle = (float(v) for v in np.polyfit(xs, ys, 1))
        if slope > 0:
            return slope, f"slope over {len(runs)} runs (idle {idle * 100:.2f}%)"
    return float(ys.sum() / xs.sum()), f"CPU over events of {len(runs)} run(s)"


def _fit_redis(runs: list[RunFacts]) -> tuple[float, str]:
    """Redis CPU per command. Redis burns a little CPU when idle (its timers), so with
    runs at different command rates the slope of CPU against rate is taken;
    otherwise CPU over commands (an upper bound)."""
    xs = [r.redis_ops / r.window for r in runs]
    ys = [(r.infra_cpu_s or 0.0) / r.window for r in runs]
    if len({round(x) for x in xs}) > 1:
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        if slope > 0:
            idle = my - slope * mx
            return slope, (
                f"slope of Redis CPU over {len(runs)} v2 runs at {min(xs):.0f}-{max(xs):.0f} "
                f"commands/s (idle {idle * 100:.2f}% of a core)"
            )
    ops = sum(r.redis_ops for r in runs)
    cpu = sum(r.infra_cpu_s or 0.0 for r in runs)
    return cpu / ops, f"Redis CPU over {ops} commands of {len(runs)} v2 run(s)"


def calibrate(
    run_dirs: list[Path | str], *, base: Params = DEFAULTS, fit_link: bool = True
) -> Params:
    """Parameters fitted to the real runs in `run_dirs` (see the module docstring)."""
    runs = [read_run(d) for d in run_dirs]
    if not runs:
        raise CalibrationError("no run folders given")
    n_sends = sum(r.sends for r in runs)
    lag_mean = sum(r.lag_mean * r.sends for r in runs) / n_sends
    lag_cv = sum(r.lag_cv * r.sends for r in runs) / n_sends
    a, b, how = _fit_node_costs(runs, base)
    changes: dict[str, Any] = {
        "client_send_lag": Dist(lag_mean, round(lag_cv, 3)),
        "node_request": Dist(a, base.node_request.cv),
        "node_push": Dist(b, base.node_push.cv),
    }
    source: dict[str, Any] = {
        "how": "imlab calibrate",
        "runs": [str(r.path) for r in runs],
        "node_costs": how,
    }
    # Redis's cost per command is read off stages whose only service is Redis (v2):
    # there every Redis command is the server's.
    v2 = [r for r in runs if stages.stage(r.stage).needs == {"redis"} and r.infra_cpu_s]
    if v2:
        op, how_redis = _fit_redis(v2)
        changes["redis_op"] = Dist(op, base.redis_op.cv)
        source["redis_op"] = how_redis
    gen = [r for r in runs if r.loadgen_cpu_s]
    if gen:
        per_event, how_gen = _fit_loadgen(gen)
        changes["loadgen_event"] = Dist(per_event, base.loadgen_event.cv)
        changes["loadgen_processes"] = max(r.loadgen_processes for r in gen) or 1
        source["loadgen_event"] = how_gen
    params = base.with_(**changes)
    if fit_link:
        ref = min(runs, key=lambda r: r.users * r.rate)
        like = [r for r in runs if (r.stage, r.scenario) == (ref.stage, ref.scenario)]
        link, acks = _fit_link(like, params)
        params = params.with_(client_link=Dist(link, base.client_link.cv))
        source["client_link"] = "fitted so that the simulated ack medians match on average: " + (
            "; ".join(
                f"{r.path.name} {sim * 1000:.3f} ms against real {r.ack_p50 * 1000:.3f} ms"
                for r, sim in zip(like, acks, strict=True)
            )
        )
    source["runs_facts"] = [
        {
            "run": str(r.path),
            "stage": r.stage,
            "scenario": r.scenario,
            "users": r.users,
            "rate": r.rate,
            "sends": r.sends,
            "receipts": r.receipts,
            "ack_p50_ms": round(r.ack_p50 * 1000, 3),
            "push_p50_ms": round(r.push_p50 * 1000, 3),
            "node_cpu_s": r.node_cpu_s,
            "infra_cpu_s": r.infra_cpu_s,
            "loadgen_cpu_s": r.loadgen_cpu_s,
        }
        for r in runs
    ]
    return params.with_(source=source)


def simulate_like(run: RunFacts, params: Params, *, duration: float | None = None) -> Any:
    """Simulate the load of a real run (no history written); returns the model."""
    from sim.run import SimOptions, build_model

    opts = SimOptions(
        stage=run.stage,
        scenario=run.scenario,
        users=run.users,
        rate=run.rate,
        duration=duration or run.duration,
        group_size=run.group_size,
        check=False,
        quiet=True,
    )
    model, _sc, _traced = build_model(opts, params, parse_faults(""), None)
    model.run()
    return model


def _sim_ack_p50(run: RunFacts, params: Params) -> float:
    model = simulate_like(run, params, duration=min(run.duration, 6.0))
    p50 = model.counts.ack_latency.quantile(0.5)
    return math.nan if p50 is None else p50


def _fit_link(runs: list[RunFacts], params: Params) -> tuple[float, list[float]]:
    """The one-way client link delay whose simulated ack medians match the runs' real
    ones on average (a secant search: each median grows by about two link delays)."""
    cv = params.client_link.cv
    targets = [r.ack_p50 for r in runs]

    def sims(x: float) -> list[float]:
        p = params.with_(client_link=Dist(x, cv))
        return [_sim_ack_p50(r, p) for r in runs]

    def error(acks: list[float]) -> float:
        return statistics.fmean((a - t) / t for a, t in zip(acks, targets, strict=True))

    scale = statistics.fmean(targets)
    lo = 1e-5
    acks = sims(lo)
    err = error(acks)
    if err >= 0:
        return lo, acks
    x = lo
    for _ in range(6):
        x = max(lo, x - err * scale / 2.0)
        acks = sims(x)
        err = error(acks)
        if abs(err) < 0.01:
            break
    return x, acks
