"""`imlab compare`, the main job: every stage through the standard scenarios, with
and without each fault, for real (`imlab load`) and simulated (`imlab sim`), then
one report (`imlab report`) and the main table on the terminal.

The matrix is data (`plan_cases`), so what a comparison covers can be read in one
place; `--quick` is the same matrix, smaller and shorter.

The real runs follow one another without idle gaps but never overlap where it counts:
while one run finishes (final catch-up, stopping, judging), the next real run starts
its stage and connects its users, then waits; its send window opens only once the
previous run is over, so no run is measured while another's processes are alive.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, TextIO

from imlab import stages
from imlab.brokers import Broker, make_broker
from imlab.cluster import ClusterSpec, machine_info, package_versions
from imlab.experiment.faults import parse_faults
from imlab.experiment.runfolder import new_run_dir
from imlab.services import RedisService

Kind = Literal["real", "sim"]
# Faults done to Redis, the broker or the database: a run with one starts services of its own.
SERVICE_FAULTS = frozenset(
    {
        "redis-outage",
        "redis-restart",
        "redis-master-kill",
        "db-restart",
        "broker-down",
        "broker-kill",
    }
)
MAX_DRAIN = 10.0  # seconds a run waits for stragglers after its send window
# The drain ends once nothing has arrived for this long (`imlab load` waits 1.5 s). The
# Locust processes report every 0.5 s, so that is two reports without a change; a
# delivery later than that is not lost: the final catch-up fetches it, and the checker
# counts it as delivered by sync.
SETTLE = 1.0


def stage_faults(stage: str, quick: bool) -> tuple[str, ...]:
    """The faults each stage is put under (its stage.toml), at offsets inside the window."""
    info = stages.stage(stage)
    return info.faults_quick if quick else info.faults_full


@dataclass(frozen=True)
class Case:
    """One run of the comparison."""

    kind: Kind
    stage: str
    scenario: str
    users: int
    rate: float
    duration: float
    faults: str = ""
    # The stage's shape, where a case needs its own (0/None: the comparison's): a broker
    # kill of one of three needs three brokers; two crashes in one run, three gateways.
    brokers: int = 0
    servers: int | None = None
    workers: int | None = None

    @property
    def label(self) -> str:
        fault = self.faults or "no fault"
        return (
            f"{self.kind:<4} {self.stage} {self.scenario:<6} {self.users:>3} users "
            f"x {self.rate:g}/s for {self.duration:g}s, {fault}"
        )


def _fill(spec: str, duration: float) -> str:
    window = max(1.0, round(duration * 0.25, 1))
    at = max(1.0, round(duration * 0.35, 1))
    return spec.format(w=f"{window:g}s", at=f"{at:g}s")


def plan_cases(
    *, quick: bool, only: Sequence[str] | None = None, real: bool = True, sim: bool = True
) -> list[Case]:
    """The comparison matrix: fault-free load levels per scenario, then each stage's faults."""
    duration = 6.0 if quick else 12.0  # a fault run: the fault, its effect, the recovery
    # A fault-free level needs less: its rate is steady from the first second. Quick
    # levels send for 4 s (64 to 1,024 sends at 16 users): long enough for p99 and for a
    # saturated stage's backlog to show, and 24 s of the quick comparison's 3 minutes.
    level_duration = 4.0 if quick else duration
    users = 16 if quick else 32
    # Three or more fault-free load levels per stage, so throughput and p99 against offered
    # load are curves; the highest is past where v3 stops keeping up on two shared cores
    # (16 users x 16/s offered 256 sends/s, 196/s accepted), so a knee can show.
    levels = (1.0, 4.0, 16.0) if quick else (1.0, 2.0, 4.0, 8.0, 16.0)
    fault_rate = 2.0  # well below every knee: what a fault run shows is the fault's doing
    scenarios = ("group",) if quick else ("group", "dm", "burst")
    cases: list[Case] = []
    for stage in only or stages.names():
        groups = stages.stage(stage).has_groups  # without groups: dm only
        for scenario in scenarios:
            sc = scenario if groups else "dm"
            if not groups and scenario != scenarios[0]:
                continue
            for rate in levels if sc in ("group", "dm") else levels[:1]:
                cases.append(Case("real", stage, sc, users, rate, level_duration))
        for spec in stage_faults(stage, quick):
            sc = "group" if groups else "dm"
            cases.append(
                Case("real", stage, sc, users, fault_rate, duration, _fill(spec, duration))
            )
    from sim.run import NOT_MODELLED  # SimPy only when a comparison is built

    out: list[Case] = []
    for c in cases:
        if real:
            out.append(c)
        # A fault the model does not suffer (sim.run.NOT_MODELLED) has no simulated twin.
        if sim and not any(f.kind in NOT_MODELLED for f in parse_faults(c.faults).items):
            out.append(replace(c, kind="sim"))
    return out


