"""Redis as the stages use it, as `imlab/store.py` is the real history store: one FIFO
server, the round trip to it, and what it holds (each conversation's seq and stored
messages, appended with the client_msg_id dedup; the `user -> node` routes).

With `shards` > 1 it is a Redis Cluster: N single-threaded servers, each key on the
shard its hash picks (CRC-32 of the key, standing in for the cluster's CRC16 slots).
A call names its keys: a one-key command goes to that key's shard; a multi-key call
(an MGET of routes, a pipeline of PUBLISHes to the nodes' channels) is split as a
cluster client splits it, one command (or one pipeline) per shard touched, sent at
once, and the call returns when the slowest shard answered. That is why N shards are
N servers and not one server N times as fast: a call's keys land on different
shards, so a conversation's lookups cost more commands in a cluster than on one
Redis, and a hot shard queues on its own. With one shard every call goes to the
one server exactly as before (same draws, same order)."""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import simpy

from sim.engine import FifoServer, Refused, Sampler
from sim.scenario import Conversation

if TYPE_CHECKING:
    from sim.server import Msg, Node, Steps

__all__ = ["Conv", "Store", "Unavailable"]


class Unavailable(Exception):
    """A backing service failed the request: the client gets an `unavailable` ack."""


class Conv:
    """A conversation and what Redis holds for it: the latest seq and the stored messages."""

    __slots__ = ("cid", "gid", "index", "members", "seq", "stored", "topic", "traced")

    def __init__(self, c: Conversation, traced: bool) -> None:
        self.index = c.index
        self.cid = c.conv_id
        self.gid = c.group_id
        self.members = c.members
        self.traced = traced
        self.seq = 0
        self.stored = array("q")  # message ids by seq - 1
        self.topic: Any = None


class Store:
    """The Redis server (or cluster shards) and its state; `round_trip` is one call from a
    server process."""

    def __init__(
        self,
        env: simpy.Environment,
        *,
        link: float,
        timeout: float,
        op: Sampler,
        pipelined_op: Sampler,
        shards: int = 1,
    ) -> None:
        if shards < 1:
            raise ValueError("Redis needs at least one shard")
        self.env = env
        self.shards = (
            [FifoServer("redis")]
            if shards == 1
            else [FifoServer(f"redis-{i}") for i in range(shards)]
        )
        self.link = link  # constant: keeps Redis arrivals in call order
        self.timeout = timeout
        self.d_op = op
        self.d_pipelined = pipelined_op
        self.done = 0.0  # when the Redis command whose effect is running finishes
        self.routes: dict[int, Node] = {}

    @property
    def redis(self) -> FifoServer:
        """The first shard: the one Redis server when there is no cluster."""
        return self.shards[0]

    @redis.setter
    def redis(self, server: FifoServer) -> None:
        self.shards[0] = server

    @property
    def sharded(self) -> bool:
        """Whether this is a cluster (calls need their keys to find their shards)."""
        return len(self.shards) > 1

    def shard(self, key: str) -> int:
        """The index of the shard holding `key`."""
        n = len(self.shards)
        return 0 if n == 1 else zlib.crc32(key.encode()) % n

    def round_trip(
        self,
        effect: Callable[[], Any],
        ops: int,
        *,
        pipelined: bool = True,
        keys: Sequence[str] = (),
    ) -> Steps:
        """A paused Redis executes the command later (the call fails after the timeout,
        the effect happens anyway); a dead Redis refuses it (no effect). The link to
        Redis has a constant delay, so commands reach it in the order they are sent
        and the Redis server can be served at the moment of the call. `ops` commands
        go in one pipeline, or (not `pipelined`) one after another, each a full
        command and a round trip of its own, taken as one job at Redis. `keys` place
        the call on a cluster's shards (`cluster_round_trip`); with one shard they do
        not matter."""
        if len(self.shards) > 1:
            return (yield from self.cluster_round_trip(effect, ops, pipelined, keys))
        env = self.env
        t0 = env.now
        link = self.link
        service = self.d_op()
        extra = 0.0
        if ops > 1 and pipelined:
            service += sum(self.d_pipelined() for _ in range(ops - 1))
        elif ops > 1:
            service += sum(self.d_op() for _ in range(ops - 1))
            extra = 2 * link * (ops - 1)
        try:
            done = self.redis.serve(t0 + link, service)
        except Refused as r:
            yield env.timeout(max(0.0, r.at - t0) + link)
            raise Unavailable("redis") from None
        self.done = done
        result = effect()
        back = done + link - t0 + extra
        if back > self.timeout:
            yield env.timeout(self.timeout)
            raise Unavailable("redis timeout")
        yield env.timeout(back)
        return result

    def cluster_round_trip(
        self, effect: Callable[[], Any], ops: int, pipelined: bool, keys: Sequence[str]
    ) -> Steps:
        """`round_trip` on a cluster. With as many keys as `ops`, key i is command i's
        (a pipeline of commands, e.g. one PUBLISH per channel); otherwise the `ops`
        commands touch all the keys (an MGET over members' routes: one MGET per shard
        touched). Each shard touched serves its share as one job, all sent at once."""
        env = self.env
        t0 = env.now
        link = self.link
        per: dict[int, int] = {}
        if len(keys) == ops and ops > 1:
            for k in keys:
                i = self.shard(k)
                per[i] = per.get(i, 0) + 1
        else:
            for i in {self.shard(k) for k in keys} or {0}:
                per[i] = ops
        done = t0
        extra = 0.0
        try:
            for i, n in per.items():
                service = self.d_op()
                if n > 1 and pipelined:
                    service += sum(self.d_pipelined() for _ in range(n - 1))
                elif n > 1:
                    service += sum(self.d_op() for _ in range(n - 1))
                    extra = max(extra, 2 * link * (n - 1))
                done = max(done, self.shards[i].serve(t0 + link, service))
        except Refused as r:
            yield env.timeout(max(0.0, r.at - t0) + link)
            raise Unavailable("redis") from None
        self.done = done
        result = effect()
        back = done + link - t0 + extra
        if back > self.timeout:
            yield env.timeout(self.timeout)
            raise Unavailable("redis timeout")
        yield env.timeout(back)
        return result

    @staticmethod
    def append(msg: Msg) -> int:
        """The store's Lua append: next seq of the conversation; a message already
        stored keeps its seq (the client_msg_id dedup)."""
        if msg.seq is not None:
            return msg.seq
        conv = msg.conv
        conv.seq += 1
        msg.seq = conv.seq
        conv.stored.append(msg.mid)
        return msg.seq

    @staticmethod
    def page(conv: Conv, after: int, limit: int) -> tuple[list[int], int, int, bool]:
        """`sync`'s read: up to `limit` message ids after seq `after`, the first one's
        seq, the latest seq, and whether more follow."""
        stored = conv.stored
        mids = stored[after : after + limit].tolist()
        return mids, after + 1, conv.seq, len(stored) > after + limit
