"""Live `kafka-loss:P`: the v3 producer drops a publish with probability P and still
acks the sender (the seed's missing receipt), so acked messages are lost."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

from imlab import protocol as p
from imlab.client import AsyncChatClient
from imlab.cluster import Cluster, ClusterSpec


async def test_v3_publish_loss_loses_acked_messages(tmp_path: Path) -> None:
    with Cluster(ClusterSpec("v3", servers=1, kafka_drop=0.5), tmp_path) as cluster:
        a = AsyncChatClient("alice", cluster.endpoints)
        b = AsyncChatClient("bob", cluster.endpoints)
        await a.connect()
        await b.connect()
        try:
            n = 60
            acks = [await a.send(to="bob", body=f"m{i}") for i in range(n)]
            assert all(ack["ok"] for ack in acks), [a for a in acks if not a["ok"]][:3]
            conv = p.dm_conv("alice", "bob")
            await asyncio.sleep(3)
            got = len(b.messages(conv))
            metrics = urllib.request.urlopen(f"{cluster.endpoints[0]}/metrics").read().decode()
            dropped = next(
                float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith("imlab_kafka_dropped_total")
            )
            assert dropped > 0 and got == n - dropped, (got, dropped)
            assert 10 <= dropped <= 50  # Binomial(60, 0.5): outside this is < 1e-5 likely
        finally:
            await a.close()
            await b.close()
