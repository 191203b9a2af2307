"""CPU per message (µs/msg) of every process kind of v3 and v4 at a fixed offered rate:
one short `imlab load` run per stage; the CPU the sampler saw in the send window
(manifest `stage_cpu`), per process kind, divided by the messages sent in it.
Prints the figures and the machine; `--json` saves them.

    .venv/bin/python benchmarks/pipeline_cpu.py [--rate 400] [--seconds 6] [--json out.json]

Kinds are the stage's processes by name (server, gateway, worker); everything else the
stage runs (Redis, the Kafka JVMs) is summed as `services`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imlab.cluster import machine_info
from imlab.services import install_signal_handlers
from loadtest.runner import LoadOptions, run_load


def cpu_per_message(manifest: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """µs of CPU per message sent, per process kind, from one run's manifest and metrics."""
    seconds = float(manifest["params"]["duration"])
    sent = int(metrics["sends"]["acked_ok"]) or 1
    kind_of = {
        str(info["pid"]): re.sub(r"-?\d+$", "", name)
        for name, info in manifest["cluster"]["processes"].items()
    }
    per_pid = (manifest.get("stage_cpu") or {}).get("per_process_pct_mean", {})
    pct: dict[str, float] = {}
    for pid, p in per_pid.items():
        kind = kind_of.get(pid, "services")
        pct[kind] = pct.get(kind, 0.0) + float(p)
    return {
        "messages": sent,
        "seconds": seconds,
        "us_per_msg": {k: round(v / 100.0 * seconds * 1e6 / sent, 1) for k, v in pct.items()},
        "pct_of_a_core": {k: round(v, 1) for k, v in pct.items()},
        "push_p99_ms": ((metrics.get("latency_ms") or {}).get("push") or {}).get("p99"),
        "lost": metrics["deliveries"]["lost"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=400.0, help="offered msgs/s")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--stages", default="v3,v4")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    install_signal_handlers()
    out: dict[str, Any] = {"machine": machine_info(), "rate": args.rate, "stages": {}}
    root = Path(tempfile.mkdtemp(prefix="imlab-pipeline-cpu-"))
    for stage in args.stages.split(","):
        result = run_load(
            LoadOptions(
                stage=stage,
                scenario="dm",
                users=args.users,
                rate=args.rate / args.users,
                duration=args.seconds,
                max_drain=15.0,
                run_dir=root / stage,
                quiet=True,
            )
        )
        figures = cpu_per_message(result.manifest, result.metrics)
        figures["run_dir"] = str(result.run_dir)
        out["stages"][stage] = figures
    m = out["machine"]
    print(f"machine: {m['hostname']}, {m['cpu_count']} cores (shared; figures are noisy)")
    print(f"offered {args.rate:g} dm msgs/s for {args.seconds:g}s")
    for stage, f in out["stages"].items():
        kinds = "  ".join(f"{k} {v} µs/msg" for k, v in sorted(f["us_per_msg"].items()))
        print(f"{stage}: {kinds}  (push p99 {f['push_p99_ms']} ms, lost {f['lost']})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
