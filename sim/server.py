"""The server side every stage model shares, as `imlab/server.py` is what every real
stage's server shares: the processes (`Node`: a FIFO event loop, a login table), their
connections, and the handlers a stage keeps or overrides (send, login, logout, the
push to local connections, `latest` and `sync`).

A handler is a SimPy process body that reads like the real one: it queues for the
node's CPU and calls Redis through the process's connection pool (256 in the real
servers: one more call fails at once, as redis-py's "Too many connections").
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import simpy

from sim.engine import FifoServer, Refused, Sampler
from sim.ledger import Counts, Ledger
from sim.params import Params
from sim.store import Conv, Store, Unavailable

if TYPE_CHECKING:
    from sim.client import Client, User

__all__ = [
    "FEATURE_DM",
    "FEATURE_GROUPS",
    "FEATURE_HISTORY",
    "Conn",
    "Msg",
    "Node",
    "ProtocolRefusal",
    "Server",
    "Steps",
    "Unavailable",
]

Steps = Generator[Any, Any, Any]

FEATURE_DM, FEATURE_GROUPS, FEATURE_HISTORY = "dm", "groups", "history"


class ProtocolRefusal(Exception):
    """The request is refused by the stage's rules; `code` is the protocol error code."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Msg:
    """One message in flight (the payload a real server would carry)."""

    __slots__ = ("cmid", "conv", "intended", "mid", "sender", "seq", "ts")

    def __init__(
        self, mid: int, conv: Conv, sender: int, intended: float, cmid: str | None
    ) -> None:
        self.mid = mid
        self.conv = conv
        self.sender = sender
        self.intended = intended
        self.cmid = cmid
        self.seq: int | None = None
        self.ts = 0.0


class Conn:
    """One client connection: open on the server's side until the server is told or dies."""

    __slots__ = ("closes_at", "node", "open", "silent", "user")

    def __init__(self, user: User, node: Node) -> None:
        self.user = user
        self.node = node
        self.open = True
        self.silent = False  # the client is gone but the server was not told
        self.closes_at = math.inf  # when the client stops reading it


class Node:
    """A server, gateway or worker process: one event loop (a FIFO CPU) and a login table."""

    __slots__ = ("alive", "consumer", "cpu", "index", "local", "name", "redis_busy")

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.index = index
        self.cpu = FifoServer(name)
        self.local: dict[int, Conn] = {}
        self.alive = True
        self.consumer: Any = None
        self.redis_busy = 0  # Redis calls out on this process's connection pool


