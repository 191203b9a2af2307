"""Issue 15's proof: real v5 (and v4 beside it, `--with-v4`) under every fault kind, each
injected `--injections` times (20 by default) across runs, judged by the same checker
as every other run. A kind holds as many injections per run as its fault spec allows
(three Redis outages, two master kills, two broker restarts, two crashes of three
gateways or workers; a run-long fault, `kafka-loss` or `churn`, is one per run), so
each kind takes ceil(injections / per run) runs.

    .venv/bin/python benchmarks/v5_proof.py                        # full size: see below
    .venv/bin/python benchmarks/v5_proof.py --with-v4
    .venv/bin/python benchmarks/v5_proof.py --injections 1 --kinds kafka-loss,crash-gateway

Full size is 97 v5 runs (about 20 s of sends each); `--with-v4` doubles it. The runs
are `imlab compare`'s (`imlab_app.compare.run_cases`): one after another, the next
starting its stage while the one before finishes, never two measured at once.

Prints one table per stage: fault kind, injections (verified by the injector), runs,
acked sends, lost, duplicates shown, seqs reused, order anomalies (seq backwards plus
pairs of members who saw two messages in opposite orders), the runs' verdicts and
whether the kind's proof holds. Writes `runs/<time>-proof-v5/`: `runs/` (every run's
folder), `summary.json` and `summary.md`, with the machine and the git commit.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imlab.cluster import machine_info, package_versions
from imlab.experiment.faults import RUN_LONG
from imlab.experiment.runfolder import new_run_dir
from imlab.services import install_signal_handlers
from imlab_app.compare import BrokerChoice, Case, SharedServices, run_cases

FIRST = 2.0  # seconds into the send window of the first injection
TAIL = 2.0  # seconds of sending after the last injection's window closed
USERS = 16
RATE = 2.0  # sends/s per user: well below every knee (as compare's fault runs)


@dataclass(frozen=True)
class Kind:
    """One fault kind of the proof: its spec per injection (`{at}` its start, `{i}` its
    number in the run), how many fit one run and how far apart, and the stage's shape."""

    name: str
    spec: str
    fault: str  # the kind the injector records in the manifest
    per_run: int = 1
    spacing: float = 0.0
    window: float = 0.0
    brokers: int = 0
    servers: int | None = None
    workers: int | None = None
    v4_spec: str | None = None  # where v4 spells the same blow otherwise
    v4_fault: str | None = None
    stages: tuple[str, ...] = ("v4", "v5")

    def spec_for(self, stage: str) -> tuple[str, str]:
        if stage == "v4" and self.v4_spec is not None:
            return self.v4_spec, self.v4_fault or self.fault
        return self.spec, self.fault


KINDS: tuple[Kind, ...] = (
    Kind("redis-outage", "redis-outage:2s@{at}", "redis-outage", 4, 6.0, 2.0),
    # v5: the Sentinel set's master SIGKILLed, the replica promoted, the node back after 5 s
    # as a replica. v4 has one Redis: killed and started again (with its AOF, as the runner
    # keeps it for a restart).
    Kind(
        "redis-master-kill",
        "redis-master-kill@{at}",
        "redis-master-kill",
        4,
        10.0,
        5.0,
        v4_spec="redis-restart:3s@{at}",
        v4_fault="redis-restart",
    ),
    # One broker: the whole cluster stopped (a controlled shutdown) and started again.
    Kind("broker-restart", "broker-down:3s@{at}", "broker-down", 3, 15.0, 3.0, brokers=1),
    # Three brokers (replication factor 3): the first one SIGKILLed, then started again.
    Kind("broker-kill", "broker-kill:3s@{at}", "broker-kill", 3, 15.0, 3.0, brokers=3),
    Kind("kafka-loss", "kafka-loss:0.05", "kafka-loss"),
    Kind("crash-gateway", "crash:gateway-{i}@{at}", "crash", 3, 5.0, 0.0, servers=4),
    Kind("crash-worker", "crash:worker-{i}@{at}", "crash", 3, 5.0, 0.0, workers=4),
    Kind("churn", "churn:0.5", "churn"),
)
EXTRA: tuple[Kind, ...] = (
    Kind("db-restart", "db-restart:2s@{at}", "db-restart", 4, 8.0, 2.0, stages=("v5",)),
    # Three users' tokens revoked: they are shut out for the rest of the run, so one per run.
    Kind("token-revoke", "token-revoke:3@{at}", "token-revoke", 1, stages=("v5",)),
)
BY_NAME = {k.name: k for k in KINDS + EXTRA}


