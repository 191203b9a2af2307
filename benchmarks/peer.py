"""v1 against a peer a user might pick instead: a plain Node.js Socket.IO relay with v1's
semantics (benchmarks/node_peer/server.js), loaded by the same imlab open-loop
generator (`imlab load`'s runner, the same plan and checker; by default the Node.js
generator, `--generator locust` for Locust) in one sitting, the two interleaved at each
rate; each one's knee by `imlab capacity`'s finder. Issue #13, item 2.

    .venv/bin/python benchmarks/peer.py                      # 500 and 1,000 sends/s, 8 s each
    .venv/bin/python benchmarks/peer.py --rates 2.5,5,10 --users 200 --duration 8
    .venv/bin/python benchmarks/peer.py --rates 4,8,16,32,64 # the knees, 800-12,800/s

Needs `node` and `npm` on PATH; the first run installs npm's `socket.io` into
`.cache/node-peer/` (`npm install --prefix`). The Node relay runs on a free loopback
port for the whole sitting; v1 is started afresh for each run, as `imlab load` does.
Prints a table (offered, accepted, push p50/p99, lost, the generator's verdict) and
the machine; the run folders go to runs/<time>-peer/.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imlab.cluster import machine_info
from imlab.kafka_dist import cache_dir
from imlab.services import LOOPBACK, free_port, install_signal_handlers
from loadtest.nodegen import NodeGenError, npm_install
from loadtest.runner import LoadOptions, run_load
from reports.knee import Knee, Level, find_knee

ROOT = Path(__file__).resolve().parent.parent
PEER_DIR = ROOT / "benchmarks" / "node_peer"
SOCKET_IO = "socket.io@^4.8.1"


def install_socket_io() -> Path:
    """npm's socket.io in .cache/node-peer/ (once); returns its node_modules."""
    try:
        return npm_install("node-peer", SOCKET_IO, "socket.io")
    except NodeGenError as exc:
        raise SystemExit(f"benchmarks/peer.py: {exc}") from exc


class NodePeer:
    """`node server.js PORT` on a free loopback port, with socket.io from the cache."""

    def __init__(self, modules: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["node", str(PEER_DIR / "server.js"), str(self.port)],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "NODE_PATH": str(modules), "NODE_ENV": "production"},
        )
        deadline = time.time() + 15.0
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the Node peer exited; see {log}:\n{log.read_text()[-2000:]}")
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit(f"the Node peer did not listen within 15 s; see {log}")

    def version(self) -> str:
        pkg = json.loads(
            (cache_dir() / "node-peer/node_modules/socket.io/package.json").read_text()
        )
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
        return f"node {node.strip()}, socket.io {pkg['version']}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()


def one_run(
    target: str,
    peer: NodePeer | None,
    users: int,
    rate: float,
    duration: float,
    root: Path,
    generator: str = "node",
) -> dict[str, Any]:
    opts = LoadOptions(
        generator=generator,
        stage="v1",
        scenario="dm",
        users=users,
        rate=rate,
        duration=duration,
        settle=1.0,
        max_drain=10.0,
        run_dir=root / f"{target}-r{rate:g}",
        quiet=True,
        urls=[peer.url] if peer else [],
        external_pids=[peer.proc.pid] if peer else [],
    )
    result = run_load(opts)
    m, man = result.metrics, result.manifest
    gen = man["load_generator"]
    return {
        "target": target,
        "run_dir": str(result.run_dir),
        "offered": man["params"]["offered_sends_per_s"],
        "accepted": m["throughput"]["accepted_sends_per_s"],
        "p50": m["latency_ms"]["push"]["p50"],
        "p99": m["latency_ms"]["push"]["p99"],
        "lost": m["deliveries"]["lost"],
        "expected": m["deliveries"]["expected"],
        "stage_cpu": (man["stage_cpu"] or {}).get("total_pct_mean"),
        "gen_cpu": (gen["cpu"] or {}).get("busiest_process_pct_mean"),
        "other_cpu": man.get("other_processes_cpu_pct"),
        "generator_limited": gen["verdict"]["generator_limited"],
    }


def knee_of(rows: list[dict[str, Any]], target: str) -> Knee:
    """The knee of one server's rows, by the finder `imlab capacity` uses."""
    levels = [
        Level(r["offered"], r["p99"], r["lost"], bool(r["generator_limited"]), r["accepted"])
        for r in rows
        if r["target"] == target
    ]
    return find_knee(levels)


def _n(x: Any, digits: int = 0) -> str:
    return "-" if x is None else f"{float(x):,.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| server | offered sends/s | accepted sends/s | push p50 ms | push p99 ms | lost "
        "| server CPU % | busiest generator process % | others CPU % | generator the limit? |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {_n(r['offered'])} | {_n(r['accepted'])} | {_n(r['p50'], 1)} "
            f"| {_n(r['p99'], 1)} | {r['lost']} of {r['expected']:,} | {_n(r['stage_cpu'])} "
            f"| {_n(r['gen_cpu'])} | {_n(r['other_cpu'])} "
            f"| {'yes' if r['generator_limited'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=200, help="users, in 1:1 pairs (default 200)")
    ap.add_argument("--rates", default="2.5,5", help="sends/s per user, comma-separated")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of sending per run")
    ap.add_argument("--out", default=None, help="folder for the run folders")
    ap.add_argument(
        "--generator",
        default="node",
        choices=["node", "locust"],
        help="who plays the users (default node: Locust cannot offer the peer's rates)",
    )
    args = ap.parse_args(argv)
    install_signal_handlers()
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    root = Path(args.out) if args.out else ROOT / "runs" / f"{stamp}-peer"
    root.mkdir(parents=True, exist_ok=True)
    modules = install_socket_io()
    peer = NodePeer(modules, root / "node-peer.log")
    rows: list[dict[str, Any]] = []
    started = time.time()
    try:
        versions = peer.version()
        for rate in rates:  # interleaved, so drift of the shared machine hits both alike
            for target, server in (("Node.js relay", peer), ("imlab v1", None)):
                rows.append(
                    one_run(target, server, args.users, rate, args.duration, root, args.generator)
                )
    finally:
        peer.stop()
    mach = machine_info()
    knees = {target: knee_of(rows, target) for target in ("Node.js relay", "imlab v1")}
    text = table(rows) + "\n\n" + "\n".join(f"- {t}: {k.sentence()}" for t, k in knees.items())
    peer_knee, v1_knee = knees["Node.js relay"].knee, knees["imlab v1"].knee
    if peer_knee and v1_knee:
        text += f"\n- v1's knee / the peer's: {v1_knee / peer_knee:.2f} (issue #13 asks >= 0.6)"
    print(text)
    print(
        f"\n{args.users} users in 1:1 pairs, {args.duration:g} s per run, one sitting of "
        f"{time.time() - started:.0f} s, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; peer: {versions}"
    )
    print(f"machine: {json.dumps(mach)}")
    record = {
        "rows": rows,
        "knees": {t: k.to_dict() for t, k in knees.items()},
        "machine": mach,
        "peer": versions,
        "args": vars(args),
    }
    (root / "peer.json").write_text(json.dumps(record, indent=1))
    print(f"run folders: {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
