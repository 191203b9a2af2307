"""The `imlab load` subcommand: parse the options, run the load (loadtest.runner), print
the checker's summary; registered into the `imlab` command by `register`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from imlab.experiment.scenarios import DEFAULT_GROUP_SIZE, SCENARIOS, PlanError
from loadtest.runner import LoadOptions, LoadRun, LoadRunError

EPILOG = "scenarios:\n" + "\n".join(f"  {name:<12} {what}" for name, what in SCENARIOS.items())


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from imlab.cluster import add_cluster_args
    from imlab.stages import names

    p = sub.add_parser(
        "load",
        help="run a Locust load scenario against a stage and judge it",
        description=(
            "Start a stage, run a Locust scenario on a fixed open-loop schedule, drain, "
            "order a final catch-up by every client, stop everything, and judge the "
            "histories (metrics.json). Leaves a complete run folder."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--stage", required=True, choices=names())
    add_scenario_args(p)
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="generator processes (default: Locust one per core, Node one)",
    )
    add_generator_arg(p)
    add_warmup_arg(p, "0")
    p.add_argument(
        "--step-users",
        type=int,
        default=0,
        help="saturation ramp: add this many users every --step-every seconds",
    )
    p.add_argument("--step-every", type=float, default=10.0)
    p.add_argument("--run-dir", default=None, help="run folder (default runs/<time>-load-<stage>)")
    p.add_argument(
        "--url",
        action="append",
        default=[],
        help="load a server already running here instead of starting the stage (repeatable); "
        "it must speak --stage's protocol (a peer such as benchmarks/node_peer/); no faults",
    )
    add_cluster_args(p)
    p.set_defaults(func=cmd_load)


def add_warmup_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of the same schedule played unrecorded before the send window "
        f"(default {default}): a fresh Kafka JVM spends its first 20-30 s compiling its "
        "hot paths at twice its later CPU",
    )


def add_generator_arg(p: argparse.ArgumentParser, default: str = "locust") -> None:
    p.add_argument(
        "--generator",
        default=default,
        choices=["locust", "node"],
        help="who plays the users: Locust (every scenario) or Node.js and the official "
        "Socket.IO client (steady dm and group schedules, for rates Locust cannot offer; "
        f"loadtest/nodegen.py); default {default}",
    )


def add_scenario_args(p: argparse.ArgumentParser) -> None:
    """The load and fault options `imlab load` and `imlab sim` share, spelled alike."""
    p.add_argument("--scenario", default="group", choices=list(SCENARIOS))
    p.add_argument("--users", type=int, default=40, help="simulated users (default 40)")
    p.add_argument("--rate", type=float, default=1.0, help="sends per second per user (default 1)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of sending")
    p.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE)
    p.add_argument("--spawn-rate", type=float, default=0.0, help="users started per second")
    p.add_argument(
        "--churn", type=float, default=None, help="fraction of users that drop and come back"
    )
    p.add_argument("--churn-online", type=float, default=2.0, help="mean online spell, s")
    p.add_argument("--churn-offline", type=float, default=1.0, help="mean offline spell, s")
    p.add_argument(
        "--churn-silent", type=float, default=0.5, help="share of drops the server is not told of"
    )
    p.add_argument("--max-drain", type=float, default=30.0, help="cap on the drain, s")
    p.add_argument(
        "--faults",
        default="",
        help="fault spec, e.g. redis-outage:5s@10s,churn:0.2 "
        "(v5 also db-restart:2s@5s, redis-master-kill@5s, token-revoke:3@4s)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="print only the summary")


def scenario_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options `add_scenario_args` parsed, as `LoadOptions` and `SimOptions` take them."""
    return {
        "scenario": args.scenario,
        "users": args.users,
        "rate": args.rate,
        "duration": args.duration,
        "group_size": args.group_size,
        "spawn_rate": args.spawn_rate,
        "churn": args.churn,
        "churn_online": args.churn_online,
        "churn_offline": args.churn_offline,
        "churn_silent": args.churn_silent,
        "max_drain": args.max_drain,
        "faults": args.faults,
        "seed": args.seed,
        "quiet": args.quiet,
    }


def cmd_load(args: argparse.Namespace) -> int:
    """Run one load test; exit 0 when it ran (whatever it found), 2 when it could not."""
    from imlab.cluster import spec_from_args
    from imlab.experiment.faults import FaultSpecError

    try:
        opts = LoadOptions(
            stage=args.stage,
            **scenario_options(args),
            processes=args.processes,
            generator=args.generator,
            warmup=args.warmup or 0.0,
            step_users=args.step_users,
            step_every=args.step_every,
            run_dir=Path(args.run_dir) if args.run_dir else None,
            cluster=spec_from_args(args.stage, args),
            urls=list(args.url),
        )
        run = LoadRun(opts, sys.stdout)
    except (PlanError, FaultSpecError, ValueError) as exc:
        print(f"imlab load: {exc}", file=sys.stderr)
        return 2
    try:
        result = run.execute()
    except (PlanError, LoadRunError) as exc:
        print(f"imlab load: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: everything stopped; unjudged run folder {run.run_dir}")
        return 130
    if args.quiet:
        print(result.summary)
        print(f"run folder: {result.run_dir}")
    return 0
