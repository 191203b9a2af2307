"""The brokers side by side, in one run: Apache Kafka with 1 and 3 nodes, and Tansu.

For each: time to start (until every node answers metadata), resident memory of
its processes (after start and after the load), and the produce -> consume hop
(a record's timestamp to the consumer seeing it) at 100 and 1,000 records/s,
offered on a fixed clock (open loop), with the producer the stages use (acks=all,
idempotent where the broker supports it) and the consumer's 10 ms fetch wait.

    .venv/bin/python benchmarks/brokers.py              # about 2 min here
    .venv/bin/python benchmarks/brokers.py --seconds 3  # shorter

Prints a markdown table and writes `runs/<time>-brokers/results.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import struct
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from imlab.brokers import ApacheKafka, Broker, Tansu
from imlab.consumers import CONSUMER_SETTINGS
from imlab.kafka import PRODUCER_SETTINGS

TOPIC = "bench.hop"
PARTITIONS = 8


def rss_mb(broker: Broker) -> float:
    total = 0
    for node in broker.nodes:
        if node.pid is None:
            continue
        try:
            proc = psutil.Process(node.pid)
            total += sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
        except psutil.NoSuchProcess:
            continue
    return round(total / 2**20, 1)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2)


async def hop(broker: Broker, rate: float, seconds: float) -> dict[str, Any]:
    boot = broker.bootstrap
    admin = AIOKafkaAdminClient(bootstrap_servers=boot)
    await admin.start()
    topic = f"{TOPIC}.{int(rate)}"
    await admin.create_topics([NewTopic(topic, PARTITIONS, broker.replication)])
    await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=boot,
        enable_idempotence=broker.idempotent_producer,
        **PRODUCER_SETTINGS,
    )
    consumer = AIOKafkaConsumer(bootstrap_servers=boot, **CONSUMER_SETTINGS)
    await producer.start()
    await consumer.start()
    consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
    await producer.send_and_wait(topic, struct.pack(">d", time.time()), partition=0)  # warm
    lat: list[float] = []
    n = int(rate * seconds)
    done = asyncio.Event()

    async def consume() -> None:
        seen = 0
        while seen < n + 1:
            batch = await consumer.getmany(timeout_ms=200)
            now = time.time()
            for records in batch.values():
                for rec in records:
                    seen += 1
                    lat.append((now - struct.unpack(">d", rec.value)[0]) * 1000)
            if done.is_set() and not batch:
                break

    reader = asyncio.create_task(consume())
    t0 = time.time()
    for i in range(n):
        due = t0 + i / rate
        await asyncio.sleep(max(0.0, due - time.time()))
        await producer.send(topic, struct.pack(">d", due), key=str(i % 64).encode())
    await producer.flush()
    await asyncio.sleep(1.0)
    done.set()
    await asyncio.wait_for(reader, 30)
    await producer.stop()
    await consumer.stop()
    lat = lat[1:]  # the warm-up record
    return {
        "rate": rate,
        "records": len(lat),
        "offered": n,
        "p50_ms": pct(lat, 0.5),
        "p99_ms": pct(lat, 0.99),
        "max_ms": round(max(lat), 2) if lat else None,
    }


def bench(kind: str, brokers: int, seconds: float) -> dict[str, Any]:
    logdir = Path(tempfile.mkdtemp(prefix="imlab-bench-"))
    broker: Broker = Tansu(logdir) if kind == "tansu" else ApacheKafka(logdir, brokers)
    t0 = time.monotonic()
    with broker:
        started = time.monotonic() - t0
        time.sleep(1.0)
        idle = rss_mb(broker)
        hops = [asyncio.run(hop(broker, rate, seconds)) for rate in (100.0, 1000.0)]
        loaded = rss_mb(broker)
    return {
        "broker": kind,
        "brokers": brokers,
        "version": broker.version,
        "start_s": round(started, 2),
        "rss_idle_mb": idle,
        "rss_loaded_mb": loaded,
        "hops": hops,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds of load per rate")
    args = ap.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    rows = [bench(k, n, args.seconds) for k, n in (("kafka", 1), ("kafka", 3), ("tansu", 1))]
    out = Path("runs") / f"{stamp}-brokers"
    out.mkdir(parents=True)
    result = {
        "measured_at": stamp,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "seconds_per_rate": args.seconds,
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"Measured {stamp} on {platform.platform()}, {os.cpu_count()} cores; "
          f"{args.seconds:g} s per rate, open loop.\n")  # fmt: skip
    print("| broker | nodes | start s | RSS idle MB | RSS after MB | hop p50 / p99 ms @100/s "
          "| hop p50 / p99 ms @1,000/s |")  # fmt: skip
    print("|---|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        h = {int(x["rate"]): x for x in r["hops"]}
        print(f"| {r['broker']} {r['version']} | {r['brokers']} | {r['start_s']} "
              f"| {r['rss_idle_mb']} | {r['rss_loaded_mb']} "
              f"| {h[100]['p50_ms']} / {h[100]['p99_ms']} "
              f"| {h[1000]['p50_ms']} / {h[1000]['p99_ms']} |")  # fmt: skip
    print(f"\nresults: {out / 'results.json'} (one sitting: rerun to see the spread)")


if __name__ == "__main__":
    main()
