"""Live fault injection, as `imlab/chaos.py` is the real one: the run's fault plan
applied to the model once the send window opens (Redis paused or down, the broker
down, processes killed), and what a SIGKILL does to a node and its clients."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from imlab.experiment.faults import BrokerDown
from sim.server import Node

if TYPE_CHECKING:
    from sim.stage import StageModel

__all__ = ["Chaos"]


class Chaos:
    """The fault plan of one model, timed from the opening of its send window."""

    def __init__(self, model: StageModel) -> None:
        self.m = model

    def apply(self) -> None:
        """Schedule every fault of the plan (now: the window has just opened)."""
        m = self.m
        base = m.send_start
        shards = m.store.shards  # a Redis fault takes every shard of a cluster
        for f in m.faults.redis_outages:
            for shard in shards:
                shard.pause(base + f.start, base + f.end)
        for r in m.faults.redis_restarts:
            for shard in shards:
                shard.down(base + r.start, base + r.end)
        # A Sentinel master kill, approximated: Redis down until the failover ends (the
        # restarted node only rejoins as a replica, which no model has).
        for k in m.faults.redis_master_kills:
            for shard in shards:
                shard.down(base + k.start, base + k.start + m.p.redis_failover)
        if m.faults.db_restarts and getattr(m, "db", None) is None:
            # The models with a database (v5) apply it themselves (`apply_faults`).
            raise ValueError(
                f"db-restart: the {m.stage} model has no database; v5's has (PostgreSQL)"
            )
        if m.broker is not None:
            for b in m.faults.broker_downs:
                m.broker.outage(base + b.start, self.broker_outage(b))
        for c in m.faults.crashes:
            node = self.find_node(c.target)
            m.at(base + c.at, partial(self.crash, node))

    def broker_outage(self, fault: BrokerDown) -> float:
        """How long the cluster is unavailable: one broker of three only until the
        others lead its partitions (`kafka_failover`); else the fault's window and,
        for Apache Kafka, the node's restart (`kafka_restart`)."""
        p = self.m.p
        down = fault.duration + (p.kafka_restart if p.kafka_durable else 0.0)
        if fault.scope != "all" and p.kafka_brokers >= 3:
            return min(down, p.kafka_failover)
        return down

    def find_node(self, name: str) -> Node:
        m = self.m
        for node in (*m.nodes, *m.workers):
            if node.name == name:
                return node
        names = ", ".join(n.name for n in (*m.nodes, *m.workers))
        raise ValueError(f"crash: no process {name!r} in this model (have {names})")

    def crash(self, node: Node) -> None:
        """SIGKILL: the node's loop, login table and connections are gone; its clients
        notice at once and reconnect elsewhere."""
        m = self.m
        env = m.env
        node.alive = False
        node.cpu.down(env.now)
        m.counts.inc("crashes")
        m.on_node_crash(node)
        for conn in list(node.local.values()):
            user = conn.user
            conn.open = False
            if user.conn is conn and user.online:
                m.client.close(user, tell_server=False)
                env.process(m.client.reconnect(user))
        node.local.clear()
