"""Where the stage processes spend their CPU: one short `imlab load` run per stage, with
`py-spy record` attached to every stage process (servers, gateways, workers) for the send
window. Leaves per process a flame graph (SVG) and py-spy's raw stacks in the run folder,
and prints, per process kind, the self time by group (JSON, Socket.IO framing, logging,
metrics, Redis, Kafka, aiohttp, asyncio, app) and the hottest functions.

    .venv/bin/python benchmarks/profile.py [--stages v1,v4] [--rates 800,200] [--seconds 8]
        [--top 15] [--json out.json]

The rates are offered dm messages per second, below each stage's knee by default.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Run as a script, this folder would come first on sys.path and shadow the stdlib `profile`.
if sys.path and Path(sys.path[0]).resolve() == REPO / "benchmarks":
    sys.path[0] = str(REPO)
else:
    sys.path.insert(0, str(REPO))

from benchmarks.pipeline_cpu import cpu_per_message  # noqa: E402
from imlab import fastjson  # noqa: E402
from imlab.cluster import machine_info  # noqa: E402
from imlab.hotpaths import Profile, flame_svg, parse_raw  # noqa: E402
from imlab.server import DEFAULT_LOOP  # noqa: E402
from imlab.services import install_signal_handlers  # noqa: E402
from loadtest.runner import Hooks, LoadOptions, run_load  # noqa: E402

DEFAULT_RATES = {"v1": 800.0, "v2": 600.0, "v3": 300.0, "v4": 200.0, "v5": 150.0}
SAMPLE_RATE = 100  # py-spy samples per second


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed (pip install -e '.[dev]')")
    return found


class Recorder:
    """Starts one `py-spy record` per stage process when the load run says the users are
    connected (its `ready` hook), for as long as the send window lasts."""

    def __init__(self, run_dir: Path, seconds: float) -> None:
        self.run_dir = run_dir
        self.out = run_dir / "profile"
        self.seconds = seconds
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def start(self) -> None:
        cluster = json.loads((self.run_dir / "cluster.json").read_text())
        self.out.mkdir(exist_ok=True)
        # The window opens 0.5 s after the hook returns; attaching takes a moment too.
        duration = str(math.ceil(self.seconds + 0.5))
        for name, info in cluster["processes"].items():
            raw = self.out / f"{name}.raw"
            argv = [
                py_spy(), "record", "--pid", str(info["pid"]), "--rate", str(SAMPLE_RATE),
                "--duration", duration, "--nonblocking", "--format", "raw", "-o", str(raw),
            ]  # fmt: skip
            log = (self.out / f"{name}.py-spy.log").open("wb")
            self.procs[name] = (subprocess.Popen(argv, stdout=log, stderr=log), raw)

    def finish(self) -> dict[str, Path]:
        """Waits for every py-spy to write its file; the raw files by process name."""
        done: dict[str, Path] = {}
        for name, (proc, raw) in self.procs.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if raw.exists():
                done[name] = raw
            else:
                print(f"  {name}: py-spy wrote nothing (see {raw.with_suffix('.py-spy.log')})")
        return done


def kind_of(process_name: str) -> str:
    return re.sub(r"-?\d+$", "", process_name)


def profile_stage(stage: str, rate: float, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    run_dir = root / stage
    recorder = Recorder(run_dir, args.seconds)
    result = run_load(
        LoadOptions(
            stage=stage,
            scenario="dm",
            users=args.users,
            rate=rate / args.users,
            duration=args.seconds,
            max_drain=15.0,
            run_dir=run_dir,
            quiet=True,
        ),
        hooks=Hooks(ready=recorder.start),
    )
    by_kind: dict[str, Profile] = {}
    for name, raw in recorder.finish().items():
        stacks = parse_raw(raw.read_text().splitlines())
        title = f"{stage} {name}, {rate:g} dm msgs/s"
        (recorder.out / f"{name}.svg").write_text(flame_svg(stacks, title))
        by_kind.setdefault(kind_of(name), Profile()).add(stacks)
    return {
        "rate": rate,
        "run_dir": str(result.run_dir),
        "cpu": cpu_per_message(result.manifest, result.metrics),
        "kinds": {k: p.summary(args.top) for k, p in sorted(by_kind.items())},
    }


def print_stage(stage: str, figures: dict[str, Any]) -> None:
    cpu = figures["cpu"]
    print(f"\n{stage} at {figures['rate']:g} dm msgs/s ({figures['run_dir']}/profile)")
    print(f"  lost {cpu['lost']}, push p99 {cpu['push_p99_ms']} ms")
    for kind, s in figures["kinds"].items():
        us = cpu["us_per_msg"].get(kind)
        print(f"  {kind}: {us} µs/msg, {s['samples']} samples")
        print("    by group: " + ", ".join(f"{g} {v}%" for g, v in s["groups_pct"].items()))
        for row in s["top"]:
            print(f"    {row['self_pct']:5.1f}%  {row['group']:<9} {row['function']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default="v1,v4")
    ap.add_argument("--rates", default=None, help="dm msgs/s per stage, in --stages' order")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", default=None, help="folder for the runs (default: a temp dir)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    install_signal_handlers()
    stages = args.stages.split(",")
    rates = (
        [float(r) for r in args.rates.split(",")]
        if args.rates
        else [DEFAULT_RATES.get(s, 200.0) for s in stages]
    )
    if len(rates) != len(stages):
        raise SystemExit("--rates needs one rate per stage")
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="imlab-profile-"))
    codec = {
        "IMLAB_JSON": os.environ.get("IMLAB_JSON", fastjson.DEFAULT),
        "IMLAB_LOOP": os.environ.get("IMLAB_LOOP", DEFAULT_LOOP),
    }
    out: dict[str, Any] = {
        "machine": machine_info(),
        "seconds": args.seconds,
        "users": args.users,
        "env": codec,
        "stages": {},
    }
    m = out["machine"]
    print(f"machine: {m['hostname']}, {m['cpu_count']} cores (shared; figures are noisy)")
    print("stage processes: " + ", ".join(f"{k}={v}" for k, v in codec.items()))
    for stage, rate in zip(stages, rates, strict=True):
        out["stages"][stage] = profile_stage(stage, rate, args, root)
        print_stage(stage, out["stages"][stage])
    (root / "profile.json").write_text(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
