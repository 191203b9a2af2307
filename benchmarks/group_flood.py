"""One client creates groups as fast as it can (1,000 asked for in a second): what does
it do to everyone else's direct messages? DM push latency before and after the flood,
and the broker's CPU, on v4 (a topic per group) and v5 (two shared topics, a quota and a
rate limit on group creation). Prints the figures and the machine; `--json` saves them.

    .venv/bin/python benchmarks/group_flood.py [--stages v4,v5] [--groups 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imlab import auth
from imlab import protocol as p
from imlab.client import AsyncChatClient
from imlab.cluster import Cluster, ClusterSpec, machine_info
from imlab.services import install_signal_handlers


async def dm_latencies(a: AsyncChatClient, b: AsyncChatClient, n: int) -> list[float]:
    """Push latency (ms) of `n` DMs from a to b, one every 20 ms."""
    conv = p.dm_conv(a.user, b.user)
    out = []
    for i in range(n):
        before = len(b.messages(conv))
        t0 = time.perf_counter()
        ack = await a.send(to=b.user, body=f"dm {i}")
        if not ack.get("ok"):
            continue
        await b.wait_for(lambda k=before: len(b.messages(conv)) > k, 10.0, "the push")  # type: ignore[misc]
        out.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.02)
    return out


def broker_cpu(cluster: Cluster, seconds: float) -> float:
    """The Kafka JVMs' CPU, % of a core, over `seconds`."""
    assert cluster.kafka is not None
    procs = [psutil.Process(n.pid) for n in cluster.kafka.nodes if n.pid is not None]
    t0 = [pr.cpu_times() for pr in procs]
    time.sleep(seconds)
    t1 = [pr.cpu_times() for pr in procs]
    used = sum((b.user + b.system) - (a.user + a.system) for a, b in zip(t0, t1, strict=True))
    return float(100.0 * used / seconds)


async def one_stage(stage: str, groups: int, n: int, root: Path) -> dict[str, Any]:
    with Cluster(ClusterSpec(stage, servers=1, workers=1), root / stage) as cluster:
        info = cluster.spec.info

        def client(user: str) -> AsyncChatClient:
            token = auth.issue_token(user, cluster.spec.secret, info.token_ttl(3600.0))
            return AsyncChatClient(user, cluster.endpoints, token=token)

        a, b, flood = client("alice"), client("bob"), client("mallory")
        for c in (a, b, flood):
            await c.connect()
        try:
            await dm_latencies(a, b, 20)  # warm up
            cpu_before = await asyncio.to_thread(broker_cpu, cluster, 3.0)
            before = await dm_latencies(a, b, n)
            t0 = time.perf_counter()
            acks = await asyncio.gather(
                *[flood.create_group([flood.user], f"flood {i}") for i in range(groups)]
            )
            took = time.perf_counter() - t0
            created = sum(1 for x in acks if x.get("ok"))
            codes: dict[str, int] = {}
            for x in acks:
                if not x.get("ok"):
                    code = str((x.get("error") or {}).get("code"))
                    codes[code] = codes.get(code, 0) + 1
            await asyncio.sleep(5.0)  # what follows is the new normal, not the flood itself
            cpu_after = await asyncio.to_thread(broker_cpu, cluster, 3.0)
            after = await dm_latencies(a, b, n)
        finally:
            for c in (a, b, flood):
                await c.close()
    return {
        "groups_asked": groups,
        "groups_created": created,
        "refused": codes,
        "flood_seconds": round(took, 2),
        "dm_p50_ms_before": round(statistics.median(before), 2),
        "dm_p50_ms_after": round(statistics.median(after), 2),
        "dm_p90_ms_before": round(statistics.quantiles(before, n=10)[-1], 2),
        "dm_p90_ms_after": round(statistics.quantiles(after, n=10)[-1], 2),
        "broker_cpu_pct_before": round(cpu_before, 1),
        "broker_cpu_pct_after": round(cpu_after, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", default="v4,v5")
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--dms", type=int, default=100, help="DMs timed before and after")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    install_signal_handlers()
    out: dict[str, Any] = {"machine": machine_info(), "stages": {}}
    with tempfile.TemporaryDirectory(prefix="imlab-flood-") as tmp:
        for stage in args.stages.split(","):
            print(f"{stage}: {args.groups} group creations from one client ...", flush=True)
            out["stages"][stage] = asyncio.run(one_stage(stage, args.groups, args.dms, Path(tmp)))
    keys = list(next(iter(out["stages"].values())))
    print(f"\n| figure | {' | '.join(out['stages'])} |")
    print(f"|---|{'---:|' * len(out['stages'])}")
    for k in keys:
        print(f"| {k} | {' | '.join(str(v[k]) for v in out['stages'].values())} |")
    m = out["machine"]
    print(f"\nmachine: {m.get('cpu_count')} cores, {m.get('platform', '')}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
