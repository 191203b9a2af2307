"""`imlab sim`: one simulated run from options to a judged run folder.

Builds the scenario and the stage model, runs it with progress on the terminal,
writes the run folder the way `imlab load` does (manifest, history, metrics.json
from the same checker) and adds what only a simulation knows: exact counts for
every user, the wall time and the simulator's speed.

Large runs are traced, not recorded whole: every message of every user goes
through the model, but only the conversations in the trace (all of them when the
run is small) are written to the history, complete (every member's sends, acks,
receipts, syncs, connects). The checker's figures in metrics.json are therefore
exact for the traced conversations; `metrics.json["sim"]["population"]` holds the
model's exact counts for all users (`sim.population`: sends, acks by error, deliveries
by push and sync, lost) and population latency percentiles from a 1%-wide histogram.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from imlab import stages
from imlab.experiment.faults import RUN_LONG, FaultPlan, parse_faults
from imlab.experiment.runfolder import new_run_dir
from imlab.experiment.scenarios import PlanError
from sim.history import History, JsonlRecorder, RunWriter
from sim.params import CALIBRATION_DIR, Params, load_params
from sim.population import SAMPLED_NOTE, BusyWindow, population_figures, population_table
from sim.sample import load_population, sample_scenario
from sim.scenario import ChurnSpec, SimScenario, build_scenario
from sim.stage import StageModel

__all__ = [
    "SimOptions",
    "SimResult",
    "model_class",
    "models",
    "refusal_warning",
    "run_sim",
    "trace_plan",
]

TRACE_EVENTS = 1_500_000
"""Default budget of history events: about 15 s of checker time (it reads ~120k events/s)."""


def model_class(stage: str) -> type[StageModel]:
    """The stage's model, as its stage.toml names it (`module:Class`)."""
    info = stages.stage(stage)
    if not info.model:
        raise ValueError(f"stage {stage} has no simulation model")
    module, _, name = info.model.partition(":")
    cls: type[StageModel] = getattr(importlib.import_module(module), name)
    return cls


def models() -> tuple[str, ...]:
    """The stages that have a model."""
    return tuple(name for name, info in stages.registry().items() if info.model)


@dataclass
class SimOptions:
    """What `imlab sim` takes; the scenario options mean what they mean for `imlab load`."""

    stage: str
    scenario: str = "group"
    users: int = 40
    rate: float = 1.0
    duration: float = 30.0
    group_size: int = 8
    churn: float | None = None
    churn_online: float = 2.0
    churn_offline: float = 1.0
    churn_silent: float = 0.5
    faults: str = ""
    seed: int = 1
    servers: int | None = None  # client-facing processes (default: the stage's, stage.toml)
    gateways: int | None = None  # the same, by v4's name for them
    workers: int | None = None  # the processes behind them (v4 workers)
    broker: str = "kafka"  # the broker modelled: kafka (durable) or tansu (memory only)
    brokers: int = 1  # Kafka nodes (3: one broker's fault costs a failover, no data)
    kafka_leaders: int = 1  # Kafka brokers leading partitions, one CPU each (sim.kafka)
    redis_shards: int = 1  # Redis Cluster shards, one single-threaded server each (sim.store)
    params: str | None = None  # parameter file (imlab calibrate); None: the stage's defaults
    this_machine: bool = False  # share this machine's cores as the calibration runs did
    outside_cpu: float = 0.0  # with it: cores' worth other processes took (a real run's twin)
    trace: str = "auto"  # auto | all | number of conversations
    sample: float | None = None  # simulate this fraction of conversations; the rest in aggregate
    trace_events: int = TRACE_EVENTS
    max_drain: float = 30.0
    settle: float = 1.5
    spawn_rate: float = 0.0  # users connected per second; 0: as `imlab load` (users/2, >= 10)
    run_dir: Path | None = None
    runs_root: Path | None = None
    check: bool = True
    quiet: bool = False


