"""Redis as the stages use it, as `imlab/store.py` is the real history store: one FIFO
server, the round trip to it, and what it holds (each conversation's seq and stored
messages, appended with the client_msg_id dedup; the `user -> node` routes)."""

from __future__ import annotations

from array import array
from collections.abc import Callable
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
    """The Redis server and its state; `round_trip` is one command from a server process."""

    def __init__(
        self,
        env: simpy.Environment,
        *,
        link: float,
        timeout: float,
        op: Sampler,
        pipelined_op: Sampler,
    ) -> None:
        self.env = env
        self.redis = FifoServer("redis")
        self.link = link  # constant: keeps Redis arrivals in call order
        self.timeout = timeout
        self.d_op = op
        self.d_pipelined = pipelined_op
        self.done = 0.0  # when the Redis command whose effect is running finishes
        self.routes: dict[int, Node] = {}

    def round_trip(self, effect: Callable[[], Any], ops: int, *, pipelined: bool = True) -> Steps:
        """A paused Redis executes the command later (the call fails after the timeout,
        the effect happens anyway); a dead Redis refuses it (no effect). The link to
        Redis has a constant delay, so commands reach it in the order they are sent
        and the Redis server can be served at the moment of the call. `ops` commands
        go in one pipeline, or (not `pipelined`) one after another, each a full
        command and a round trip of its own, taken as one job at Redis."""
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