class Server:
    """What every stage's server processes do; a stage subclass implements its handlers.

    The world they act in (the clock, the store, the clients, the samplers) is set up
    by `sim.stage.StageModel`."""

    stage: ClassVar[str] = "?"
    features: ClassVar[frozenset[str]] = frozenset({FEATURE_DM})
    uses_redis: ClassVar[bool] = False
    uses_kafka: ClassVar[bool] = False
    node_prefix: ClassVar[str] = "server"

    env: simpy.Environment
    p: Params
    counts: Counts
    ledger: Ledger
    store: Store
    client: Client
    d_client: Sampler
    d_push: Sampler
    d_sync_msg: Sampler

    # ------------------------------------------------------------ stage hooks

    def setup(self) -> None:
        """Create what the stage needs before the run (topics, consumers)."""

    def kafka_drop_is_silent(self) -> bool:
        """Whether a dropped publish is acked as a success (the seed's open problem)."""
        return True

    def login(self, node: Node, user: User) -> Steps:
        """After `user` connected on `node` (v3/v4 record the route in Redis)."""
        yield from ()

    def logout(self, node: Node, user: User) -> Steps:
        """After the server learnt that `user`'s connection is gone."""
        yield from ()

    def handle_send(self, node: Node, *, user: User, msg: Msg) -> Steps:
        """Handle a send on `node`'s loop; returns the ack's seq (or None), raises
        `Unavailable`/`ProtocolRefusal` for an error ack."""
        raise ProtocolRefusal("unsupported")
        yield  # pragma: no cover

    def on_node_crash(self, node: Node) -> None:
        """A crashed node's consumers and channels go with it."""

    def connect_cost(self) -> float:
        """Extra CPU at connect (v4: the token check)."""
        return 0.0

    # ------------------------------------------------------------ building blocks

    def cpu(self, node: Node, service: float) -> Steps:
        """Queue for `node`'s event loop and run `service` seconds on it."""
        env = self.env
        done = node.cpu.serve(env.now, service)
        yield env.timeout(done - env.now)

    def redis_call(
        self,
        node: Node,
        effect: Callable[[], Any],
        ops: int = 1,
        *,
        pipelined: bool = True,
        keys: Sequence[str] = (),
    ) -> Steps:
        """One round trip from `node` to Redis (`Store.round_trip`); `effect` runs when
        Redis executes it; `keys` place it on a cluster's shards (a conversation's keys
        share one hash tag, its id; a route's key is its user's name). A node has at
        most `redis_pool` calls out at once."""
        if node.redis_busy >= self.p.redis_pool:
            self.counts.inc("redis_pool_exhausted")
            raise Unavailable("redis pool")
        node.redis_busy += 1
        try:
            return (yield from self.store.round_trip(effect, ops, pipelined=pipelined, keys=keys))
        finally:
            node.redis_busy -= 1

    def push(self, node: Node, users: Sequence[int], msg: Msg) -> Steps:
        """Emit `msg` to the local connections of `users` on `node`; continue when done."""
        done = self.push_now(node, users, msg)
        if done > self.env.now:
            yield self.env.timeout(done - self.env.now)

    def push_now(self, node: Node, users: Sequence[int], msg: Msg, before: float = 0.0) -> float:
        """One CPU job on `node`: `before` seconds of other work (a relay's decode),
        then one emit per local connection; each push leaves as its emit ends.
        Returns when the job ends (now if there is nothing to do or the node is dead)."""
        now = self.env.now
        local = node.local
        conns = [c for u in users if (c := local.get(u)) is not None]
        if not conns and not before:
            return now
        # One draw per job, times the connections: the emits of one job cost alike.
        each = self.d_push()
        try:
            done = node.cpu.serve(now, before + each * len(conns))
        except Refused:
            return now
        t = done - each * len(conns)
        sender = msg.sender
        for conn in conns:
            t += each
            if conn.user.idx != sender:
                self.ledger.pushed[msg.mid] = 1
            self.transmit(conn, msg, t)
        return done

    def transmit(self, conn: Conn, msg: Msg, t: float) -> None:
        """The push leaves the node at `t` and reaches the client unless its connection
        is dead by then."""
        user = conn.user
        if conn.silent or not conn.open:
            self.counts.inc("pushes_into_dead_connections")
            return
        arrival = t + self.d_client()
        if arrival < user.down_last:  # one TCP connection: no overtaking
            arrival = user.down_last
        user.down_last = arrival
        if arrival >= conn.closes_at:
            self.counts.inc("pushes_into_dead_connections")
            return
        client = self.client
        if user.traced or user.loadgen is not None:
            ev = self.env.timeout(arrival - self.env.now)
            ev.callbacks.append(lambda _e: client.arrive(conn, msg))
        else:
            client.receive(user, msg.mid, msg.seq, msg.conv, arrival, "push")

    def disconnected(self, conn: Conn) -> Steps:
        """The server learns, one link later, that the client closed `conn`."""
        yield self.env.timeout(self.d_client())
        conn.open = False
        node = conn.node
        if node.alive and node.local.get(conn.user.idx) is conn:
            del node.local[conn.user.idx]
            with contextlib.suppress(Unavailable):
                yield from self.logout(node, conn.user)

    # ------------------------------------------------------------ history handlers (v2+)

    def handle_latest(self, node: Node, user: User) -> Steps:
        """`latest`: the user's conversations (SMEMBERS) and their seqs (MGET)."""
        yield from self.redis_call(node, lambda: None, keys=(user.name,))
        keys = [c.cid for c in user.convs] if self.store.sharded else ()
        seqs = yield from self.redis_call(
            node, lambda: [(c.index, c.seq) for c in user.convs], keys=keys
        )
        return seqs

    def handle_sync(self, node: Node, user: User, conv: Conv, after: int) -> Steps:
        """`sync`: a membership check, then one page after `after` and the latest seq."""
        limit = self.p.sync_page
        yield from self.redis_call(node, lambda: None, keys=(conv.cid,))
        result = yield from self.redis_call(
            node, lambda: Store.page(conv, after, limit), keys=(conv.cid,)
        )
        cost = sum(self.d_sync_msg() for _ in range(len(result[0])))
        if cost:
            yield from self.cpu(node, cost)
        return result