# ---------------------------------------------------------------- running


@dataclass(frozen=True)
class BrokerChoice:
    """The Kafka cluster the real v3/v4 runs use (`--broker`, `--brokers`)."""

    kind: str = "auto"
    brokers: int = 1


class SharedServices:
    """One Redis and one broker that the fault-free real runs of v3 and v4 share, so
    the broker's JVM starts once, not once per run. Runs cannot disturb each other:
    user names carry a tag per run, and group ids (hence topics) come from the shared
    Redis's counter. A run whose fault strikes Redis or the broker gets its own."""

    def __init__(self, logs: Path, broker: BrokerChoice) -> None:
        self.logs, self.choice = logs, broker
        self.redis: RedisService | None = None
        self.kafka: Broker | None = None

    def wants(self, case: Case) -> bool:
        info = stages.stage(case.stage)
        if case.kind != "real" or not info.needs_kafka:
            return False
        if info.needs_sentinel or info.needs_postgres:  # the pool has one plain Redis, no db
            return False
        if case.brokers and case.brokers != self.choice.brokers:
            return False
        return not {f.kind for f in parse_faults(case.faults).items} & SERVICE_FAULTS

    def spec(self, case: Case) -> ClusterSpec:
        if self.redis is None:
            self.logs.mkdir(parents=True, exist_ok=True)
            self.redis = RedisService(self.logs).start()
        if self.kafka is None:
            self.kafka = make_broker(self.choice.kind, self.logs, self.choice.brokers).start()
        return ClusterSpec(
            case.stage,
            redis_url=self.redis.url,
            kafka_bootstrap=self.kafka.bootstrap,
            broker=self.choice.kind,
            brokers=self.choice.brokers,
            servers=case.servers,
            workers=case.workers,
        )

    def note(self, run_dir: Path) -> None:
        """Record the shared broker in the run's manifest, where the stage saw `external`."""
        path = run_dir / "manifest.json"
        if self.kafka is None or not path.exists():
            return
        manifest = json.loads(path.read_text())
        manifest["broker"] = {**self.kafka.info(), "shared_between_runs": True}
        path.write_text(json.dumps(manifest, indent=2) + "\n")

    def stop(self) -> None:
        if self.kafka is not None:
            self.kafka.close()
        if self.redis is not None:
            self.redis.stop()


def run_case(
    case: Case,
    run_dir: Path,
    seed: int,
    broker: BrokerChoice | None = None,
    shared: SharedServices | None = None,
    hooks: Any = None,
) -> Path:
    """Carry out one case into `run_dir`; returns the run folder (with metrics.json).
    `hooks` (`loadtest.runner.Hooks`) reach a real run: see `Prestart`."""
    same: dict[str, Any] = {
        "stage": case.stage,
        "scenario": case.scenario,
        "users": case.users,
        "rate": case.rate,
        "duration": case.duration,
        "faults": case.faults,
        "seed": seed,
        "run_dir": run_dir,
        "quiet": True,
        "max_drain": MAX_DRAIN,  # the same for both twins, so the report pairs them
        "settle": SETTLE,
        # every user in the first second: Locust's default batches of 10 a second
        # held each run a second longer before its send window, for nothing it measures
        "spawn_rate": float(max(case.users, 10)),
    }
    if case.kind == "real":
        from loadtest.runner import LoadOptions, run_load

        b = broker or BrokerChoice()
        if shared is not None and shared.wants(case):
            spec = shared.spec(case)
        else:
            spec = ClusterSpec(
                case.stage,
                broker=b.kind,
                brokers=case.brokers or b.brokers,
                servers=case.servers,
                workers=case.workers,
            )
        opts = LoadOptions(**same, cluster=spec)
        done = run_load(opts, out=io.StringIO(), hooks=hooks).run_dir
        if shared is not None and shared.wants(case):
            shared.note(done)
        return done
    from sim.run import SimOptions, run_sim

    # the stage's own process counts, on this machine's shared cores as the real run
    sim_opts = SimOptions(**same, this_machine=True)
    return run_sim(sim_opts, out=io.StringIO()).run_dir