@dataclass
class SimResult:
    run_dir: Path
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    summary: str


def params_from(opts: SimOptions) -> str:
    """Where a run's parameters came from, in words."""
    if opts.params:
        return opts.params
    path = CALIBRATION_DIR / f"{opts.stage}.json"
    if not path.exists():
        return "built-in defaults (sim.params.DEFAULTS)"
    where = (
        "on this machine's shared cores with the load tool modelled"
        if opts.this_machine
        else "each process on a core of its own"
    )
    return f"{opts.stage}'s calibration (sim/calibration/{path.name}), {where}"


def node_counts(opts: SimOptions) -> tuple[int, int]:
    """(client-facing nodes, workers) as `imlab load` would start them."""
    info = stages.stage(opts.stage)
    front = (opts.gateways or opts.servers or info.front.count) if info.front.scalable else 1
    back = 0 if info.back is None else (opts.workers or info.back.count)
    return front, back


def trace_plan(sc: SimScenario, spec: str, budget: int, seed: int) -> list[int]:
    """The conversations whose histories are written: all, a number, or (auto) as many
    as fit the event budget, chosen at random (seeded) and closed over shared members."""
    n = len(sc.convs)
    if spec == "all":
        k = n
    elif spec == "auto":
        per_conv = sum(len(c.members) * (len(c.members) + 2) for c in sc.convs) / max(1, n)
        per_conv *= sc.rate * sc.duration
        k = n if per_conv * n <= budget else max(1, int(budget // max(per_conv, 1.0)))
    else:
        try:
            k = int(spec)
        except ValueError:
            raise ValueError(f"--trace takes auto, all or a number, not {spec!r}") from None
        k = max(0, min(n, k))
    if k >= n:
        return list(range(n))
    order = list(range(n))
    random.Random(f"{seed}:trace").shuffle(order)
    chosen = set(order[:k])
    while True:  # a traced member's other conversations are traced too (dm user 0)
        extra = {ci for c in list(chosen) for u in sc.convs[c].members for ci in sc.user_convs[u]}
        if extra <= chosen:
            return sorted(chosen)
        chosen |= extra


class _Progress:
    def __init__(self, out: TextIO, quiet: bool) -> None:
        self.out = out
        self.quiet = quiet
        self.tty = out.isatty()
        self.began = time.perf_counter()
        self._last = 0.0

    def __call__(self, model: StageModel) -> None:
        if self.quiet:
            return
        wall = time.perf_counter() - self.began
        if wall - self._last < (1.0 if self.tty else 10.0):
            return
        self._last = wall
        c = model.counts.c
        now = model.env.now
        end = f"{model.send_end:.0f}s+drain" if model.send_end < float("inf") else "(connecting)"
        line = (
            f"[sim {now:7.1f}s of {end} | wall {wall:6.1f}s | "
            f"x{now / wall if wall else 0:5.1f} real time] sends {c.get('sends', 0):,} "
            f"ok {c.get('acked_ok', 0):,} err {c.get('acked_error', 0):,} "
            f"recv {c.get('deliveries_push', 0) + c.get('deliveries_sync', 0):,} "
            f"rss {_rss_mb():,.0f}MB"
        )
        if c.get("acked_error", 0) > c.get("acked_ok", 0):
            line = "!! MOST SENDS FAIL " + line
        if self.tty:
            print("\r" + line.ljust(118)[:118], end="", file=self.out, flush=True)
        else:
            print(line, file=self.out, flush=True)

    def say(self, text: str) -> None:
        if not self.quiet:
            if self.tty:
                print(file=self.out)
            print(text, file=self.out, flush=True)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def refusal_warning(population: dict[str, Any]) -> str:
    """A loud line when most sends were not acked ok, naming the busiest resources: a run
    whose every send failed is a run of an overloaded or broken topology, not a result."""
    sends = population["sends"]
    attempted = sends["attempted"]
    if not attempted or sends["acked_ok"] >= 0.5 * attempted:
        return ""
    busiest = sorted(population["classes"].items(), key=lambda kv: kv[1]["max"], reverse=True)[:3]
    load = ", ".join(f"{name} {c['max']:.0%}" for name, c in busiest)
    codes = f" {sends['acked_error_by_code']}" if sends["acked_error_by_code"] else ""
    return (
        f"!!! ONLY {sends['acked_ok']:,} OF {attempted:,} SENDS ACKED OK "
        f"({sends['acked_error']:,} errors{codes}, "
        f"{sends['never_acked']:,} never acked): the run is overloaded or broken, its "
        f"latencies mean nothing. Busiest over the run: {load} (utilisation; near or "
        "above 100 % is saturated: add --gateways/--workers/--redis-shards/--kafka-leaders)"
    )


def build_model(
    opts: SimOptions, params: Params, plan: FaultPlan, history: History | None
) -> tuple[StageModel, SimScenario, list[int]]:
    cls = model_class(opts.stage)
    churn = opts.churn
    if churn is None:
        churn = plan.churn or (1.0 if opts.scenario == "churn" else 0.0)
    sc = build_scenario(
        opts.scenario,
        opts.users,
        rate=opts.rate,
        duration=opts.duration,
        group_size=opts.group_size,
        churn=ChurnSpec(churn, opts.churn_online, opts.churn_offline, opts.churn_silent),
        seed=opts.seed,
        features=set(cls.features),
    )
    population = sc.users
    spawn_rate = opts.spawn_rate or max(10.0, sc.users / 2.0)
    scale = 1.0
    if opts.sample is not None:
        sc, scale = sample_scenario(sc, opts.sample, opts.seed)
        spawn_rate /= scale  # the sample connects over the same seconds as everybody
    if params.loadgen_processes > 0:
        traced = list(range(len(sc.convs)))  # a reproduced real run: everybody is traced
    else:
        traced = trace_plan(sc, opts.trace, opts.trace_events, opts.seed)
    nodes, workers = node_counts(opts)
    params = dataclasses.replace(
        params, kafka_durable=opts.broker != "tansu", kafka_brokers=opts.brokers
    )
    if opts.outside_cpu:
        params = dataclasses.replace(params, machine_outside=opts.outside_cpu)
    model = cls(
        sc,
        params,
        plan,
        nodes=nodes,
        workers=workers,
        traced=traced,
        history=history,
        seed=opts.seed,
        max_drain=opts.max_drain,
        settle=opts.settle,
        spawn_rate=spawn_rate if opts.sample is not None else opts.spawn_rate,
        redis_shards=opts.redis_shards,
        kafka_leaders=opts.kafka_leaders,
    )
    if opts.sample is not None:
        model.population = population
        model.scale = scale
        services = model.services()  # Redis, the broker's CPU, v5's PostgreSQL
        loaded = load_population(
            [n.cpu for n in (*model.nodes, *model.workers)] + list(services.values()),
            scale,
            1.0 / (sc.users * sc.rate),
            opts.seed,
        )
        for node, server in zip((*model.nodes, *model.workers), loaded, strict=False):
            node.cpu = server
        for name, server in zip(services, loaded[-len(services) :], strict=True):
            model.replace_service(name, server)
        consumers = [n.consumer for n in (*model.nodes, *model.workers) if n.consumer is not None]
        parts = sum(len(c.assignment) for c in consumers)
        for consumer in consumers:  # one record a send, over the group's partitions
            share = len(consumer.assignment) / parts if parts else 0.0
            consumer.background_rate = (scale - 1.0) * sc.users * sc.rate * share
            consumer.background_work = params.worker_record.mean
    return model, sc, traced


# Faults the model does not suffer, and why; `imlab sim` refuses them before it starts.
NOT_MODELLED = {
    "token-revoke": (
        "the simulator does not model token revocation (the revoked users' sessions, "
        "their refused logins, the checker's grace); run it against the real stage: "
        "imlab load --stage v5 --faults token-revoke:N@T"
    ),
}


def check_modelled(plan: FaultPlan) -> None:
    """Raise PlanError for a fault of the plan the model does not suffer."""
    for f in plan.items:
        why = NOT_MODELLED.get(f.kind)
        if why is not None:
            raise PlanError(f"{f.spec()}: {why}")


def run_sim(opts: SimOptions, out: TextIO | None = None) -> SimResult:
    """Carry out one simulated run and judge it (PlanError/ValueError when it cannot run)."""
    from reports.checker import check, summary_table

    out = out or sys.stdout
    say = _Progress(out, opts.quiet)
    plan = parse_faults(opts.faults)
    check_modelled(plan)
    params = load_params(opts.params, opts.stage, this_machine=opts.this_machine)
    run_dir = opts.run_dir or new_run_dir("sim", opts.stage, opts.runs_root)
    run_dir.mkdir(parents=True, exist_ok=True)
    recorder = JsonlRecorder(run_dir / "history.jsonl")
    writer = RunWriter(
        run_dir, stage=opts.stage, scenario=opts.scenario, seed=opts.seed, recorder=recorder
    )
    try:
        model, sc, traced = build_model(opts, params, plan, writer.history)
    except BaseException:
        writer.history.close()
        raise
    traced_users = sorted({u for c in traced for u in sc.convs[c].members})
    sampled = (
        f"; sampling {len(model.users):,} users ({len(sc.convs):,} conversations), the "
        f"other {model.population - len(model.users):,} as aggregate load (x{model.scale:.4g})"
        if opts.sample is not None
        else ""
    )
    broker = (
        f"{opts.broker} ({'durable' if opts.broker != 'tansu' else 'memory only'}, "
        f"{opts.brokers} node{'s' if opts.brokers > 1 else ''}"
        f"{f', partitions led by {opts.kafka_leaders} brokers' if opts.kafka_leaders > 1 else ''})"
        if model.uses_kafka
        else "none"
    )
    redis = (
        f"; Redis Cluster of {opts.redis_shards} shards"
        if opts.redis_shards > 1 and model.uses_redis
        else ""
    )
    say.say(
        f"simulating {opts.stage} / {opts.scenario}: {opts.users:,} users × {opts.rate:g}/s "
        f"for {opts.duration:g}s, {len(model.nodes)} node(s), {len(model.workers)} worker(s), "
        f"faults {plan.spec() or 'none'}{sampled}; tracing {len(traced):,} of "
        f"{len(sc.convs):,} conversations ({len(traced_users):,} users) into {run_dir}\n"
        f"parameters: {params_from(opts)}; "
        f"broker modelled: {broker}{redis}"
    )
    began = time.perf_counter()
    cpu_began = time.process_time()
    window = BusyWindow()

    def progress(m: StageModel) -> None:
        window(m)
        say(m)

    model.run(progress=progress)
    sim_wall = time.perf_counter() - began
    sim_cpu = time.process_time() - cpu_began
    events = next(model.env._eid)  # SimPy's count of scheduled events (its event ids)
    drain_end = model.drain_end or model.env.now
    population = population_figures(model, window)
    offered = sc.rate * model.population
    params_out: dict[str, Any] = {
        "users": opts.users,
        "rate": opts.rate,
        "duration": opts.duration,
        "group_size": opts.group_size if sc.uses_groups else None,
        "churn": asdict(sc.churn),
        "seed": opts.seed,
        "faults": opts.faults,
        "max_drain": opts.max_drain,
        "settle": opts.settle,
        "spawn_rate": model.spawn_rate,
        "offered_sends_per_s": offered,
        "offered_deliveries_per_s": offered * sc.expected_fanout(),
        "nodes": len(model.nodes),
        "workers": len(model.workers),
        "redis_shards": opts.redis_shards,
        "kafka_leaders": opts.kafka_leaders,
    }
    broker_info = (
        {"name": opts.broker, "modelled": True, "brokers": opts.brokers,
         "replication": opts.brokers, "durable": opts.broker != "tansu",
         "leaders": opts.kafka_leaders}
        if model.uses_kafka
        else None
    )  # fmt: skip
    writer.params = params_out
    sim_info: dict[str, Any] = {
        "model": f"sim.{opts.stage}",
        "params_file": opts.params,
        "params_from": params_from(opts),
        "params_source": params.source,
        "params": params.to_dict(),
        "broker_modelled": broker,
        "sample": None
        if opts.sample is None
        else {
            "fraction": opts.sample,
            "users": len(model.users),
            "of_users": model.population,
            "conversations": len(sc.convs),
            "scale": round(model.scale, 6),
            "how": "sim.sample: sampled conversations end to end, the rest as aggregate load",
        },
        "trace": {
            "spec": opts.trace,
            "conversations": len(traced),
            "of_conversations": len(sc.convs),
            "users": len(traced_users),
            "of_users": opts.users,
            "fraction": round(len(traced) / max(1, len(sc.convs)), 6),
        },
        "simulated_seconds": round(drain_end, 3),
        "send_window": [model.send_start, model.send_end],
        "wall_seconds": round(sim_wall, 3),
        "cpu_seconds": round(sim_cpu, 3),
        "simpy_events": events,
        "events_per_s": round(events / sim_wall) if sim_wall else None,
        "times_real_time": round(drain_end / sim_wall, 3) if sim_wall else None,
        "messages": len(model.ledger),
        "history_events": writer.history.recorder.count
        if isinstance(writer.history.recorder, JsonlRecorder)
        else None,
        "peak_rss_mb": round(_rss_mb(), 1),
    }
    shift = model.send_start  # the manifest's run starts with the send window
    writer.finish(
        ended_at=model.send_end,
        drain_end=drain_end,
        groups={
            c.group_id: [sc.names[m] for m in c.members]
            for c in (sc.convs[i] for i in traced)
            if c.group_id is not None
        },
        faults=list(plan.items),
        extra={"kind": "sim", "sim": sim_info, "population": population, "broker": broker_info},
    )
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["started_at"] = writer.history.epoch(shift)
    # Run-long faults (churn, kafka-loss) span the send window, as a real run records them.
    send_end = writer.history.epoch(model.send_end)
    for f in manifest["faults"]:
        f["start"] = round(f["start"] + shift, 6)
        f["end"] = min(round(f["end"] + shift, 6), writer.history.epoch(drain_end))
        if f["kind"] in RUN_LONG:
            f["end"] = min(f["end"], send_end)
    manifest["sim"]["history_events"] = sim_info["history_events"] = recorder.count
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    metrics: dict[str, Any] = {}
    lines = [
        f"simulated {drain_end:,.1f}s in {sim_wall:,.1f}s wall ({sim_cpu:,.1f}s CPU) "
        f"({drain_end / sim_wall if sim_wall else 0:,.1f}x real time), {events:,} SimPy events "
        f"({sim_info['events_per_s'] or 0:,}/s), {len(model.ledger):,} messages, "
        f"peak RSS {sim_info['peak_rss_mb']:,.0f} MB",
        population_table(population),
    ]
    refused = refusal_warning(population)
    if refused:
        lines.append(refused)
    if opts.check:
        t0 = time.perf_counter()
        metrics = check(run_dir)
        metrics["sim"] = {
            **sim_info,
            "population": population,
            "checker_seconds": round(time.perf_counter() - t0, 3),
            "sampled_figures": SAMPLED_NOTE,
        }
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        lines.insert(0, f"checker on the traced history ({recorder.count:,} events):")
        lines.insert(1, summary_table(metrics))
    text = "\n".join(lines)
    say.say(text + f"\nrun folder: {run_dir}")
    return SimResult(run_dir, manifest, metrics, text)
