"""`imlab capacity`: an open-loop ladder of rising offered rates against one stage, one
`imlab load` run per level (each in its own folder under one parent folder), stopped
once past the knee (reports/knee.py); leaves `capacity.json` and `capacity.md` in the
parent folder and prints the summary, saying when the load generator was the limit.

`--stages v1,v2,...` runs the ladders of several stages one after another (they share
the machine's cores with the generator, so never two at once) into one folder, then
builds the report of them all (its capacity section: reports/figures/capacity.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from imlab.cluster import ClusterSpec, machine_info
from imlab.experiment.runfolder import new_run_dir
from imlab.experiment.scenarios import PlanError
from loadtest.runner import LoadOptions, LoadResult, LoadRunError, run_load
from reports.knee import DEFAULT_THRESHOLD_MS, Knee, Level, find_knee, past_knee

# A fresh Apache Kafka JVM under 400 records/s used 101 % of a core in its first 10 s,
# 54 % in the next 10, 33 % in the next and 26-28 % from then on (its JIT compiling):
# a level measured cold measures the compiler. 20 s of the level's own schedule first.
DEFAULT_WARMUP = 20.0


@dataclass
class CapacityOptions:
    stage: str
    scenario: str = "dm"
    threshold_ms: float = DEFAULT_THRESHOLD_MS
    start: float = 250.0  # msgs/s offered at the first level
    factor: float = 2.0
    max_rate: float = 8000.0
    level_seconds: float = 8.0
    users: int = 200
    group_size: int = 8
    processes: int = 0
    # Node.js by default: one Locust process per core gives out at 3,200-6,400 msgs/s
    # on this machine, below twice v1's knee; Node offered 12,800 at 55 % of a core.
    generator: str = "node"
    warmup: float = 0.0  # seconds of unrecorded schedule before each level's window
    max_drain: float = 15.0
    refine: int = 0  # levels added between the knee and the first failing level
    parent: Path | None = None
    cluster: ClusterSpec | None = None


def rates(start: float, factor: float, max_rate: float) -> list[float]:
    """The ladder's offered rates: start, start*factor, ... up to max_rate (included)."""
    if start <= 0 or factor <= 1.0 or max_rate < start:
        raise ValueError("need 0 < --start <= --max and --factor > 1")
    out = [start]
    while out[-1] * factor <= max_rate * (1 + 1e-9):
        out.append(round(out[-1] * factor, 3))
    return out


def level_of(result: LoadResult) -> Level:
    m, params = result.metrics, result.manifest["params"]
    deliveries = m.get("deliveries") or {}
    push = (m.get("latency_ms") or {}).get("push") or {}
    return Level(
        offered=float(params["offered_sends_per_s"]),
        p99_ms=push.get("p99") if push.get("count") else None,
        lost=int(deliveries.get("lost", 0)),
        generator_bound=bool(result.verdict.get("generator_limited")),
        delivered_per_s=(m.get("throughput") or {}).get("deliveries_per_s"),
        run_dir=str(result.run_dir),
        why=tuple(result.verdict.get("reasons", ())),
    )


def run_capacity(opts: CapacityOptions, out: TextIO | None = None) -> dict[str, Any]:
    """Climb the ladder, stop past the knee, write and print the summary; returns it."""
    out = out or sys.stdout
    parent = opts.parent or new_run_dir("capacity", opts.stage)
    parent.mkdir(parents=True, exist_ok=True)
    levels: list[Level] = []

    def level(rate: float) -> None:
        n = len(levels) + 1
        print(f"level {n}: {rate:g} msgs/s offered for {opts.level_seconds:g}s", file=out)
        result = run_load(
            LoadOptions(
                stage=opts.stage,
                scenario=opts.scenario,
                users=opts.users,
                rate=rate / opts.users,
                duration=opts.level_seconds,
                group_size=opts.group_size,
                processes=opts.processes,
                generator=opts.generator,
                warmup=opts.warmup,
                max_drain=opts.max_drain,
                run_dir=parent / f"L{n}-{rate:g}",
                cluster=opts.cluster,
                quiet=True,
            ),
            out,
        )
        levels.append(level_of(result))
        print("  " + _row(levels[-1], opts.threshold_ms), file=out, flush=True)

    for rate in rates(opts.start, opts.factor, opts.max_rate):
        level(rate)
        if past_knee(levels, opts.threshold_ms):
            break
    for _ in range(opts.refine):  # bisect (geometrically) between the knee and the failure
        knee = find_knee(levels, opts.threshold_ms)
        if knee.status != "knee" or knee.knee is None or knee.first_failing is None:
            break
        if knee.first_failing / knee.knee < 1.1:
            break
        level(round(math.sqrt(knee.knee * knee.first_failing), 1))
    knee = find_knee(levels, opts.threshold_ms)
    summary = _summary(opts, levels, knee)
    (parent / "capacity.json").write_text(json.dumps(summary, indent=1))
    text = markdown(summary)
    (parent / "capacity.md").write_text(text)
    print(text, file=out)
    print(f"capacity folder: {parent}", file=out)
    summary["folder"] = str(parent)
    return summary


