"""The `imlab sim` and `imlab calibrate` subcommands, registered into the `imlab` command
by `register` (like `loadtest.cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imlab.experiment.faults import FaultSpecError
from imlab.experiment.scenarios import SCENARIOS, PlanError
from loadtest.cli import add_scenario_args, scenario_options
from sim.run import TRACE_EVENTS, SimOptions, models, run_sim

EPILOG = (
    "scenarios (as for `imlab load`):\n"
    + "\n".join(f"  {name:<12} {what}" for name, what in SCENARIOS.items())
    + "\n\nfaults: redis-outage:30s@60s, redis-restart:5s@20s, broker-down:10s@30s, "
    "kafka-loss:0.01,\n        crash:gateway-1@45s, churn:0.2, redis-master-kill@20s "
    "(times from the send window's start)"
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sim",
        help="simulate a stage under a load scenario and faults, and judge it",
        description=(
            "Simulate a stage (SimPy model) under the same scenarios and fault spec as "
            "`imlab load`, write a run folder like it (manifest, history, metrics.json "
            "from the same checker) and report simulated time, wall time and events/s."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--stage",
        action="append",
        choices=models(),
        help="the stage (required without --sweep; with it, repeat to choose the stages "
        "swept: default v2 v3 v4 v5)",
    )
    add_scenario_args(p)
    p.add_argument("--servers", type=int, default=None, help="v3 servers (default 3)")
    p.add_argument("--gateways", type=int, default=None, help="v4 gateways (default 2)")
    p.add_argument("--workers", type=int, default=None, help="v4 workers (default 2)")
    p.add_argument(
        "--broker",
        choices=("kafka", "tansu"),
        default="kafka",
        help="the broker modelled: Apache Kafka (durable, the default) or Tansu (memory only)",
    )
    p.add_argument(
        "--brokers",
        type=int,
        default=1,
        help="Kafka nodes modelled (1 or 3): what one broker's fault costs (3: a failover)",
    )
    p.add_argument(
        "--kafka-leaders",
        type=int,
        default=1,
        metavar="N",
        help="Kafka brokers the partitions' leaders are spread over, each its own CPU "
        "(kafka_record per record it leads; default 1: one broker's CPU carries everything)",
    )
    p.add_argument(
        "--redis-shards",
        type=int,
        default=1,
        metavar="N",
        help="Redis Cluster shards, each one single-threaded server holding the keys that "
        "hash to it (default 1: one Redis)",
    )
    p.add_argument(
        "--params",
        default=None,
        help="parameter file from `imlab calibrate` (default: the stage's, sim/calibration/)",
    )
    p.add_argument(
        "--this-machine",
        action="store_true",
        help="run the processes and the load tool on this machine's shared cores, as the "
        "calibration runs did (default: each process on a core of its own)",
    )
    p.add_argument(
        "--trace",
        default="auto",
        help="conversations written to the history: auto (as many as the event budget "
        "allows), all, or a number",
    )
    p.add_argument("--trace-events", type=int, default=TRACE_EVENTS, help="auto's budget")
    p.add_argument(
        "--sample",
        type=float,
        default=None,
        metavar="F",
        help="simulate a random fraction F of the conversations message by message and the "
        "rest of the population as aggregate load on every server (large populations)",
    )
    p.add_argument("--run-dir", default=None, help="run folder (default runs/<time>-sim-<stage>)")
    p.add_argument("--no-check", action="store_true", help="skip the checker")
    w = p.add_argument_group(
        "scale-out sweep (sim.sweep)",
        "Find each stage's knee (push p99 under the threshold, nothing lost) at each node "
        "count, by short sampled levels and a bisection on the offered rate; writes "
        "sweep.json, sweep.md and sweep.png. --users/--rate/--duration are not used: "
        "the population is offered / 1 msgs/s per user.",
    )
    w.add_argument(
        "--sweep",
        action="append",
        default=None,
        metavar="DIM=COUNTS",
        help="nodes=1..16 (v3 servers, v4/v5 gateways and workers alike), servers=..., "
        "gateways=1..8, workers=1..8; COUNTS: 1..16 (every count), 1..16*2 (doubling), "
        "1,2,4,8; repeat for several panels",
    )
    w.add_argument("--level-seconds", type=float, default=4.0, help="send window per level")
    w.add_argument(
        "--sweep-budget", type=int, default=3000, help="messages simulated end to end per level"
    )
    w.add_argument("--hold", type=int, default=None,
                   help="the other role's count in a gateways/workers sweep (default: the "
                   "sweep's largest count)")  # fmt: skip
    w.add_argument("--threshold-ms", type=float, default=100.0, help="push p99 of the knee")
    w.add_argument("--tolerance", type=float, default=0.1, help="bisect to this relative width")
    p.set_defaults(func=cmd_sim)

    c = sub.add_parser(
        "calibrate",
        help="derive simulation parameters from real `imlab load` run folders",
        description=(
            "Read real run folders (manifest CPU samples and histories), derive service "
            "times and delays, fit the client link delay by simulation, and write a "
            "parameter file for `imlab sim --params`."
        ),
    )
    c.add_argument("run_dirs", nargs="+", metavar="RUN_FOLDER")
    c.add_argument("-o", "--output", default="sim-params.json", help="parameter file to write")
    c.add_argument("--no-fit", action="store_true", help="do not fit the link delay")
    c.add_argument(
        "--machine-cores",
        type=float,
        default=None,
        help="cores' worth the machine gives when saturated (default: the most CPU the "
        "runs' processes got together if --saturated, else the core count)",
    )
    c.add_argument(
        "--saturated",
        action="store_true",
        help="some of the runs saturated the machine: take their CPU as its capacity",
    )
    c.set_defaults(func=cmd_calibrate)


def cmd_sim(args: argparse.Namespace) -> int:
    """Run one simulation; exit 0 when it ran (whatever it found), 2 when it could not."""
    if args.sweep:
        return cmd_sweep(args)
    if not args.stage or len(args.stage) != 1:
        print("imlab sim: give one --stage (several only with --sweep)", file=sys.stderr)
        return 2
    try:
        opts = SimOptions(
            stage=args.stage[0],
            **scenario_options(args),
            servers=args.servers,
            gateways=args.gateways,
            workers=args.workers,
            broker=args.broker,
            brokers=args.brokers,
            kafka_leaders=args.kafka_leaders,
            redis_shards=args.redis_shards,
            params=args.params,
            this_machine=args.this_machine,
            trace=args.trace,
            trace_events=args.trace_events,
            sample=args.sample,
            run_dir=Path(args.run_dir) if args.run_dir else None,
            check=not args.no_check,
        )
        result = run_sim(opts)
    except (PlanError, FaultSpecError, ValueError, OSError) as exc:
        print(f"imlab sim: {exc}", file=sys.stderr)
        return 2
    if args.quiet:
        print(result.summary)
        print(f"run folder: {result.run_dir}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """`imlab sim --sweep`: knees against node counts (sim.sweep)."""
    from sim.sweep import SweepOptions, parse_sweep, run_sweep

    try:
        specs = [parse_sweep(text) for text in args.sweep]
        stages = tuple(args.stage) if args.stage else SweepOptions.stages
        result = run_sweep(
            SweepOptions(
                sweeps=specs,
                stages=stages,
                scenario=args.scenario,
                group_size=args.group_size,
                level_seconds=args.level_seconds,
                budget=args.sweep_budget,
                hold=args.hold,
                threshold_ms=args.threshold_ms,
                tolerance=args.tolerance,
                params=args.params,
                seed=args.seed,
                run_dir=Path(args.run_dir) if args.run_dir else None,
                quiet=args.quiet,
            )
        )
    except (ValueError, OSError) as exc:
        print(f"imlab sim: {exc}", file=sys.stderr)
        return 2
    if args.quiet:
        print("\n".join(result["sentences"]))
        print(f"run folder: {result['run_dir']}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from sim.calibrate import CalibrationError, calibrate, machine_capacity

    try:
        capacity = args.machine_cores
        if capacity is None and args.saturated:
            capacity = machine_capacity(args.run_dirs)
        params = calibrate(args.run_dirs, fit_link=not args.no_fit, capacity=capacity)
    except (CalibrationError, OSError, ValueError) as exc:
        print(f"imlab calibrate: {exc}", file=sys.stderr)
        return 2
    params.save(args.output)
    for name in ("client_send_lag", "client_link", "node_request", "node_push", "worker_record",
                 "redis_op", "kafka_record", "loadgen_event"):  # fmt: skip
        d = getattr(params, name)
        print(f"{name:<16} mean {d.mean * 1e6:9.1f} µs  cv {d.cv:.2f}")
    print(
        f"machine: {params.machine_cores:.2f} cores shared, "
        f"{params.loadgen_processes} Locust processes"
    )
    for kind, fit in params.source.get("kinds", {}).items():
        print(f"{kind:<8} x{fit['factor']:.3f}  {fit['how']}")
    if "client_link" in params.source:
        print(f"client_link: {params.source['client_link']}")
    print(f"wrote {args.output}")
    return 0
