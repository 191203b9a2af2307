"""`imlab load`: one load run from start to verdict.

Starts the stage (`Cluster`), creates the planned groups, runs Locust headless with
one worker process per core on the plan, opens the send window once every user is
connected, drains until deliveries settle, orders the final catch-up, stops
everything, then judges the histories with the checker and leaves a complete run
folder (manifest, histories, Locust CSV/HTML, logs, metrics.json).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from imlab import stages
from imlab.chaos import LiveFaults
from imlab.cluster import Cluster, ClusterSpec, machine_info, package_versions
from imlab.experiment.faults import RUN_LONG, FaultPlan, parse_faults
from imlab.experiment.runfolder import new_run_dir
from imlab.experiment.scenarios import ChurnSpec, PlanError, check_scenario, user_names
from imlab.services import LOOPBACK, free_port
from loadtest import nodegen, protocol
from loadtest.external import ExternalStage
from loadtest.locustproc import LOCUSTFILE, REPO_ROOT, LocustProcess
from loadtest.monitor import (
    CpuSampler,
    generator_verdict,
    process_tree,
    schedule_lag,
    total_status,
)
from loadtest.nodegen import NodeGenerator
from loadtest.plan import LoadPlan, StepShape
from loadtest.prepare import LoadRunError, prepare
from loadtest.progress import Progress, status_line, verdict_lines

GENERATORS = {"locust": "Locust", "node": "Node"}  # --generator: the name reports use

__all__ = ["Hooks", "LoadOptions", "LoadResult", "LoadRun", "LoadRunError", "run_load"]


@dataclass
class LoadOptions:
    """Everything `imlab load` takes; defaults make a short, modest run."""

    stage: str
    scenario: str = "group"
    users: int = 40
    rate: float = 1.0  # sends per second per user
    duration: float = 30.0
    group_size: int = 8
    processes: int = 0  # Locust worker processes; 0: one per core
    spawn_rate: float = 0.0  # users started per second; 0: all within about 2 s
    churn: float | None = None  # fraction of users that churn (default: 1 for `churn`)
    churn_online: float = 2.0
    churn_offline: float = 1.0
    churn_silent: float = 0.5
    step_users: int = 0  # > 0: a step shape adds this many users every `step_every` s
    step_every: float = 10.0
    max_drain: float = 30.0
    settle: float = 1.5
    faults: str = ""
    seed: int = 1
    body_bytes: int = 32
    run_dir: Path | None = None
    runs_root: Path | None = None
    cluster: ClusterSpec | None = None
    quiet: bool = False
    # A server imlab does not start (loadtest/external.py): the load goes to these URLs,
    # speaking `stage`'s protocol; `external_pids` are its processes, for the CPU figures.
    urls: list[str] = field(default_factory=list)
    external_pids: list[int] = field(default_factory=list)
    # "locust" plays every scenario; "node" (loadtest/nodegen.py) plays steady dm and
    # group schedules at rates a Locust process per core cannot offer.
    generator: str = "locust"
    # Seconds of the same schedule played unrecorded before the send window: a fresh
    # Kafka JVM spends its first 20-30 s compiling its hot paths.
    warmup: float = 0.0


@dataclass
class LoadResult:
    run_dir: Path
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    verdict: dict[str, Any]
    summary: str = ""
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the run


def build_plan(opts: LoadOptions, endpoints: list[str], run_dir: Path, churn: float) -> LoadPlan:
    shape = StepShape(opts.step_users, opts.step_every) if opts.step_users > 0 else None
    return LoadPlan(
        stage=opts.stage,
        scenario=opts.scenario,
        endpoints=endpoints,
        users=user_names(opts.users, uuid.uuid4().hex[:4]),
        rate=opts.rate,
        duration=opts.duration,
        group_size=opts.group_size,
        churn=ChurnSpec(churn, opts.churn_online, opts.churn_offline, opts.churn_silent),
        shape=shape,
        seed=opts.seed,
        body_bytes=opts.body_bytes,
        token_ttl=stages.stage(opts.stage).token_ttl(opts.duration + 3600.0),
        run_dir=str(run_dir.resolve()),
    )


@dataclass(frozen=True)
class Hooks:
    """Where a caller that runs several loads back to back (`imlab compare`) steps in.

    `ready` is called once every user is connected, just before the send window opens;
    it may block (until the machine is this run's alone) or raise (to abandon the run,
    which is then stopped). `measured` is called once the drain is over: nothing this run
    measures happens after it, so the next run may start its processes meanwhile. While
    `cancelled()` says so, the run stops at its next check (a run in a thread cannot be
    interrupted by Ctrl-C)."""

    ready: Callable[[], None] | None = None
    measured: Callable[[], None] | None = None
    cancelled: Callable[[], bool] | None = None


def run_load(
    opts: LoadOptions, out: TextIO | None = None, hooks: Hooks | None = None
) -> LoadResult:
    """Carry out one load run and judge it; raises LoadRunError/PlanError when it cannot."""
    return LoadRun(opts, out or sys.stdout, hooks).execute()


def _check_faults(opts: LoadOptions, plan: FaultPlan) -> None:
    """Refuse, before anything starts, a fault this stage or this run cannot suffer."""
    for f in plan.token_revokes:
        if not stages.stage(opts.stage).keeps_revocations:
            raise PlanError(
                f"{f.spec()}: stage {opts.stage} keeps no revocation list "
                "(a stage with revocable tokens does: v5)"
            )
        if f.count > opts.users:
            raise PlanError(f"{f.spec()}: the run has only {opts.users} users")


FAULT_RECOVERY = 3.0  # seconds the drain waits after the last fault window closed


class LoadRun:
    """One run's steps, in order; `execute()` stops every process it started, whatever
    happens, and judges the run only when all steps went through."""

    def __init__(self, opts: LoadOptions, out: TextIO, hooks: Hooks | None = None) -> None:
        if opts.rate <= 0 or opts.duration <= 0:
            raise PlanError("rate and duration must be positive")
        check_scenario(opts.scenario, opts.users, opts.group_size)
        self.opts = opts
        self.hooks = hooks or Hooks()
        self.say = Progress(out, opts.quiet)
        self.faults = parse_faults(opts.faults)
        _check_faults(opts, self.faults)
        churn = opts.churn
        if churn is None:
            churn = self.faults.churn or (1.0 if opts.scenario == "churn" else 0.0)
        self.churn = churn
        self.spec = opts.cluster or ClusterSpec(opts.stage)
        if self.faults.redis_restarts and not self.spec.durable_redis:
            # A killed Redis must come back with what it acknowledged, as a real one would.
            self.spec = dataclasses.replace(self.spec, durable_redis=True)
        if self.faults.kafka_loss:  # the v3/v4 producers drop publishes at this rate
            self.spec = dataclasses.replace(self.spec, kafka_drop=self.faults.kafka_loss)
        self.run_dir = opts.run_dir or new_run_dir("load", opts.stage, opts.runs_root)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.loadgen = self.run_dir / "loadgen"
        self.loadgen.mkdir(exist_ok=True)
        # Locust: a process per core (gevent holds one core at most). Node: one process,
        # which offered 12,800 msgs/s at 55 % of a core; a second one only takes cores
        # from the stage (v1 at 3,200 msgs/s: push p99 120 ms with one, 248 ms with two).
        node = opts.generator == "node"
        self.processes = opts.processes or (1 if node else os.cpu_count() or 1)
        self.spawn_rate = opts.spawn_rate or max(10.0, opts.users / 2.0)
        self.cluster: Cluster | ExternalStage
        if opts.urls:
            if any(f.kind != "churn" for f in self.faults.items):  # churn is the clients'
                raise PlanError("faults other than churn need a stage imlab starts, not --url")
            self.cluster = ExternalStage(opts.stage, opts.urls, self.run_dir, opts.external_pids)
        else:
            self.cluster = Cluster(self.spec, self.run_dir)
        self.plan: LoadPlan | None = None
        self.plan_env: dict[str, str] = {}
        self.features: set[str] = set()
        if opts.generator not in GENERATORS:
            known = ", ".join(GENERATORS)
            raise PlanError(f"unknown generator {opts.generator!r} (one of {known})")
        self.tool = GENERATORS[opts.generator]
        if opts.warmup < 0:
            raise PlanError("a warm-up lasts zero seconds or more")
        self.locust: LocustProcess | NodeGenerator | None = None
        self.locust_code: int | None = None
        self.argv: list[str] = []
        self.sampler: CpuSampler | None = None
        self.live_faults: LiveFaults | None = None
        self.status: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.times: dict[str, float] = {"begin": time.time()}
        self.send_start = self.send_end = self.drain_end = math.nan
        self.warm_start: float | None = None

    # ------------------------------------------------------------ the steps

    def execute(self) -> LoadResult:
        try:
            self._start_stage()
            if self.opts.generator == "node":
                self._start_node()
            else:
                self._start_locust()
            self._await_users()
            if self.hooks.ready is not None:
                self.hooks.ready()
                self.times["released"] = time.time()
            self._send_window()
            self._drain()
            if self.hooks.measured is not None:
                self.hooks.measured()
            self._final_sync()
        finally:
            self._stop()
        return self._judge()

    def _start_stage(self) -> None:
        self.say.say(f"starting {self.opts.stage} into {self.run_dir} ...")
        self.cluster.start()
        self.times["cluster_up"] = time.time()
        plan = build_plan(self.opts, self.cluster.endpoints, self.run_dir, self.churn)
        history = self.run_dir / "history-setup.jsonl"
        self.features, plan.groups = asyncio.run(
            prepare(plan, self.cluster, history, self.spec.secret)
        )
        plan.user_group = {u: gid for gid, members in plan.groups.items() for u in members}
        self.plan_env = protocol.write_plan(self.loadgen, plan)
        self.plan = plan
        self.times["setup_done"] = time.time()
        if plan.groups:
            size = plan.expected_fanout() + 1
            self.say.say(f"created {len(plan.groups)} group(s), {size:.1f} members on average")

    def _start_locust(self) -> None:
        assert self.plan is not None
        opts = self.opts
        env = dict(os.environ)
        env.update(self.plan_env)
        env["IMLAB_SECRET"] = self.spec.secret
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        master_port = free_port()
        safety = self._connect_budget() + self._ramp() + opts.duration + opts.max_drain + 120.0
        self.argv = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "--processes", str(self.processes), "-u", str(opts.users),
            "-r", f"{self.spawn_rate:g}", "-t", f"{math.ceil(safety)}s",
            "--csv", str(self.run_dir / "locust"), "--html", str(self.run_dir / "locust.html"),
            "--only-summary", "--exit-code-on-error", "0", "--loglevel", "WARNING",
            # its own loopback port: concurrent runs must not share a master (default *:5557)
            "--master-bind-host", LOOPBACK, "--master-bind-port", str(master_port),
            "--master-host", LOOPBACK, "--master-port", str(master_port),
        ]  # fmt: skip
        self.locust = locust = LocustProcess(self.argv, env, self.cluster.logs / "locust.log")
        self._sample(lambda: process_tree(locust.pid))

    def _start_node(self) -> None:
        assert self.plan is not None
        try:
            modules = nodegen.install_client()
        except nodegen.NodeGenError as exc:
            raise LoadRunError(str(exc)) from exc
        try:
            parts = nodegen.write_parts(self.plan, self.loadgen, self.spec.secret, self.spawn_rate)
        except ValueError as exc:
            raise PlanError(str(exc)) from exc
        log = self.cluster.logs / "nodegen.log"
        gen = nodegen.NodeGenerator(parts, self.processes, modules, log)
        self.locust, self.argv = gen, gen.argv
        self._sample(gen.pids)

    def _sample(self, generator_pids: Callable[[], list[int]]) -> None:
        cluster = self.cluster
        self.sampler = CpuSampler(
            {
                "load_generator": generator_pids,
                "stage": lambda: [pid for s in cluster.services() for pid in process_tree(s.pid)],
                "runner": lambda: [os.getpid()],
            }
        ).start()

    def _await_users(self) -> None:
        """Until every user (of the first step, with a shape) has connected."""
        opts = self.opts
        first = self.plan.shape.step if self.plan and self.plan.shape else opts.users
        self.say.say(
            f"{self.tool}: {self.processes} process(es), {opts.users} users; connecting ..."
        )
        deadline = time.time() + self._connect_budget()
        while True:
            st = self._snapshot()
            if st.get("ever_connected", 0) + st.get("connect_failed", 0) >= first:
                break
            if time.time() > deadline:
                self.warnings.append(
                    f"only {st.get('ever_connected', 0)} of {first} users connected in time"
                )
                break
            time.sleep(0.2)
        if self.status.get("connect_failed"):
            self.warnings.append(f"{self.status['connect_failed']} users could not connect")
        self.times["connected"] = time.time()

    def _send_window(self) -> None:
        opts = self.opts
        begin = time.time() + 0.5
        self.warm_start = begin if opts.warmup > 0 else None
        self.send_start = begin + opts.warmup
        self.send_end = self.send_start + self._ramp() + opts.duration
        if self.warm_start is not None:
            self.say.say(f"warming up for {opts.warmup:g}s (the same schedule, unrecorded)")
        self._control(final=False)
        if self.faults:
            history = self.run_dir / "history-faults.jsonl"
            assert isinstance(self.cluster, Cluster)  # refused with an external server
            self.live_faults = LiveFaults(
                self.cluster,
                self.faults,
                history=history,
                users=self.plan.users if self.plan else (),
                seed=opts.seed,
            )
            self.live_faults.start(self.send_start)
        total = self.send_end - self.send_start
        if self.warm_start is not None:
            while time.time() < self.send_start:
                st = self._snapshot()
                elapsed = max(0.0, time.time() - self.warm_start)
                self.say.tick(status_line("warm", elapsed, opts.warmup, st, self._gen_cpu()))
                time.sleep(0.2)
            self.say.end_line()
        self.say.say(f"sending for {total:.0f}s: {opts.scenario}, {opts.rate:g}/s per user")
        while time.time() < self.send_end:
            st = self._snapshot()
            elapsed = max(0.0, time.time() - self.send_start)
            self.say.tick(status_line("send", elapsed, total, st, self._gen_cpu()))
            time.sleep(0.2)
        self.say.end_line()

    def _drain(self) -> None:
        """Until nothing more arrives for `settle` seconds (or the cap), and not before
        `FAULT_RECOVERY` seconds after the last fault window closed: a broker or Redis
        that is still coming back holds acked messages that are late, not lost."""
        opts = self.opts
        last_key: tuple[Any, ...] = ()
        stable_since = time.time()
        while (now := time.time()) < self.send_end + opts.max_drain:
            st = self._snapshot()
            key = (st.get("online"), *sorted(st.get("events", {}).items()))
            recovering = self.live_faults is not None and not self.live_faults.settled(
                FAULT_RECOVERY
            )
            if key != last_key or recovering:
                last_key, stable_since = key, now
            elif now - stable_since >= opts.settle:
                break
            elapsed = now - self.send_end
            self.say.tick(status_line("drain", elapsed, opts.max_drain, st, self._gen_cpu()))
            time.sleep(0.25)
        else:
            self.warnings.append(
                f"deliveries still arriving after the {opts.max_drain:g}s drain cap"
            )
        self.times["drained"] = time.time()

    def _final_sync(self) -> None:
        """Every client catches up (latest/sync) and closes; then judging may begin."""
        self._control(final=True)
        deadline = time.time() + 30.0 + self.opts.users / 20.0
        while time.time() < deadline:
            st = self._snapshot()
            if st.get("finished", 0) >= st.get("started", 0) > 0:
                break
            time.sleep(0.2)
        else:
            late = self.status.get("started", 0) - self.status.get("finished", 0)
            self.warnings.append(f"{late} users did not finish their final sync in time")
        self.drain_end = self.times["synced"] = time.time()
        self.say.end_line()
        after = self.drain_end - self.send_end
        self.say.say(f"final sync done ({after:.1f}s after the send window); stopping")

    def _stop(self) -> None:
        self.say.end_line()
        if self.live_faults is not None:
            self.live_faults.stop()
        if self.locust is not None:
            self.locust_code = self.locust.stop()
            self.times["locust_stopped"] = time.time()
        if self.sampler is not None:
            self.sampler.stop()
        self.cluster.stop()
        self.times["stopped"] = time.time()

    # ------------------------------------------------------------ the verdict

    def _judge(self) -> LoadResult:
        from reports.checker import check, summary_table

        assert self.plan is not None and self.sampler is not None
        self.status = total_status(protocol.read_status(self.loadgen))
        lag = schedule_lag(sorted(self.run_dir.glob("history*.jsonl")))
        cpu = self.sampler.summary(self.send_start, self.send_end)
        verdict = generator_verdict(cpu, lag, self.status, planned=self.opts.users, tool=self.tool)
        manifest = self._manifest(cpu, lag, verdict)
        (self.run_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
        metrics = check(self.run_dir)
        text = summary_table(metrics) + "\n" + verdict_lines(verdict, lag, cpu, self.warnings)
        self.say.say(text)
        self.say.say(f"run folder: {self.run_dir}")
        return LoadResult(self.run_dir, manifest, metrics, verdict, text, self.warnings)

    def _manifest(
        self, cpu: dict[str, Any], lag: dict[str, Any], verdict: dict[str, Any]
    ) -> dict[str, Any]:
        opts, plan = self.opts, self.plan
        assert plan is not None
        faults: list[dict[str, Any]] = (
            self.live_faults.manifest_faults() if self.live_faults else []
        )
        for f in self.faults.items:  # run-long faults, applied by the stage or the scenario
            if f.kind in RUN_LONG:
                faults.append({"kind": f.kind, "target": f.target, "start": self.send_start,
                               "end": self.send_end, "spec": f.spec()})  # fmt: skip
        return {
            "stage": opts.stage,
            "scenario": opts.scenario,
            "params": {
                "users": opts.users,
                "rate": opts.rate,
                "duration": opts.duration,
                "group_size": opts.group_size if plan.uses_groups else None,
                "processes": self.processes,
                "spawn_rate": self.spawn_rate,
                "churn": asdict(plan.churn),
                "shape": asdict(plan.shape) if plan.shape else None,
                "seed": opts.seed,
                "body_bytes": opts.body_bytes,
                "max_drain": opts.max_drain,
                "settle": opts.settle,
                "faults": opts.faults,
                "warmup": opts.warmup,
                "offered_sends_per_s": plan.offered_sends_per_s(),
                "offered_deliveries_per_s": plan.offered_sends_per_s() * plan.expected_fanout(),
            },
            "started_at": self.send_start,
            "ended_at": self.send_end,
            "drain_end": self.drain_end,
            "groups": plan.groups,
            "faults": faults,
            "faults_requested": self.faults.spec() if self.faults else "",
            "stage_features": sorted(self.features),
            "broker": self.cluster.broker_info(),
            "machine": machine_info(),
            "versions": package_versions(),
            "cluster": {
                k: v for k, v in self.cluster.manifest().items() if k not in ("machine", "versions")
            },
            "load_generator": {
                "tool": self.opts.generator,
                "client": nodegen.client_version() if self.opts.generator == "node" else None,
                "processes": self.processes,
                "exit_code": self.locust_code,
                "command": self.argv,
                "cpu": cpu.get("load_generator"),
                "lag": lag,
                "status": self.status,
                "verdict": verdict,
            },
            "stage_cpu": cpu.get("stage"),
            "machine_cpu": cpu.get("machine_pct"),
            "other_processes_cpu_pct": cpu.get("other_processes_pct_mean"),
            "timing": {k: round(v - self.times["begin"], 3) for k, v in self.times.items()},
            "warnings": self.warnings,
        }

    # ------------------------------------------------------------ helpers

    def _connect_budget(self) -> float:
        return 30.0 + 2.0 * self.opts.users / self.spawn_rate

    def _ramp(self) -> float:
        shape = self.plan.shape if self.plan else None
        return shape.ramp_seconds(self.opts.users) if shape else 0.0

    def _control(self, *, final: bool) -> None:
        protocol.write_control(
            self.loadgen, protocol.Control(self.send_start, self.send_end, final, self.warm_start)
        )

    def _snapshot(self) -> dict[str, Any]:
        """The Locust processes' summed status; raises if Locust has died."""
        self.status = total_status(protocol.read_status(self.loadgen))
        if self.hooks.cancelled is not None and self.hooks.cancelled():
            raise LoadRunError("the run was cancelled")
        if self.locust is not None and not self.locust.running():
            raise LoadRunError(
                f"{self.tool} exited early (exit codes {self._exit_codes()}); "
                f"log {self.locust.log_path}:\n{self.locust.log_tail()}"
            )
        return self.status

    def _exit_codes(self) -> list[int | None]:
        gen = self.locust
        if isinstance(gen, NodeGenerator):
            return gen.exit_codes()
        return [gen.proc.poll()] if gen is not None else []

    def _gen_cpu(self) -> str:
        if self.sampler is None or not self.sampler.samples:
            return "-"
        last = self.sampler.samples[-1].groups.get("load_generator", {})
        return f"{max(last.values(), default=0.0):.0f}%/proc"