def _eta(done: list[tuple[Case, float]], remaining: Sequence[Case]) -> float:
    """Seconds left, from the measured overhead of finished runs of each kind."""
    over: dict[str, list[float]] = {"real": [], "sim": []}
    for case, took in done:
        over[case.kind].append(max(0.0, took - (case.duration if case.kind == "real" else 0.0)))
    default = {"real": 12.0, "sim": 2.0}
    est = 0.0
    for c in remaining:
        o = over[c.kind]
        extra = sorted(o)[len(o) // 2] if o else default[c.kind]
        est += extra + (c.duration if c.kind == "real" else 0.0)
    return est


class Abandoned(Exception):
    """A prestarted run that the comparison will not carry out (it was interrupted)."""


class Prestart:
    """A real case carried out in a thread: it starts its stage and connects its users
    at once, then holds before its send window until `release()`. `measured` is set once
    its drain is over (or it failed): from then on nothing it measures is running, so
    the next case may start its processes."""

    def __init__(self, case: Case, run_dir: Path, seed: int, broker: BrokerChoice | None,
                 shared: SharedServices) -> None:  # fmt: skip
        from loadtest.runner import Hooks

        self._gate = threading.Event()
        self._abandoned = False
        self.measured = threading.Event()
        self.error: BaseException | None = None
        hooks = Hooks(
            ready=self._wait_for_release,
            measured=self.measured.set,
            cancelled=lambda: self._abandoned,
        )
        args = (case, run_dir, seed, broker, shared, hooks)
        self._thread = threading.Thread(target=self._run, args=args, name=f"case-{run_dir.name}")
        self._thread.start()

    def _wait_for_release(self) -> None:
        self._gate.wait()
        if self._abandoned:
            raise Abandoned("the comparison was interrupted before this run's send window")

    def _run(self, *args: Any) -> None:
        try:
            run_case(*args)
        except BaseException as exc:  # handed to the main thread by finish()
            self.error = exc
        finally:
            self.measured.set()

    def release(self) -> None:
        self._gate.set()

    def finish(self) -> None:
        """Wait for the whole run (verdict included); raises what it raised."""
        self.release()
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        """Stop the run wherever it is (it stops its processes) and wait for it."""
        self._abandoned = True
        self._gate.set()
        self._thread.join()


def run_cases(
    cases: Sequence[Case],
    runs_dir: Path,
    seed: int,
    out: TextIO,
    broker: BrokerChoice | None,
    shared: SharedServices,
) -> list[dict[str, Any]]:
    """Every case in turn, each reported as it starts; a failed one is recorded, not fatal.
    A real case is started while the real case before it finishes (`Prestart`)."""
    names = []
    for i, case in enumerate(cases):
        fault_tag = case.faults.split(":")[0] if case.faults else "nofault"
        names.append(f"{i:02d}-{case.kind}-{case.stage}-{case.scenario}-r{case.rate:g}-{fault_tag}")
    real = [i for i, c in enumerate(cases) if c.kind == "real"]
    following = dict(itertools.pairwise(real))
    started: dict[int, Prestart] = {}

    def start(i: int) -> Prestart:
        if i not in started:
            started[i] = Prestart(cases[i], runs_dir / names[i], seed, broker, shared)
        return started[i]

    done: list[tuple[Case, float]] = []
    results: list[dict[str, Any]] = []
    try:
        for i, case in enumerate(cases):
            left = _eta(done, cases[i:])
            print(f"[{i + 1}/{len(cases)}] {case.label}  (about {left:.0f}s left)",
                  file=out, flush=True)  # fmt: skip
            t0 = time.time()
            entry: dict[str, Any] = {"case": asdict(case), "run_dir": str(runs_dir / names[i])}
            try:
                if case.kind == "real":
                    job = start(i)
                    job.release()
                    job.measured.wait()
                    if i in following:
                        start(following[i])
                    job.finish()
                else:
                    run_case(case, runs_dir / names[i], seed, broker, shared)
                entry["ok"] = True
            except Exception as exc:  # one failed case is reported; the comparison goes on
                entry["ok"] = False
                entry["error"] = f"{type(exc).__name__}: {exc}"
                (runs_dir / names[i]).mkdir(parents=True, exist_ok=True)
                (runs_dir / names[i] / "error.txt").write_text(traceback.format_exc())
                print(f"      failed: {entry['error']}", file=out, flush=True)
            entry["seconds"] = round(time.time() - t0, 2)
            done.append((case, entry["seconds"]))
            results.append(entry)
    finally:
        for job in started.values():  # after an interruption: stop what is still running
            job.abandon()
    return results


def compare(
    cases: Sequence[Case],
    out_dir: Path,
    *,
    seed: int = 1,
    out: TextIO | None = None,
    broker: BrokerChoice | None = None,
) -> dict[str, Any]:
    """Run every case, build the report, return a summary (also written as compare.json)."""
    out = out or sys.stdout
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_dir = out_dir / "runs"
    started: float = time.time()
    shared = SharedServices(out_dir / "shared-services", broker or BrokerChoice())
    try:
        results = run_cases(cases, runs_dir, seed, out, broker, shared)
    finally:
        shared.stop()

    from reports.report import build_report, markdown_table

    ok_dirs = [Path(r["run_dir"]) for r in results if r["ok"]]
    report = build_report(ok_dirs, out_dir / "report")
    summary = {
        "started_at": started,
        "ended_at": time.time(),
        "machine": machine_info(),
        "versions": package_versions(),
        "cases": results,
        "report": str(report.html),
        "summary_md": str(report.summary),
    }
    (out_dir / "compare.json").write_text(json.dumps(summary, indent=2))
    print("\n" + markdown_table(report.runs), file=out)
    failed = [r for r in results if not r["ok"]]
    took = time.time() - started
    print(f"\n{len(results) - len(failed)}/{len(results)} runs in {took:.0f}s", file=out)
    for r in failed:
        print(f"  failed: {r['run_dir']}: {r['error']}", file=out)
    print(f"report: {report.html}\nsummary: {report.summary}", file=out, flush=True)
    return summary


def cmd_compare(args: argparse.Namespace) -> int:
    """Run the comparison and build the report."""
    only = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(only) - set(stages.names()))
    if unknown:
        print(f"imlab compare: unknown stage(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    cases = plan_cases(quick=args.quick, only=only, real=not args.no_real, sim=not args.no_sim)
    out_dir = Path(args.out) if args.out else new_run_dir("compare", "all")
    real = sum(c.kind == "real" for c in cases)
    print(f"imlab compare: {len(cases)} runs ({real} real, {len(cases) - real} simulated) "
          f"into {out_dir}", flush=True)  # fmt: skip
    from imlab.brokers import resolve_kind

    needs_kafka = any(c.kind == "real" and stages.stage(c.stage).needs_kafka for c in cases)
    kind = resolve_kind(args.broker) if needs_kafka else args.broker
    broker = BrokerChoice(kind, args.brokers)
    if needs_kafka:
        print(f"v3/v4 run on {kind} with {args.brokers} broker(s)", flush=True)
    summary = compare(cases, out_dir, seed=args.seed, broker=broker)
    return 0 if all(r["ok"] for r in summary["cases"]) else 1


def register(sub: Any) -> None:
    c = sub.add_parser(
        "compare",
        help="the main job: every stage, scenario and fault, real and simulated, then the report",
    )
    c.add_argument(
        "--quick",
        action="store_true",
        help="a smaller, shorter matrix (three load levels per stage)",
    )
    c.add_argument("--stages", default=",".join(stages.names()), help="comma-separated stages")
    c.add_argument("--no-sim", action="store_true", help="skip the simulated runs")
    c.add_argument("--no-real", action="store_true", help="skip the real runs")
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--out", default=None, help="output folder (default runs/<time>-compare-all)")
    c.add_argument("--broker", choices=("auto", "kafka", "tansu"), default="auto",
                   help="v3/v4 broker: Apache Kafka (auto: where Java runs) or Tansu")  # fmt: skip
    c.add_argument("--brokers", type=int, default=1, help="Kafka nodes for v3/v4")
    c.set_defaults(func=cmd_compare)
