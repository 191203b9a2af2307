"""`imlab calibrate`: derive a stage model's parameters from real runs of `imlab load`.

From each run folder (one stage, two or more loads) it reads the manifest (the
scenario, load and topology, the send window, the CPU every process used during it,
sampled by the load tool, with the processes' names) and the clients' histories (send
lag, ack and push latencies). Then:

- `client_send_lag`: mean and cv of `t - intended` over the sends of the lowest load
  (above it the modelled Locust processes do their own queueing);
- per kind of process (`front`: servers or gateways; `worker`; `redis`; `kafka`: the
  broker; `postgres`; `loadgen`: Locust), one factor on its costs: each run's twin is
  simulated with the current costs, and the real CPU of the kind is fitted against the
  model's as a line over the runs. Its slope multiplies every cost of that kind
  (`SCALED`: the ratios inside a kind, a push against a request, keep their defaults;
  a v3 server consumes on its own loop, so there `worker_record` is a front cost), its
  intercept is the kind's idle burn (`idle_cpu`: pings, timers, the JVM). With one run,
  or loads too close together, the factor is real over model CPU (an upper bound);
- the machine: `machine_cores` is the cores' worth the runs' processes got together
  when the machine was saturated (`capacity`, from a run past the knee), else the core
  count; with `loadgen_processes` it lets the model reproduce this machine
  (`sim.engine.Machine`, `imlab sim --this-machine`);
- on Apache Kafka the broker answers a waiting fetch at once (`kafka_long_poll`);
- `client_link`: the one-way client<->server delay is what the CPU figures leave
  unexplained; it is fitted by simulating the runs (those of the lowest-load run's
  scenario) until the simulated median ack latencies match the real ones on average.
  Push latency, tails, throughput and the knee are never fitted: they are what the
  model predicts and benchmarks/fidelity.py compares.

Everything not derivable from the runs keeps its default (see `sim.params`).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imlab import stages
from imlab.experiment.faults import parse_faults
from reports.history import HISTORY_GLOB, load_manifest
from sim.params import DEFAULTS, Dist, Params

__all__ = ["CalibrationError", "RunFacts", "calibrate", "read_run", "twin_options"]


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
    nodes: int = 1
    workers: int = 0
    broker: str = ""
    outside: float = 0.0  # cores' worth processes outside the run used meanwhile
    started: float = 0.0  # the send window's start, epoch seconds
    machine: dict[str, Any] | None = None
    cores: int = 0
    cpu_by_kind: dict[str, float] | None = None  # cores' worth over the window, by kind

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
    spec = (man.get("cluster") or {}).get("spec") or {}
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
        nodes=max(1, sum(1 for n in procs if not str(n).startswith("worker"))),
        workers=int(spec.get("workers") or 0),
        outside=float(man.get("other_processes_cpu_pct") or 0.0) / 100.0,
        started=float(started),
        machine=man.get("machine"),
        broker=str(((man.get("cluster") or {}).get("broker") or {}).get("name") or ""),
        cores=int((man.get("machine") or {}).get("cpu_count") or 0),
        cpu_by_kind=_cpu_by_kind(man, pcts) if pcts else None,
    )


def _cpu_by_kind(man: dict[str, Any], pcts: dict[str, float]) -> dict[str, float]:
    """Cores' worth of CPU each kind of process used over the send window: `front`
    (servers, gateways), `worker`, `kafka` (the broker nodes), `postgres` (v5's server
    and its backends, known by name), `redis` (Redis and its sentinels), `loadgen`
    (Locust). A run recorded before the sampler kept names cannot tell PostgreSQL from
    Redis: both are then `services`."""
    cluster = man.get("cluster") or {}
    names = ((man.get("stage_cpu") or {}).get("names")) or {}
    kind_of: dict[str, str] = {}
    for name, info in (cluster.get("processes") or {}).items():
        if isinstance(info, dict):
            kind_of[str(info.get("pid"))] = "worker" if str(name).startswith("worker") else "front"
    for node in (cluster.get("broker") or {}).get("nodes") or []:
        kind_of[str(node.get("pid"))] = "kafka"
    rest = "services" if cluster.get("postgres") and not names else "redis"
    out: dict[str, float] = {}
    for pid, pct in pcts.items():
        kind = kind_of.get(pid, "postgres" if names.get(pid) == "postgres" else rest)
        out[kind] = out.get(kind, 0.0) + pct / 100.0
    gen = ((man.get("load_generator") or {}).get("cpu") or {}).get("total_pct_mean")
    if isinstance(gen, int | float):
        out["loadgen"] = float(gen) / 100.0
    return out


SCALED: dict[str, tuple[str, ...]] = {
    "front": (
        "node_request",
        "node_push",
        "node_connect",
        "node_sync_message",
        "node_relay",
        "token_verify",
    ),
    "worker": ("worker_record",),
    "redis": ("redis_op", "redis_pipelined_op"),
    "kafka": ("kafka_record",),
    "postgres": ("db_query", "db_transaction"),
    "loadgen": ("loadgen_event",),
}
"""The costs each kind of process's CPU is made of: one factor per kind is fitted, so
the ratios inside a kind (a push against a request) keep their defaults."""


@dataclass
class KindFit:
    """One kind of process: the factor on its costs and its idle burn per process."""

    kind: str
    factor: float
    idle: float  # cores' worth one process burns with no load
    how: str


def _twin_cpu(run: RunFacts, params: Params) -> tuple[dict[str, float], dict[str, int]]:
    """Cores' worth of CPU the model of `run` spends per kind over the send window (on
    a core each: raw work, no waiting for a core), and how many processes of each kind."""
    from sim.run import SimOptions, build_model

    opts = SimOptions(
        stage=run.stage,
        scenario=run.scenario,
        users=run.users,
        rate=run.rate,
        duration=min(run.duration, 6.0),
        group_size=run.group_size,
        servers=run.nodes,
        workers=run.workers or None,
        check=False,
        quiet=True,
    )
    p = params.with_(machine_cores=0, loadgen_processes=max(1, run.loadgen_processes))
    model, _sc, _traced = build_model(opts, p, parse_faults(""), None)
    kinds: dict[str, list[Any]] = {"front": [n.cpu for n in model.nodes]}
    kinds["worker"] = [n.cpu for n in model.workers]
    for name, server in model.services().items():
        kinds.setdefault(name, []).append(server)
    kinds["loadgen"] = list(model.loadgens)
    if "services" in (run.cpu_by_kind or {}) and "postgres" in kinds:  # told apart by name only
        kinds["services"] = kinds.pop("postgres") + kinds.pop("redis", [])
    marks: list[tuple[float, dict[str, float]]] = []

    def mark(m: Any) -> None:
        if m.send_start <= m.env.now <= m.send_end:
            marks.append((m.env.now, {k: sum(x.busy for x in v) for k, v in kinds.items()}))

    model.run(progress=mark)
    counts = {k: len(v) for k, v in kinds.items() if v}
    if len(marks) < 2:
        return {}, counts
    (t0, b0), (t1, b1) = marks[0], marks[-1]
    return {k: (b1[k] - b0[k]) / (t1 - t0) for k in counts}, counts


def _fit_kind(kind: str, xs: list[float], ys: list[float], count: int) -> KindFit:
    """Real cores (ys) against the model's (xs) over the runs: the slope is the factor
    on the kind's costs and the intercept its idle burn, where the runs' loads differ
    enough (20 %); otherwise real over model (an upper bound: idle burn included)."""
    x, y = np.array(xs), np.array(ys)
    if len(xs) >= 2 and float(np.ptp(x)) > 0.2 * float(x.mean()):
        slope, intercept = (float(v) for v in np.polyfit(x, y, 1))
        if slope > 0:
            idle = max(0.0, intercept) / max(1, count)
            return KindFit(
                kind,
                slope,
                idle,
                f"slope over {len(xs)} runs ({float(x.min()):.3f}-{float(x.max()):.3f} "
                f"model cores against {float(y.min()):.3f}-{float(y.max()):.3f} real), "
                f"idle {idle * 100:.1f} % of a core per process",
            )
    factor = float(y.sum() / x.sum())
    return KindFit(kind, factor, 0.0, f"real over model CPU of {len(xs)} run(s), idle included")


def fit_kinds(runs: list[RunFacts], base: Params) -> list[KindFit]:
    """One `KindFit` per kind of process that both the runs and their models show."""
    per_run = [_twin_cpu(r, base) for r in runs]
    fits = []
    kinds = sorted({k for cpu, _ in per_run for k in cpu} & set(SCALED))
    for kind in kinds:
        pairs = [
            (cpu[kind], (r.cpu_by_kind or {})[kind], counts[kind])
            for r, (cpu, counts) in zip(runs, per_run, strict=True)
            if kind in cpu and kind in (r.cpu_by_kind or {}) and cpu[kind] > 0
        ]
        if pairs:
            xs, ys, ns = zip(*pairs, strict=True)
            fits.append(_fit_kind(kind, list(xs), list(ys), max(ns)))
    return fits


def apply_fits(base: Params, fits: list[KindFit], *, consumes_on_front: bool) -> Params:
    """`base` with every fitted kind's costs multiplied by its factor, and the idle
    burns in `idle_cpu` (a v3 server consumes on its own loop: there `worker_record`
    is the front's cost)."""
    changes: dict[str, Any] = {}
    idle = dict(base.idle_cpu)
    for fit in fits:
        names = SCALED[fit.kind]
        if fit.kind == "front" and consumes_on_front:
            names = (*names, "worker_record")
        for name in names:
            d: Dist = getattr(base, name)
            changes[name] = Dist(d.mean * fit.factor, d.cv)
        idle[fit.kind] = round(fit.idle, 5)
    return base.with_(**changes, idle_cpu=idle)


def calibrate(
    run_dirs: Sequence[Path | str],
    *,
    base: Params = DEFAULTS,
    fit_link: bool = True,
    capacity: float | None = None,
) -> Params:
    """Parameters fitted to the real runs in `run_dirs` (see the module docstring);
    `capacity` is the machine's cores' worth when known from a saturated run
    (`machine_capacity`), else the machine's core count is taken."""
    runs = [read_run(d) for d in run_dirs]
    if not runs:
        raise CalibrationError("no run folders given")
    # The send lag of the lowest load: above it the modelled Locust processes queue the
    # sends themselves, and a lag fitted there would count that queueing twice.
    low = min(runs, key=lambda r: r.users * r.rate)
    lag_mean, lag_cv = low.lag_mean, low.lag_cv
    stages_seen = sorted({r.stage for r in runs})
    if len(stages_seen) > 1:
        raise CalibrationError(
            f"runs of several stages ({', '.join(stages_seen)}): calibrate one stage at a time"
        )
    info = stages.stage(stages_seen[0])
    apache_kafka = any(r.broker == "kafka" for r in runs)
    base = base.with_(
        kafka_long_poll=apache_kafka or base.kafka_long_poll,
        client_send_lag=Dist(lag_mean, round(lag_cv, 3)),
        loadgen_processes=max(r.loadgen_processes for r in runs) or 1,
    )
    fits = fit_kinds(runs, base)
    params = apply_fits(base, fits, consumes_on_front=info.back is None and "kafka" in info.needs)
    cores = capacity or float(max(r.cores for r in runs))
    source: dict[str, Any] = {
        "how": "imlab calibrate",
        "stage": stages_seen[0],
        "runs": [str(r.path) for r in runs],
        "cores": cores,
        "machine": runs[0].machine,
        "measured_at": time.strftime(
            "%Y-%m-%d %H:%M UTC", time.gmtime(min(r.started for r in runs))
        ),
        "broker": sorted({r.broker for r in runs if r.broker}),
        "loadgen_processes": params.loadgen_processes,
        "kinds": {
            f.kind: {"factor": round(f.factor, 4), "idle": round(f.idle, 5), "how": f.how}
            for f in fits
        },
    }
    params = params.with_(machine_cores=cores)
    if fit_link:
        ref = min(runs, key=lambda r: r.users * r.rate)
        like = [r for r in runs if (r.stage, r.scenario) == (ref.stage, ref.scenario)]
        like = sorted(like, key=lambda r: r.users * r.rate)[:2]  # away from any queueing
        link, acks = _fit_link(like, params)
        params = params.with_(client_link=Dist(link, base.client_link.cv))
        if "postgres" in info.needs and link <= 1e-5:
            # Acks slower than the real ones with no link left to remove: the guessed
            # commit flush is what is left to fit (v5 acks after its transaction commits).
            flush, acks = _fit_link(like, params, "db_fsync", per_ack=1.0)
            params = params.with_(db_fsync=Dist(flush, base.db_fsync.cv))
            source["db_fsync"] = f"fitted to the ack medians: {flush * 1e6:.0f} µs"
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
            "cpu_by_kind": r.cpu_by_kind,
        }
        for r in runs
    ]
    return params.with_(source=source)