def _summary(opts: CapacityOptions, levels: list[Level], knee: Knee) -> dict[str, Any]:
    return {
        "stage": opts.stage,
        "scenario": opts.scenario,
        "users": opts.users,
        "generator": opts.generator,
        "warmup_s": opts.warmup,
        "level_seconds": opts.level_seconds,
        "threshold_ms": opts.threshold_ms,
        "ladder": {"start": opts.start, "factor": opts.factor, "max": opts.max_rate},
        "levels": [asdict(lv) for lv in levels],
        "knee": knee.to_dict(),
        "generator_was_the_limit": knee.status == "generator-bound",
        "machine": machine_info(),
    }


def _row(lv: Level, threshold_ms: float) -> str:
    p99 = "-" if lv.p99_ms is None else f"{lv.p99_ms:.1f}"
    ok = "ok" if lv.passes(threshold_ms) else "over"
    gen = "  GENERATOR-BOUND" if lv.generator_bound else ""
    return f"{lv.offered:g} msgs/s: push p99 {p99} ms, lost {lv.lost}, {ok}{gen}"


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# Capacity of {summary['stage']} ({summary['scenario']})",
        "",
        f"{summary['knee']['sentence']}.",
        "",
        "| offered msgs/s | delivered/s | push p99 ms | lost | generator-bound | run |",
        "|--:|--:|--:|--:|:--|:--|",
    ]
    for lv in summary["levels"]:
        p99 = "-" if lv["p99_ms"] is None else f"{lv['p99_ms']:.1f}"
        got = "-" if lv["delivered_per_s"] is None else f"{lv['delivered_per_s']:g}"
        gen = "yes: " + "; ".join(lv["why"]) if lv["generator_bound"] else "no"
        run = Path(lv["run_dir"]).name
        lines.append(f"| {lv['offered']:g} | {got} | {p99} | {lv['lost']} | {gen} | {run} |")
    m = summary["machine"]
    lines += ["", f"Machine: {m.get('hostname')}, {m.get('cpu_count')} cores, shared with the "
              "load generator."]  # fmt: skip
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- several stages


