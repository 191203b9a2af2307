"""Time the checker on a synthetic run folder of about a million events.

The run has group and dm traffic from two recorder processes (two history
files), recipients who catch up by sync, some error acks and a sprinkling of
losses, so every code path of the checker is exercised. Push latency is
random per recipient, so deliveries are reordered and the ordering checks do
real work rather than taking their all-in-order shortcut.

    .venv/bin/python benchmarks/checker_bench.py [--events 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reports.checker import check

USERS = 400
GROUP_SIZE = 20
GROUPS = 40
DURATION_S = 300.0


def generate(run_dir: Path, target_events: int, seed: int = 1) -> int:
    """Write manifest.json and two history files; return the number of events written."""
    rng = random.Random(seed)
    users = [f"u{i:04d}" for i in range(USERS)]
    groups = {f"g{i}": rng.sample(users, GROUP_SIZE) for i in range(GROUPS)}
    t0 = 1_700_000_000.0
    # Events of users u0000..u0199 go to one file, the rest to the other.
    lines: list[list[tuple[float, str]]] = [[], []]

    def emit(user: str, record: dict[str, Any]) -> None:
        lines[int(user[1:]) * 2 // USERS].append((record["t"], json.dumps(record)))

    connects = 150
    for user in users[: connects // 3]:
        for k in range(3):
            emit(user, {"t": t0 + 60.0 * k + rng.random(), "ev": "connect", "user": user})
    n = connects
    seqs: dict[str, int] = {}
    n_msgs = int(target_events / (0.8 * (GROUP_SIZE + 2) + 0.2 * 4))  # events per message
    i = -1
    while n < target_events:
        i += 1
        intended = t0 + DURATION_S * i / n_msgs
        if rng.random() < 0.8:
            gid = rng.choice(list(groups))
            members = groups[gid]
            sender = rng.choice(members)
            conv = f"group:{gid}"
        else:
            members = rng.sample(users, 2)
            sender = members[0]
            conv = "dm:{}:{}".format(*sorted(members))
        msg = f"{sender}-{i}"
        t = intended + rng.expovariate(1 / 0.002)
        emit(
            sender,
            {"t": t, "ev": "send", "user": sender, "conv": conv, "msg": msg, "intended": intended},
        )
        n += 2
        roll = rng.random()
        if roll < 0.01:
            emit(
                sender,
                {
                    "t": t + 0.01,
                    "ev": "ack",
                    "user": sender,
                    "msg": msg,
                    "ok": False,
                    "err": "unavailable",
                    "seq": None,
                },
            )
            continue
        seq = seqs[conv] = seqs.get(conv, 0) + 1
        ack_t = t + rng.expovariate(1 / 0.004)
        emit(
            sender,
            {
                "t": ack_t,
                "ev": "ack",
                "user": sender,
                "msg": msg,
                "ok": True,
                "err": None,
                "seq": seq,
            },
        )
        for user in members:
            if roll > 0.9995 and user != sender:
                continue  # lost
            via = "sync" if rng.random() < 0.02 else "push"
            rt = t + rng.expovariate(1 / (0.01 if via == "push" else 2.0))
            emit(
                user,
                {
                    "t": rt,
                    "ev": "recv",
                    "user": user,
                    "conv": conv,
                    "msg": msg,
                    "seq": seq,
                    "via": via,
                    "sender": sender,
                    "node": "n1",
                },
            )
            n += 1
    for k, out in enumerate(lines):
        out.sort(key=lambda x: x[0])
        text = "\n".join(line for _, line in out) + "\n"
        (run_dir / f"history-{k}.jsonl").write_text(text, encoding="utf-8")
    manifest = {
        "stage": "bench",
        "scenario": "synthetic",
        "params": {"target_events": target_events, "seed": seed},
        "started_at": t0,
        "ended_at": t0 + DURATION_S,
        "drain_end": t0 + DURATION_S + 30,
        "groups": groups,
        "faults": [{"kind": "kill", "target": "server-1", "start": t0 + 100, "end": t0 + 110}],
        "machine": machine(),
        "versions": {"python": platform.python_version()},
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return n


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="generate into this folder and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="checker-bench-") as tmp:
        run_dir = args.keep or Path(tmp)
        run_dir.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        n = generate(run_dir, args.events)
        print(f"generated {n:,} events in {time.perf_counter() - began:.1f} s")
        began = time.perf_counter()
        metrics = check(run_dir)
        elapsed = time.perf_counter() - began
    m = machine()
    print(f"machine: {m['platform']}, {m['cpus']} cpus, Python {m['python']}")
    print(f"check(): {elapsed:.2f} s for {n:,} events = {n / elapsed:,.0f} events/s")
    print("anomalies:", metrics["anomalies"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