def machine_capacity(run_dirs: Sequence[Path | str]) -> float | None:
    """The most CPU (cores' worth) the processes of any of these runs got together, with
    what processes outside them took: what the machine gives when saturated. None when
    the runs have no CPU samples."""
    runs = [read_run(d) for d in run_dirs]
    totals = [sum((r.cpu_by_kind or {}).values()) + r.outside for r in runs]
    return max(totals) if totals and max(totals) > 0 else None


def twin_options(real_dir: Path | str, **overrides: Any) -> Any:
    """The `SimOptions` of a real run's twin: the same stage, scenario, load, churn,
    faults, seed, drain and topology, on this machine's shared cores with the CPU that
    processes outside the run took meanwhile; `overrides` (run_dir, params, ...) win."""
    from sim.run import SimOptions

    facts = read_run(real_dir)
    p = load_manifest(Path(real_dir)).get("params") or {}
    churn = p.get("churn") or {}
    opts: dict[str, Any] = {
        "stage": facts.stage,
        "scenario": facts.scenario,
        "users": facts.users,
        "rate": facts.rate,
        "duration": facts.duration,
        "group_size": facts.group_size,
        "faults": str(p.get("faults") or ""),
        "seed": int(p.get("seed") or 1),
        "servers": facts.nodes,
        "workers": facts.workers or None,
        "max_drain": float(p.get("max_drain") or 15.0),
        "settle": float(p.get("settle") or 1.5),
        "spawn_rate": float(p.get("spawn_rate") or 0.0),
        "this_machine": True,
        "outside_cpu": facts.outside,
        "quiet": True,
    }
    if churn:
        opts["churn"] = float(churn["fraction"]) if churn.get("fraction") else None
        opts["churn_online"] = float(churn.get("online_mean") or 2.0)
        opts["churn_offline"] = float(churn.get("offline_mean") or 1.0)
        opts["churn_silent"] = float(churn.get("silent_fraction") or 0.5)
    opts.update(overrides)
    return SimOptions(**opts)


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
        servers=run.nodes,
        workers=run.workers or None,
        outside_cpu=run.outside,
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


def _fit_link(
    runs: list[RunFacts], params: Params, name: str = "client_link", per_ack: float = 2.0
) -> tuple[float, list[float]]:
    """The delay `name` (the one-way client link by default) whose simulated ack medians
    match the runs' real ones on average (a secant search: each median grows by about
    `per_ack` of the delay: two link crossings, one commit flush), at least 10 µs."""
    cv = getattr(params, name).cv
    targets = [r.ack_p50 for r in runs]

    def sims(x: float) -> list[float]:
        p = params.with_(**{name: Dist(x, cv)})
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
        x = max(lo, x - err * scale / per_ack)
        acks = sims(x)
        err = error(acks)
        if abs(err) < 0.01:
            break
    return x, acks