def run_capacity_all(
    stages: list[str],
    opts_for: Callable[[str, Path], CapacityOptions],
    out_dir: Path,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Each stage's ladder into `out_dir/<stage>/`, one stage after another, then the
    report of them all in `out_dir/report/`; writes capacity-all.json and .md."""
    out = out or sys.stdout
    out_dir.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count()
    print(
        f"capacity of {', '.join(stages)}: one stage after another, never two at once: "
        f"they share this machine's {cores} cores with the load generator",
        file=out,
        flush=True,
    )
    record: dict[str, Any] = {
        "stages": stages,
        "sequential": True,
        "started_at": time.time(),
        "machine": {**machine_info(), "loadavg_start": list(os.getloadavg())},
        "ladders": [],
    }
    for n, stage in enumerate(stages, 1):
        opts = opts_for(stage, out_dir / stage)
        print(f"\n== {stage} ({n} of {len(stages)}), scenario {opts.scenario} ==", file=out)
        t0 = time.time()
        entry: dict[str, Any] = {"stage": stage, "folder": str(out_dir / stage)}
        try:
            summary = run_capacity(opts, out)
            entry["knee"] = summary["knee"]
            entry["generator_bound"] = [
                lv["offered"] for lv in summary["levels"] if lv["generator_bound"]
            ]
            entry["levels"] = len(summary["levels"])
        except (PlanError, LoadRunError, ValueError) as exc:
            entry["error"] = str(exc)  # the others still run; the report says what is missing
            print(f"{stage}: no ladder: {exc}", file=out)
        entry["seconds"] = round(time.time() - t0, 1)
        record["ladders"].append(entry)
        record["scenario"] = opts.scenario
    record["ended_at"] = time.time()
    record["machine"]["loadavg_end"] = list(os.getloadavg())
    done = [e for e in record["ladders"] if "knee" in e]
    if done:
        from reports.report import build_report

        report = build_report([out_dir], out_dir / "report")
        record["report"] = str(report.html)
    (out_dir / "capacity-all.json").write_text(json.dumps(record, indent=1))
    text = markdown_all(record)
    (out_dir / "capacity-all.md").write_text(text)
    print("\n" + text, file=out)
    if done:
        print(f"report: {record['report']}", file=out)
    print(f"capacity folder: {out_dir}", file=out)
    return record


def markdown_all(record: dict[str, Any]) -> str:
    minutes = (record["ended_at"] - record["started_at"]) / 60
    m = record["machine"]
    lines = [
        f"# Capacity of {', '.join(record['stages'])} ({record.get('scenario')})",
        "",
        f"The stages ran one after another, never two at once, in one sitting of "
        f"{minutes:.1f} min on {m.get('hostname')} ({m.get('cpu_count')} cores, shared with "
        f"the load generator; load average {m['loadavg_start'][0]:.2f} before, "
        f"{m['loadavg_end'][0]:.2f} after).",
        "",
        "| stage | knee msgs/s | verdict | generator-bound at msgs/s | levels | minutes |",
        "|:--|--:|:--|:--|--:|--:|",
    ]
    for e in record["ladders"]:
        mins = f"{e['seconds'] / 60:.1f}"
        if "knee" not in e:
            lines.append(f"| {e['stage']} | - | no ladder: {e['error']} | - | - | {mins} |")
            continue
        k = e["knee"]
        knee = "-" if k["knee"] is None else f"{k['knee']:g}"
        gen = ", ".join(f"{x:g}" for x in e["generator_bound"]) or "none"
        lines.append(
            f"| {e['stage']} | {knee} | {k['sentence']} | {gen} | {e['levels']} | {mins} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the command


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from imlab.cluster import add_cluster_args
    from imlab.stages import names
    from loadtest.cli import add_generator_arg, add_warmup_arg

    p = sub.add_parser(
        "capacity",
        help="find a stage's knee with a ladder of rising offered rates",
        description=(
            "Run `imlab load` at rising offered rates (open loop) until the push p99 "
            "crosses the threshold or messages are lost, twice in a row; report the knee "
            "(the highest rate that held) and whether the load generator was the limit."
        ),
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--stage", choices=names())
    which.add_argument(
        "--stages",
        type=_stage_list,
        help="comma-separated stages, e.g. v1,v2,v3,v4,v5: their ladders one after another "
        "(never two at once), then the report of them all in OUT/report/",
    )
    p.add_argument("--scenario", default="dm", choices=["dm", "group"])
    p.add_argument("--threshold-ms", type=float, default=DEFAULT_THRESHOLD_MS)
    p.add_argument("--start", type=float, default=250.0, help="first offered msgs/s")
    p.add_argument("--factor", type=float, default=2.0, help="each level offers this much more")
    p.add_argument("--max", type=float, default=8000.0, dest="max_rate", help="highest msgs/s")
    p.add_argument("--level-seconds", type=float, default=8.0, help="seconds of sending a level")
    p.add_argument("--users", type=int, default=200)
    p.add_argument(
        "--refine",
        type=int,
        default=0,
        help="after the ladder, this many levels bisecting (geometrically) between the knee "
        "and the first failing rate: 2 pins the knee within 19 %% on a doubling ladder",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="generator processes (0: Locust one a core, Node one)",
    )
    add_generator_arg(p, default="node")
    add_warmup_arg(p, f"{DEFAULT_WARMUP:g}")
    p.add_argument("--run-dir", default=None, help="parent folder (default runs/<time>-capacity-)")
    p.add_argument(
        "--out",
        default=None,
        help="with --stages: the folder for every ladder and the report "
        "(default runs/<time>-capacity-all)",
    )
    add_cluster_args(p)
    p.set_defaults(func=cmd_capacity)


def _stage_list(text: str) -> list[str]:
    from imlab.stages import names

    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in names()]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise argparse.ArgumentTypeError(
            f"need distinct stages from {', '.join(names())}; got {text!r}"
        )
    return chosen


def cmd_capacity(args: argparse.Namespace) -> int:
    from imlab.cluster import spec_from_args

    def opts_for(stage: str, parent: Path | None) -> CapacityOptions:
        return CapacityOptions(
            stage=stage,
            scenario=args.scenario,
            threshold_ms=args.threshold_ms,
            start=args.start,
            factor=args.factor,
            max_rate=args.max_rate,
            level_seconds=args.level_seconds,
            users=args.users,
            processes=args.processes,
            generator=args.generator,
            warmup=DEFAULT_WARMUP if args.warmup is None else args.warmup,
            refine=args.refine,
            parent=parent,
            cluster=spec_from_args(stage, args),
        )

    try:
        if args.stages:
            rates(args.start, args.factor, args.max_rate)  # a bad ladder fails before any run
            out_dir = Path(args.out) if args.out else new_run_dir("capacity", "all")
            record = run_capacity_all(args.stages, opts_for, out_dir)
            return 0 if all("knee" in e for e in record["ladders"]) else 1
        run_capacity(opts_for(args.stage, Path(args.run_dir) if args.run_dir else None))
    except (PlanError, LoadRunError, ValueError) as exc:
        print(f"imlab capacity: {exc}", file=sys.stderr)
        return 2
    return 0