def fault_spec(kind: Kind, stage: str, n: int) -> str:
    """The spec of one run holding `n` injections of `kind`."""
    template, _ = kind.spec_for(stage)
    if "{at}" not in template:
        return template
    return ",".join(template.format(at=f"{FIRST + i * kind.spacing:g}s", i=i) for i in range(n))


def run_duration(kind: Kind, n: int, duration: float) -> float:
    """The send window: `duration`, or longer where the run's injections need it."""
    if kind.fault in RUN_LONG:
        return max(duration, 20.0)
    return max(duration, FIRST + (n - 1) * kind.spacing + kind.window + TAIL)


def plan_proof(
    stages: Sequence[str],
    kinds: Sequence[Kind],
    injections: int,
    duration: float,
    long_runs: int = 2,
) -> list[tuple[Kind, Case]]:
    """Every run of the proof, stage by stage and kind by kind. A run-long fault
    (`kafka-loss`, `churn`) injects many blows in one run (each dropped publish, each
    dropped connection): it gets `long_runs` runs, and its blows are counted from them."""
    cases: list[tuple[Kind, Case]] = []
    for stage in stages:
        for kind in kinds:
            if stage not in kind.stages:
                continue
            per_run = max(1, min(kind.per_run, injections))
            runs = math.ceil(injections / per_run)
            if kind.fault in RUN_LONG:
                per_run, runs = injections, long_runs
            left = injections
            for _ in range(runs):
                n = min(per_run, left)
                left -= n
                cases.append(
                    (
                        kind,
                        Case(
                            "real",
                            stage,
                            "group",
                            USERS,
                            RATE,
                            run_duration(kind, n, duration),
                            fault_spec(kind, stage, n),
                            brokers=kind.brokers,
                            servers=kind.servers,
                            workers=kind.workers,
                        ),
                    )
                )
    return cases


# ---------------------------------------------------------------- judging


