"""What the seed's topic-per-group design costs with each way of sharing partitions:
Kafka's own consumer groups (`--ownership kafka`) against rendezvous hashing over
Redis (`--ownership redis`), on real Apache Kafka, with v4 (one gateway, two workers).

For each ownership and each number of existing groups (10, 100, 1,000 by default):

1. the groups are created through the gateway (each is a Kafka topic);
2. steady 1:1 traffic runs (DM pairs, `--rate` sends/s in all), push latency from
   the send time recorded for every message;
3. a new group is created and its first message sent at once: the *first-message
   latency* of a new group, and the *pause* its topic causes to everyone else (the
   worst DM push latency in the 5 s after the creation, against the median before);
4. one worker is killed (SIGKILL): the *hand-over*, the worst DM push latency
   after the kill (the dead worker's partitions wait until someone takes them).

    .venv/bin/python benchmarks/kafka_groups.py            # about 6 min here
    .venv/bin/python benchmarks/kafka_groups.py --groups 10 --quick

Prints a table and writes `runs/<time>-kafka-groups/results.json` with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imlab import auth
from imlab import protocol as p
from imlab.client import AsyncChatClient
from imlab.cluster import Cluster, ClusterSpec
from imlab.protocol import Message

PAIRS = 10


class Probe:
    """DM pairs sending at a steady rate; every push's latency by arrival time."""

    def __init__(self, endpoints: list[str], secret: str, rate: float) -> None:
        self.rate = rate
        self.samples: list[tuple[float, float]] = []  # (arrival, latency s)
        self.clients: list[AsyncChatClient] = []
        self.endpoints, self.secret = endpoints, secret

    def client(self, user: str) -> AsyncChatClient:
        c = AsyncChatClient(user, self.endpoints, token=auth.issue_token(user, self.secret))
        self.clients.append(c)
        return c

    async def start(self) -> None:
        for i in range(PAIRS):
            a, b = self.client(f"pa{i}"), self.client(f"pb{i}")
            b.on_message = self._seen
            await a.connect()
            await b.connect()
        self._task = asyncio.create_task(self._send())

    def _seen(self, m: Message, via: str) -> None:
        now = time.time()
        if m.conv.startswith("dm:"):
            self.samples.append((now, now - m.sent_at))

    async def _send(self) -> None:
        senders = self.clients[0::2]
        gap, k = 1.0 / self.rate, 0
        pending: set[asyncio.Task[Any]] = set()
        while True:
            c = senders[k % len(senders)]
            task = asyncio.create_task(c.send(to=f"pb{k % len(senders)}", body=f"p{k}"))
            pending.add(task)
            task.add_done_callback(pending.discard)
            k += 1
            await asyncio.sleep(gap)

    def window(self, t0: float, t1: float) -> list[float]:
        return [lat * 1000 for t, lat in self.samples if t0 <= t < t1]

    async def close(self) -> None:
        self._task.cancel()
        for c in self.clients:
            await c.close()


def median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 1) if xs else None


def worst(xs: list[float]) -> float | None:
    return round(max(xs), 1) if xs else None


async def measure(cluster: Cluster, groups: int, rate: float) -> dict[str, Any]:
    secret = cluster.spec.secret
    owner = AsyncChatClient("owner", cluster.endpoints, token=auth.issue_token("owner", secret))
    member = AsyncChatClient("member", cluster.endpoints, token=auth.issue_token("member", secret))
    await owner.connect()
    await member.connect()
    t0 = time.time()
    for _ in range(groups):
        ack = await owner.create_group(["member"])
        assert ack["ok"], ack
    created_in = time.time() - t0
    probe = Probe(cluster.endpoints, secret, rate)
    await probe.start()
    await asyncio.sleep(8.0)  # every existing topic assigned and the traffic steady
    before = probe.window(time.time() - 5.0, time.time())

    first: dict[str, float] = {}
    created = time.time()
    ack = await owner.create_group(["member"])
    gid = ack["group_id"]
    conv = p.group_conv(gid)
    sent = time.time()
    assert (await owner.send(group=gid, body="first"))["ok"]
    await member.wait_for(lambda: len(member.messages(conv)) >= 1, 60, "the first message")
    first["latency_ms"] = (time.time() - sent) * 1000
    await asyncio.sleep(max(0.0, created + 5.0 - time.time()))
    after_create = probe.window(created, created + 5.0)

    await asyncio.sleep(3.0)
    killed = time.time()
    cluster.process("worker-1").kill()
    await asyncio.sleep(15.0)
    after_kill = probe.window(killed, killed + 15.0)
    await probe.close()
    await owner.close()
    await member.close()
    return {
        "groups": groups,
        "create_groups_s": round(created_in, 2),
        "steady_p50_ms": median(before),
        "first_message_ms": round(first["latency_ms"], 1),
        "after_create_max_ms": worst(after_create),
        "after_create_p50_ms": median(after_create),
        "handover_max_ms": worst(after_kill),
        "after_kill_p50_ms": median(after_kill),
        "samples": len(probe.samples),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", default="10,100,1000", help="existing groups, comma-separated")
    ap.add_argument("--ownership", default="kafka,redis")
    ap.add_argument("--rate", type=float, default=100.0, help="DM sends/s of the probe")
    ap.add_argument("--broker", default="kafka", choices=("kafka", "tansu"))
    args = ap.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    out = Path("runs") / f"{stamp}-kafka-groups"
    out.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    for groups in [int(g) for g in args.groups.split(",")]:
        for ownership in args.ownership.split(","):
            spec = ClusterSpec("v4", servers=1, workers=2, broker=args.broker, ownership=ownership)
            print(f"{ownership:>5} ownership, {groups} groups ...", file=sys.stderr, flush=True)
            with Cluster(spec, out / f"{ownership}-{groups}") as cluster:
                row = {"ownership": ownership, **asyncio.run(measure(cluster, groups, args.rate))}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    result = {
        "measured_at": stamp,
        "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count()},
        "broker": args.broker,
        "probe_rate": args.rate,
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    cols = ["ownership", "groups", "create_groups_s", "steady_p50_ms", "first_message_ms",
            "after_create_max_ms", "handover_max_ms"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(f"\nresults: {out / 'results.json'}")


if __name__ == "__main__":
    main()