def run_figures(run_dir: Path, fault: str) -> dict[str, Any]:
    """One run's figures for the proof, from its manifest.json and metrics.json."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    records = [f for f in manifest.get("faults") or [] if f.get("kind") == fault]
    acked = int(metrics.get("sends", {}).get("acked_ok") or 0)
    blows: int | None = None
    if fault == "churn":  # every connection the churn dropped is one blow
        blows = int(metrics.get("connections", {}).get("disconnects") or 0)
    elif fault == "kafka-loss":  # each publish dropped with P; every acked send published
        rate = float(str(manifest.get("params", {}).get("faults", "")).split(":")[-1] or 0)
        blows = round(rate * acked)
    an = metrics.get("anomalies", {})

    def count(key: str) -> int | None:
        v = an.get(key)
        return None if v is None else int(v)

    order = [count("seq_backwards"), count("order_disagreements")]
    return {
        "run_dir": str(run_dir),
        "injections": len(records) if blows is None else blows,
        "verified": sum(1 for f in records if f.get("verified", True)) if blows is None else blows,
        "blows_counted": None
        if blows is None
        else ("expected" if fault == "kafka-loss" else "counted"),
        "fault_detail": [f.get("detail") for f in records if f.get("detail")],
        "attempted": metrics.get("sends", {}).get("attempted"),
        "acked_ok": metrics.get("sends", {}).get("acked_ok"),
        "never_acked": metrics.get("sends", {}).get("never_acked"),
        "expected_deliveries": metrics.get("deliveries", {}).get("expected"),
        "delivered": metrics.get("deliveries", {}).get("delivered"),
        "sync_recovered": metrics.get("deliveries", {}).get("sync"),
        "lost": count("lost"),
        "duplicated": count("duplicated"),
        "unexpected": count("unexpected"),
        "seq_reused": count("seq_reused"),
        "order": None if None in order else sum(o for o in order if o is not None),
        "fifo_violations": count("fifo_violations"),
        "verdict": metrics.get("verdict", {}).get("verdict"),
        "push_p99_ms": metrics.get("summary", {}).get("push_p99_ms"),
    }


PROPERTIES = ("lost", "duplicated", "seq_reused", "order")


def kind_row(kind: str, target: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One line of a stage's table: the kind's runs summed up, and whether it holds."""
    ok = [r for r in runs if r.get("figures")]
    figs = [r["figures"] for r in ok]

    def total(key: str) -> int | None:
        values = [f.get(key) for f in figs]
        return None if not figs or None in values else sum(values)

    row: dict[str, Any] = {
        "kind": kind,
        "target": target,
        "runs": len(runs),
        "failed_runs": len(runs) - len(ok),
        "injections": sum(f["injections"] for f in figs),
        "verified": sum(f["verified"] for f in figs),
        "acked_ok": total("acked_ok"),
        "lost": total("lost"),
        "duplicated": total("duplicated"),
        "seq_reused": total("seq_reused"),
        "order": total("order"),
        "unexpected": total("unexpected"),
        "fifo_violations": total("fifo_violations"),
        "verdicts": dict(Counter(str(f["verdict"]) for f in figs)),
    }
    counts = [row[p] for p in PROPERTIES]
    if any(c for c in counts if c):
        row["proof"] = "fails"
    elif None in counts or row["failed_runs"] or row["verified"] < target:
        row["proof"] = "short"  # not enough judged: a failed run or an injection missing
    else:
        row["proof"] = "holds"
    return row


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(stage: str, rows: list[dict[str, Any]]) -> str:
    head = ("fault kind", "injections", "runs", "acked sends", "lost", "duplicates shown",
            "seqs reused", "order anomalies", "verdicts", "proof")  # fmt: skip
    lines = [f"### {stage}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---" for _ in head) + "|"]  # fmt: skip
    for r in rows:
        inj = f"{r['verified']}/{r['target']}"
        if r["injections"] != r["verified"]:
            inj += f" ({r['injections']} tried)"
        runs = f"{r['runs']}" + (f" ({r['failed_runs']} failed)" if r["failed_runs"] else "")
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(r["verdicts"].items())) or "-"
        cells = (r["kind"], inj, runs, _fmt(r["acked_ok"]), _fmt(r["lost"]),
                 _fmt(r["duplicated"]), _fmt(r["seq_reused"]), _fmt(r["order"]),
                 verdicts, r["proof"])  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise(
    planned: Sequence[tuple[Kind, Case]], results: Sequence[dict[str, Any]], target: int
) -> dict[str, list[dict[str, Any]]]:
    """Per stage, one row per kind, in the order the kinds were run."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (kind, case), result in zip(planned, results, strict=True):
        _, fault = kind.spec_for(case.stage)
        entry = dict(result)
        if result.get("ok"):
            try:
                entry["figures"] = run_figures(Path(result["run_dir"]), fault)
            except (OSError, ValueError) as exc:
                entry["ok"] = False
                entry["error"] = f"unreadable run folder: {exc}"
        by.setdefault((case.stage, kind.name), []).append(entry)
    tables: dict[str, list[dict[str, Any]]] = {}
    for (stage, kind), runs in by.items():
        row = kind_row(kind, target, runs)
        row["runs_detail"] = runs
        tables.setdefault(stage, []).append(row)
    return tables


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--injections", type=int, default=20, help="per kind and stage (20)")
    ap.add_argument(
        "--duration",
        type=float,
        default=12.0,
        help="seconds of sends per run, at least (longer where the windows need)",
    )
    names = ",".join(k.name for k in KINDS)
    ap.add_argument("--kinds", default=names,
                    help=f"of {names} (and v5 only: db-restart, token-revoke)")  # fmt: skip
    ap.add_argument("--with-v4", action="store_true", help="run v4 through the same kinds")
    ap.add_argument("--long-runs", type=int, default=2,
                    help="runs of each run-long fault (kafka-loss, churn), 20 s each")  # fmt: skip
    ap.add_argument("--broker", choices=("auto", "kafka", "tansu"), default="auto")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="output folder (default runs/<time>-proof-v5)")
    args = ap.parse_args(argv)
    install_signal_handlers()  # a SIGTERM stops every stage it started, nothing orphaned
    unknown = [k for k in args.kinds.split(",") if k.strip() and k.strip() not in BY_NAME]
    if unknown:
        ap.error(f"unknown kind(s) {', '.join(unknown)}; the kinds are {', '.join(BY_NAME)}")
    if args.injections < 1:
        ap.error("--injections must be at least 1")
    kinds = [BY_NAME[k.strip()] for k in args.kinds.split(",") if k.strip()]
    stages = ("v5", "v4") if args.with_v4 else ("v5",)
    from imlab.brokers import resolve_kind

    broker = BrokerChoice(resolve_kind(args.broker), 1)
    if broker.kind == "tansu" and any(k.brokers > 1 for k in kinds):
        ap.error("broker-kill needs three Apache Kafka brokers; Tansu runs as one node")
    planned = plan_proof(stages, kinds, args.injections, args.duration, args.long_runs)
    cases = [case for _, case in planned]
    out_dir = Path(args.out) if args.out else new_run_dir("proof", "v5")
    out_dir.mkdir(parents=True, exist_ok=True)
    send_s = sum(c.duration for c in cases)
    print(f"v5 proof: {len(cases)} real runs ({send_s:.0f}s of sends), "
          f"{args.injections} injection(s) per kind, on {broker.kind}; into {out_dir}",
          flush=True)  # fmt: skip
    started = time.time()
    shared = SharedServices(out_dir / "shared-services", broker)
    try:
        results = run_cases(cases, out_dir / "runs", args.seed, sys.stdout, broker, shared)
    finally:
        shared.stop()
    took = time.time() - started
    tables = summarise(planned, results, args.injections)
    text = "\n\n".join(markdown(stage, rows) for stage, rows in tables.items())
    holds = all(r["proof"] == "holds" for rows in tables.values() for r in rows)
    summary = {
        "started_at": started,
        "seconds": round(took, 1),
        "seconds_per_run": round(took / max(1, len(cases)), 1),
        "machine": machine_info(),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "broker": broker.kind,
        "args": vars(args),
        "kinds": [asdict(k) for k in kinds],
        "cases": [asdict(c) for c in cases],
        "tables": tables,
        "holds": holds,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    m = machine_info()
    header = (f"# v5 proof ({time.strftime('%Y-%m-%d %H:%M', time.localtime(started))})\n\n"
              f"{len(cases)} runs in {took:.0f}s on {m.get('hostname')}, "
              f"{m.get('cpu_count')} cores, broker {broker.kind}, "
              f"commit {(summary['git_commit'] or '?')[:10]}\n\n")  # fmt: skip
    (out_dir / "summary.md").write_text(header + text + "\n")
    print("\n" + text)
    verdict = "holds" if holds else "does not hold"
    print(f"\n{len(cases)} runs in {took:.0f}s ({summary['seconds_per_run']}s each); "
          f"proof {verdict}\nsummary: {out_dir / 'summary.md'}")  # fmt: skip
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
