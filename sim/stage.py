"""What every stage model shares, as `imlab/server.py` is what every real stage shares.

`StageModel` holds the simulated world: the clients (the load tool's users, with
their fixed send schedules, churn, reconnects and the client SDK's catch-up and
gap repair), the server or gateway processes (`Node`: a FIFO event loop, a login
table), Redis (one FIFO server plus the state the stages keep in it: sequence
numbers, stored messages, routes), the Kafka broker and consumer groups
(`sim.kafka`), and the bookkeeping (histories for the traced conversations, exact
counts for everybody). A stage subclass implements only what its chapter of the
seed changes: how a send is handled, how a message reaches its recipients, what
happens at login, and what its consumers do.

Time flows through SimPy processes that read like the real handlers: a request
is a process that travels the client link, queues for the node's CPU, calls Redis
(a round trip through the Redis server, failing with `Unavailable` as redis-py
does after its 5 s socket timeout, or at once when Redis is down or the node's
256-connection pool is full), and travels back. The run mirrors `imlab load`:
everybody connects first (at the spawn rate), the send window opens, a drain
waits until nothing moves, then every client runs its final catch-up.
Client-side behaviour mirrors `imlab.client` and `loadtest.users`:
- each user is one greenlet: its sends, drops, returns and gap repairs run one
  after another; a send blocks until its ack (10 s at most), and slots that came
  due meanwhile go out late (their latency counts from the slot);
- while a churning user is offline its slots are skipped;
- after every (re)connect the client asks `latest` and syncs each conversation
  where its max seq is behind (pages of 200);
- a push ahead of a gap waits in the inbox, and the gap is synced 0.5-0.75 s later;
- a silent drop leaves the server pushing into a dead connection; a clean drop
  tells the server; a failed return is tried again 0.5 s later;
- when its node dies the client reconnects, with backoff, to the next live node.
"""

from __future__ import annotations

import contextlib
import math
import random
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from functools import partial
from typing import Any, ClassVar

import simpy

from imlab.experiment.faults import BrokerDown, FaultPlan
from sim.engine import FifoServer, LogHistogram, Refused, Sampler
from sim.history import History
from sim.kafka import Broker, ConsumerGroup, Record
from sim.params import Dist, Params
from sim.scenario import Conversation, SimScenario

__all__ = ["Conn", "Msg", "Node", "StageModel", "Unavailable", "User"]

Steps = Generator[Any, Any, Any]

OK, ERROR = 1, 2  # message status in the ledger (0: never acked)
RETRY_BACK = 0.5  # loadtest.users.RETRY_S: a failed return is tried again after this long

FEATURE_DM, FEATURE_GROUPS, FEATURE_HISTORY = "dm", "groups", "history"


class Unavailable(Exception):
    """A backing service failed the request: the client gets an `unavailable` ack."""


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


class User:
    """One simulated client: its connection, inbox (max seq and buffered pushes per
    conversation) and the greenlet's queue of actions."""

    __slots__ = (
        "back_at",
        "busy",
        "churn",
        "conn",
        "convs",
        "down_last",
        "endpoints",
        "finished",
        "free_at",
        "idx",
        "loadgen",
        "max_seq",
        "name",
        "next_drop",
        "online",
        "pending",
        "queue",
        "repairing",
        "sends",
        "traced",
    )

    def __init__(self, idx: int, name: str, convs: list[Conv], endpoints: list[int]) -> None:
        self.idx = idx
        self.name = name
        self.convs = convs
        self.traced = any(c.traced for c in convs)
        self.endpoints = endpoints
        self.conn: Conn | None = None
        self.online = False
        self.busy = False
        self.free_at = 0.0  # the greenlet is blocked until then (waiting for an ack)
        self.queue: deque[tuple[str, float]] = deque()
        self.max_seq: dict[int, int] = {}
        self.pending: dict[int, dict[int, tuple[int, str]]] = {}  # conv -> seq -> (id, via)
        self.repairing = False
        self.churn: Any = None
        self.next_drop = math.inf
        self.back_at = math.inf
        self.down_last = 0.0
        self.loadgen: FifoServer | None = None
        self.sends = 0
        self.finished = False


class Ledger:
    """What is known of every message, in flat arrays (a few bytes each) rather than objects."""

    def __init__(self) -> None:
        self.sender = array("i")
        self.conv = array("i")
        self.intended = array("d")
        self.expected = array("H")
        self.got = array("H")  # first receipts by expected recipients
        self.status = bytearray()  # 0 never acked, OK, ERROR
        self.pushed = bytearray()  # 1 once a node emitted it to a recipient other than the sender

    def new(self, sender: int, conv: int, intended: float, expected: int) -> int:
        self.sender.append(sender)
        self.conv.append(conv)
        self.intended.append(intended)
        self.expected.append(expected)
        self.got.append(0)
        self.status.append(0)
        self.pushed.append(0)
        return len(self.status) - 1

    def __len__(self) -> int:
        return len(self.status)


class Counts:
    """Exact whole-population counts and series, and population latency histograms."""

    SERIES = ("sends", "acked_ok", "acked_error", "deliveries_push", "deliveries_sync")

    def __init__(self, base: float) -> None:
        self.base = base  # simulated time of the series' second 0
        self.c: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.series: dict[str, list[int]] = {k: [] for k in self.SERIES}
        self.push_latency = LogHistogram()
        self.sync_latency = LogHistogram()
        self.ack_latency = LogHistogram()

    def inc(self, key: str, n: int = 1) -> None:
        self.c[key] = self.c.get(key, 0) + n

    def at(self, name: str, t: float) -> None:
        s = self.series[name]
        i = int(t - self.base) if t > self.base else 0
        if i >= len(s):
            s.extend([0] * (i + 1 - len(s)))
        s[i] += 1


class StageModel:
    """The simulated world of one stage; subclasses implement the stage's handlers."""

    stage: ClassVar[str] = "?"
    features: ClassVar[frozenset[str]] = frozenset({FEATURE_DM})
    uses_redis: ClassVar[bool] = False
    uses_kafka: ClassVar[bool] = False
    node_prefix: ClassVar[str] = "server"

    def __init__(
        self,
        scenario: SimScenario,
        params: Params,
        faults: FaultPlan,
        *,
        nodes: int = 1,
        workers: int = 0,
        traced: Iterable[int] = (),
        history: History | None = None,
        seed: int = 1,
        max_drain: float = 30.0,
        settle: float = 1.5,
        spawn_rate: float = 0.0,
    ) -> None:
        self.sc = scenario
        self.p = params
        self.faults = faults
        self.seed = seed
        self.history = history
        self.env = simpy.Environment()
        self.rng = random.Random(f"{seed}/model")
        self.send_start = math.inf  # set when the window opens (everybody connected)
        self.send_end = math.inf
        self.max_drain = max_drain
        self.settle = settle
        n_users = len(scenario.names)
        self.spawn_rate = spawn_rate or max(10.0, n_users / 2.0)  # the load tool's default
        self.final_at = math.inf
        self.drain_end: float | None = None
        streams = random.Random(f"{seed}/streams")

        def sampler(d: Dist) -> Sampler:
            return Sampler(d, streams)

        self.d_send_lag = sampler(params.client_send_lag)
        self.d_client = sampler(params.client_link)
        self.d_request = sampler(params.node_request)
        self.d_push = sampler(params.node_push)
        self.d_connect = sampler(params.node_connect)
        self.d_sync_msg = sampler(params.node_sync_message)
        self.d_relay = sampler(params.node_relay)
        self.d_verify = sampler(params.token_verify)
        self.d_redis_op = sampler(params.redis_op)
        self.d_redis_pipelined = sampler(params.redis_pipelined_op)
        self.d_worker = sampler(params.worker_record)
        self.d_loadgen = sampler(params.loadgen_event)
        self.redis_link = params.redis_link.mean  # constant: keeps Redis arrivals in call order

        traced_set = set(traced)
        self.convs = [Conv(c, c.index in traced_set) for c in scenario.convs]
        self.nodes = [Node(f"{self.node_prefix}-{i}", i) for i in range(nodes)]
        self.workers = [Node(f"worker-{i}", i) for i in range(workers)]
        self.redis = FifoServer("redis")
        n = len(self.nodes)
        self.users = []
        for i, name in enumerate(scenario.names):
            home = zlib.crc32(name.encode()) % n  # imlab.client.ordered_endpoints
            order = [(home + k) % n for k in range(n)]
            self.users.append(User(i, name, [self.convs[k] for k in scenario.user_convs[i]], order))
        if params.loadgen_processes > 0:
            lgs = [FifoServer(f"locust-{k}") for k in range(params.loadgen_processes)]
            for u in self.users:
                u.loadgen = lgs[u.idx % len(lgs)]
            self.loadgens = lgs
        else:
            self.loadgens = []
        self.ledger = Ledger()
        self.counts = Counts(0.0)
        self.traced_msgs: dict[int, Msg] = {}  # stored traced messages, for sync pages
        self.in_flight = 0
        self.redis_done = 0.0  # when the Redis command whose effect is running finishes
        self.broker: Broker | None = None
        self.group: ConsumerGroup | None = None
        if self.uses_kafka:
            self.broker = Broker(
                self.env,
                random.Random(f"{seed}/kafka"),
                link=params.kafka_link.distribution(),
                drop_prob=faults.kafka_loss,
                silent_drop=self.kafka_drop_is_silent(),
                request_timeout=params.kafka_request_timeout,
                stale_ack_window=params.kafka_stale_window,
                durable=params.kafka_durable,
            )
            self.group = ConsumerGroup(
                self.broker, f"imlab-{self.stage}", session_timeout=params.kafka_session_timeout
            )
        self.setup()

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

    # ------------------------------------------------------------ building blocks

    def cpu(self, node: Node, service: float) -> Steps:
        """Queue for `node`'s event loop and run `service` seconds on it."""
        env = self.env
        done = node.cpu.serve(env.now, service)
        yield env.timeout(done - env.now)

    def redis_call(self, node: Node, effect: Callable[[], Any], ops: int = 1) -> Steps:
        """One round trip from `node` to Redis; `effect` runs when Redis executes it.

        A node has at most `redis_pool` calls out at once (redis-py's connection pool,
        256 in the real servers): one more fails at once, as "Too many connections".

        A paused Redis executes it later (the call fails after the timeout, the
        effect happens anyway); a dead Redis refuses it (no effect). The link to
        Redis has a constant delay, so commands reach it in the order they are
        sent and the Redis server can be served at the moment of the call."""
        if node.redis_busy >= self.p.redis_pool:
            self.counts.inc("redis_pool_exhausted")
            raise Unavailable("redis pool")
        node.redis_busy += 1
        try:
            return (yield from self._redis_round_trip(effect, ops))
        finally:
            node.redis_busy -= 1

    def _redis_round_trip(self, effect: Callable[[], Any], ops: int) -> Steps:
        env = self.env
        t0 = env.now
        link = self.redis_link
        service = self.d_redis_op()
        if ops > 1:
            service += sum(self.d_redis_pipelined() for _ in range(ops - 1))
        try:
            done = self.redis.serve(t0 + link, service)
        except Refused as r:
            yield env.timeout(max(0.0, r.at - t0) + link)
            raise Unavailable("redis") from None
        self.redis_done = done
        result = effect()
        back = done + link - t0
        if back > self.p.redis_timeout:
            yield env.timeout(self.p.redis_timeout)
            raise Unavailable("redis timeout")
        yield env.timeout(back)
        return result

    def store_append(self, msg: Msg) -> int:
        """The store's Lua append (imlab/store.py): next seq of the conversation; a
        message already stored keeps its seq (the client_msg_id dedup)."""
        if msg.seq is not None:
            return msg.seq
        conv = msg.conv
        conv.seq += 1
        msg.seq = conv.seq
        conv.stored.append(msg.mid)
        return msg.seq

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
        if user.traced or user.loadgen is not None:
            ev = self.env.timeout(arrival - self.env.now)
            ev.callbacks.append(lambda _e: self._arrive(conn, msg))
        else:
            self.receive(user, msg.mid, msg.seq, msg.conv, arrival, "push")

    def _arrive(self, conn: Conn, msg: Msg) -> None:
        user = conn.user
        if conn.silent or self.env.now >= conn.closes_at or conn is not user.conn:
            self.counts.inc("pushes_into_dead_connections")
            return
        t = self.env.now
        if user.loadgen is not None:
            t = user.loadgen.serve(t, self.d_loadgen())
        self.receive(user, msg.mid, msg.seq, msg.conv, t, "push")

    # ------------------------------------------------------------ the client inbox

    def receive(
        self, user: User, mid: int, seq: int | None, conv: Conv, t: float, via: str
    ) -> None:
        """`imlab.client.Inbox.accept`: hand over in seq order, buffer ahead of a gap."""
        if seq is None:
            self.hand_over(user, mid, None, conv, t, via)
            return
        ci = conv.index
        cur = user.max_seq.get(ci, 0)
        if seq <= cur:
            self.counts.inc("inbox_duplicates")
            return
        waiting = user.pending.get(ci)
        if seq != cur + 1:
            if waiting is None:
                waiting = user.pending[ci] = {}
            waiting.setdefault(seq, (mid, via))
            if via == "push" and not user.repairing:
                user.repairing = True
                delay = self.p.gap_sync_delay + 0.25 * self.rng.random()
                ev = self.env.timeout(max(0.0, t - self.env.now) + delay)
                ev.callbacks.append(lambda _e: self.post(user, "repair", self.env.now))
            return
        self.hand_over(user, mid, seq, conv, t, via)
        nxt = seq + 1
        if waiting:
            while nxt in waiting:
                held, path = waiting.pop(nxt)  # a push held behind the gap stays a push
                self.hand_over(user, held, nxt, conv, t, path)
                nxt += 1
            if not waiting:
                del user.pending[ci]
        user.max_seq[ci] = nxt - 1

    def hand_over(
        self, user: User, mid: int, seq: int | None, conv: Conv, t: float, via: str
    ) -> None:
        """A message handed to the application: a `recv` record and the counts."""
        led = self.ledger
        sender = led.sender[mid]
        if sender == user.idx:
            self.counts.inc("self_receipts")
        else:
            # The inbox hands each seq over once, and v1 pushes each message once: every
            # delivery here is a first receipt.
            led.got[mid] += 1
            latency = t - led.intended[mid]
            if via == "push":
                self.counts.inc("deliveries_push")
                self.counts.at("deliveries_push", t)
                self.counts.push_latency.add(latency if latency > 0 else 1e-9)
            else:
                self.counts.inc("deliveries_sync")
                self.counts.at("deliveries_sync", t)
                self.counts.sync_latency.add(latency if latency > 0 else 1e-9)
        if conv.traced and self.history is not None:
            m = self.traced_msgs.get(mid)
            cmid = m.cmid if m is not None else self._cmid(sender, mid)
            self.history.recv(
                t,
                user.name,
                conv.cid,
                cmid or "",
                sender=self.users[sender].name,
                via=via,
                seq=seq,
                node=user.conn.node.name if user.conn else None,
            )

    def _cmid(self, sender: int, mid: int) -> str:
        return f"{self.users[sender].name}-sim-{mid}"

    # ------------------------------------------------------------ the user's greenlet

    def post(self, user: User, action: str, arg: float) -> None:
        """Give the user's greenlet an action; it runs now or after the current one."""
        if action == "repair" and any(a == "repair" for a, _ in user.queue):
            return
        user.queue.append((action, arg))
        if not user.busy:
            self._wake(user)

    def _wake(self, user: User) -> None:
        """Run the greenlet's next action, now or when it stops waiting for an ack."""
        user.busy = True
        if user.free_at > self.env.now:
            self.at(user.free_at, partial(self._next, user))
        else:
            self._next(user)

    def _next(self, user: User) -> None:
        action, arg = user.queue.popleft()
        self.env.process(self._run_action(user, action, arg))

    def _post_now(self, user: User, action: str) -> None:
        self.post(user, action, self.env.now)

    def _run_action(self, user: User, action: str, arg: float) -> Steps:
        try:
            if action == "send":
                if user.online:
                    yield from self.client_send(user, arg)
                else:
                    self.counts.inc("skipped_offline")
            elif action == "drop":
                self.client_drop(user)
            elif action == "back":
                if not user.online:
                    yield from self.client_back(user)
            elif action == "repair":
                user.repairing = False
                if user.online and user.pending:
                    yield from self.catch_up(user, only=list(user.pending))
            elif action == "final":
                if not user.online and user.churn is not None:
                    yield from self.client_back(user)
                if user.online:
                    yield from self.catch_up(user)
                    if user.pending:
                        yield from self.catch_up(user, only=list(user.pending))
                    self.counts.inc("final_synced")
                user.finished = True
        finally:
            if user.queue:
                self._wake(user)
            else:
                user.busy = False

    def request(
        self,
        user: User,
        handler: Callable[[Node], Steps],
        *,
        start: float | None = None,
        wait: bool = True,
    ) -> Steps:
        """One call from the client: up the link, the handler on the node, the ack back.

        The call leaves at `start` (default now). Returns (ok, value or error code,
        ack time); a call that gets no ack in time returns (False, None, the moment
        the client gives up). With `wait` false the process does not wait for the
        ack's arrival (the caller only records it): one event less per send."""
        env = self.env
        conn = user.conn
        t0 = env.now if start is None else start
        deadline = t0 + self.p.call_timeout
        if conn is None or not conn.open:
            return (yield from self._no_ack(deadline, wait))
        node = conn.node
        yield env.timeout(t0 + self.d_client() - env.now)
        if not node.alive or not conn.open:
            return (yield from self._no_ack(deadline, wait))
        try:
            yield from self.cpu(node, self.d_request())
            value = yield from handler(node)
            ok = True
        except Unavailable:
            ok, value = False, "unavailable"
        except ProtocolRefusal as exc:
            ok, value = False, exc.code
        except Refused:
            return (yield from self._no_ack(deadline, wait))
        if not node.alive or not conn.open:
            return (yield from self._no_ack(deadline, wait))
        back = env.now + self.d_client()
        if back < user.down_last:
            back = user.down_last
        user.down_last = back
        if back > deadline or back >= conn.closes_at:
            return (yield from self._no_ack(deadline, wait))
        if user.loadgen is not None:
            yield env.timeout(back - env.now)
            back = user.loadgen.serve(back, self.d_loadgen())
        if wait and back > env.now:
            yield env.timeout(back - env.now)
        return ok, value, back

    def _no_ack(self, deadline: float, wait: bool) -> Steps:
        if wait and deadline > self.env.now:
            yield self.env.timeout(deadline - self.env.now)
        return False, None, deadline

    def client_send(self, user: User, intended: float) -> Steps:
        env = self.env
        at = max(env.now, intended) + self.d_send_lag()
        if user.loadgen is not None:
            yield env.timeout(at - env.now)
            at = user.loadgen.serve(at, self.d_loadgen())
        conv = self.convs[self.sc.send_conv[user.idx]]
        mid = self.ledger.new(user.idx, conv.index, intended, len(conv.members) - 1)
        user.sends += 1
        cmid = f"{user.name}-sim-{user.sends}" if conv.traced else None
        msg = Msg(mid, conv, user.idx, intended, cmid)
        if conv.traced:
            self.traced_msgs[mid] = msg
        self.counts.inc("sends")
        self.counts.at("sends", at)
        node_name = user.conn.node.name if user.conn else None
        if conv.traced and self.history is not None:
            self.history.send(
                at, user.name, conv.cid, cmid or "", intended=intended, node=node_name
            )
        self.in_flight += 1
        ok, value, t = yield from self.request(
            user, partial(self.handle_send, user=user, msg=msg), start=at, wait=False
        )
        self.in_flight -= 1
        user.free_at = t  # the greenlet is blocked in `send` until the ack or the timeout
        if value is None and not ok:
            self.counts.inc("never_acked")
            return
        self.counts.ack_latency.add(max(t - intended, 1e-9))
        if ok:
            self.ledger.status[mid] = OK
            self.counts.inc("acked_ok")
            self.counts.at("acked_ok", t)
        else:
            self.ledger.status[mid] = ERROR
            self.counts.inc("acked_error")
            self.counts.at("acked_error", t)
            self.counts.errors[value] = self.counts.errors.get(value, 0) + 1
        if conv.traced and self.history is not None:
            self.history.ack(
                t,
                user.name,
                conv.cid,
                cmid or "",
                ok=ok,
                err=None if ok else str(value),
                seq=value if ok else None,
                node=node_name,
            )

    # ------------------------------------------------------------ connections

    def connect(self, user: User, *, record: bool = True) -> Steps:
        """Connect to the first live node in the user's order, log in, say hello; then
        catch up. Returns True when connected."""
        env = self.env
        for k in user.endpoints:
            node = self.nodes[k]
            yield env.timeout(self.d_client())
            if not node.alive:
                yield env.timeout(self.d_client())  # connection refused
                continue
            conn = Conn(user, node)
            try:
                yield from self.cpu(node, self.d_connect() + self.connect_cost())
            except Refused:
                continue
            node.local[user.idx] = conn
            user.conn = conn
            try:
                yield from self.login(node, user)
            except Unavailable:  # the session stays; the route was not recorded
                self.counts.inc("route_errors")
            yield env.timeout(self.d_client())
            if not node.alive:
                continue
            user.online = True
            self.counts.inc("connects")
            if record and user.traced and self.history is not None:
                self.history.connect(env.now, user.name, node=node.name)
            yield from self.catch_up(user)
            return True
        self.counts.inc("connect_failed")
        return False

    def connect_cost(self) -> float:
        """Extra CPU at connect (v4: the token check)."""
        return 0.0

    def close_conn(self, user: User, *, tell_server: bool, record: bool = True) -> None:
        """The client closes its connection now; the server learns it one link later."""
        conn = user.conn
        user.online = False
        if conn is None:
            return
        conn.closes_at = min(conn.closes_at, self.env.now)
        if record and user.traced and self.history is not None:
            self.history.disconnect(self.env.now, user.name, node=conn.node.name)
        if tell_server:
            self.env.process(self._server_learns(conn))

    def _server_learns(self, conn: Conn) -> Steps:
        yield self.env.timeout(self.d_client())
        conn.open = False
        node = conn.node
        if node.alive and node.local.get(conn.user.idx) is conn:
            del node.local[conn.user.idx]
            with contextlib.suppress(Unavailable):
                yield from self.logout(node, conn.user)

    def client_drop(self, user: User) -> None:
        env = self.env
        if not user.online or env.now >= self.send_end:
            return
        clock = user.churn
        silent = clock.silent()
        self.counts.inc("drops")
        conn = user.conn
        if silent:
            self.counts.inc("silent_drops")
            user.online = False
            if conn is not None:
                conn.silent = True
                conn.closes_at = env.now
            if user.traced and self.history is not None:
                self.history.disconnect(
                    env.now,
                    user.name,
                    node=conn.node.name if conn else None,
                    reason="network lost (silent: the server is not told)",
                )
        else:
            self.close_conn(user, tell_server=True)
        user.back_at = env.now + clock.offline_for()
        self.at(user.back_at, lambda: self.post(user, "back", self.env.now))

    def client_back(self, user: User) -> Steps:
        conn = user.conn
        if conn is not None and conn.silent:
            # The dead connection is closed now, quietly (no history event).
            self.env.process(self._server_learns(conn))
        user.back_at = math.inf
        ok = yield from self.connect(user)
        if ok:
            self.counts.inc("returns")
            if self.env.now < self.send_end and user.churn is not None:
                user.next_drop = self.env.now + user.churn.online_for()
                self.at(user.next_drop, partial(self._post_now, user, "drop"))
        else:  # refused or unreachable: the load tool's user tries again half a second later
            user.back_at = self.env.now + RETRY_BACK
            self.at(user.back_at, partial(self._post_now, user, "back"))

    def catch_up(self, user: User, only: list[int] | None = None) -> Steps:
        """The seed's rule (`ClientCore.catch_up`): `latest`, then sync each
        conversation whose max seq is behind; `only` repairs gaps without `latest`."""
        if FEATURE_HISTORY not in self.features:
            return
        if only is None:
            ok, value, _t = yield from self.request(
                user, lambda node: self.handle_latest(node, user)
            )
            if not ok or value is None:
                return
            targets: list[tuple[int, int]] = value
        else:
            targets = [(ci, -1) for ci in only]
        for ci, latest in targets:
            conv = self.convs[ci]
            while True:
                after = user.max_seq.get(ci, 0)
                if 0 <= latest <= after:
                    break
                handler = partial(self._sync_on, user=user, conv=conv, after=after)
                ok, page, t = yield from self.request(user, handler)
                if not ok or page is None:
                    break
                mids, first_seq, latest_seq, has_more = page
                for i, mid in enumerate(mids):
                    self.receive(user, mid, first_seq + i, conv, t, "sync")
                self.counts.inc("syncs")
                if conv.traced and self.history is not None:
                    self.history.sync(
                        t,
                        user.name,
                        conv.cid,
                        after_seq=after,
                        latest_seq=latest_seq,
                        n=len(mids),
                        node=user.conn.node.name if user.conn else None,
                    )
                latest = latest_seq
                if not mids or not has_more:
                    break

    # ------------------------------------------------------------ history handlers (v2+)

    def handle_latest(self, node: Node, user: User) -> Steps:
        """`latest`: the user's conversations (SMEMBERS) and their seqs (MGET)."""
        yield from self.redis_call(node, lambda: None)
        seqs = yield from self.redis_call(node, lambda: [(c.index, c.seq) for c in user.convs])
        return seqs

    def _sync_on(self, node: Node, *, user: User, conv: Conv, after: int) -> Steps:
        return self.handle_sync(node, user, conv, after)

    def handle_sync(self, node: Node, user: User, conv: Conv, after: int) -> Steps:
        """`sync`: a membership check, then one page after `after` and the latest seq."""
        limit = self.p.sync_page
        yield from self.redis_call(node, lambda: None)

        def page() -> tuple[list[int], int, int, bool]:
            stored = conv.stored
            mids = stored[after : after + limit].tolist()
            return mids, after + 1, conv.seq, len(stored) > after + limit

        result = yield from self.redis_call(node, page)
        cost = sum(self.d_sync_msg() for _ in range(len(result[0])))
        if cost:
            yield from self.cpu(node, cost)
        return result

    # ------------------------------------------------------------ consumers (v3, v4)

    def consumer_loop(self, node: Node, handle: Callable[[Node, Msg], Steps]) -> Steps:
        """A `ConsumerLoop`: fetch a batch, handle each partition's records in order
        (partitions side by side), commit, fetch again."""
        env = self.env
        consumer = node.consumer
        group = self.group
        assert group is not None
        while node.alive:
            rejoin = self.consumers_back_at()
            if rejoin > env.now:  # the broker lost the group: the consumer rejoins first
                yield env.timeout(rejoin - env.now)
                continue
            records = yield from consumer.poll_steps()
            if not node.alive:
                return
            if not records:
                continue
            parts: dict[tuple[str, int], list[Record[Msg]]] = {}
            for rec in records:
                parts.setdefault((rec.topic, rec.partition), []).append(rec)
            procs = [env.process(self._partition(node, recs, handle)) for recs in parts.values()]
            yield env.all_of(procs)
            if not node.alive:
                return
            yield env.timeout(2 * self.p.kafka_link.mean)  # the commit's round trip
            assert self.broker is not None
            handled = [self.broker.topics[t].partitions[i] for t, i in parts]
            consumer.commit(handled)
            for p in handled:
                p.trim(group.committed(p))

    def _partition(
        self, node: Node, records: list[Record[Msg]], handle: Callable[[Node, Msg], Steps]
    ) -> Steps:
        env = self.env
        for rec in records:
            delay = 0.05
            while True:
                if not node.alive:
                    return
                try:
                    yield from self.cpu(node, self.d_worker())
                    yield from handle(node, rec.value)
                    break
                except Unavailable:
                    self.counts.inc("record_retries")
                    yield env.timeout(delay)
                    delay = min(delay * 2, 2.0)
                except Refused:
                    return

    # ------------------------------------------------------------ faults and the run

    def at(self, t: float, fn: Callable[[], None]) -> None:
        ev = self.env.timeout(max(0.0, t - self.env.now))
        ev.callbacks.append(lambda _e: fn())

    def consumers_back_at(self) -> float:
        """When consumers fetch again after a broker restart (now if they are not waiting)."""
        return self.env.now

    def _apply_faults(self) -> None:
        base = self.send_start
        for f in self.faults.redis_outages:
            self.redis.pause(base + f.start, base + f.end)
        for r in self.faults.redis_restarts:
            self.redis.down(base + r.start, base + r.end)
        if self.broker is not None:
            for b in self.faults.broker_downs:
                self.broker.outage(base + b.start, self.broker_outage(b))
        for c in self.faults.crashes:
            node = self.find_node(c.target)
            self.at(base + c.at, partial(self.crash, node))

    def broker_outage(self, fault: BrokerDown) -> float:
        """How long the cluster is unavailable: one broker of three only until the
        others lead its partitions (`kafka_failover`); else the fault's window."""
        if fault.scope != "all" and self.p.kafka_brokers >= 3:
            return min(fault.duration, self.p.kafka_failover)
        return fault.duration

    def find_node(self, name: str) -> Node:
        for node in (*self.nodes, *self.workers):
            if node.name == name:
                return node
        names = ", ".join(n.name for n in (*self.nodes, *self.workers))
        raise ValueError(f"crash: no process {name!r} in this model (have {names})")

    def crash(self, node: Node) -> None:
        """SIGKILL: the node's loop, login table and connections are gone; its clients
        notice at once and reconnect elsewhere."""
        env = self.env
        node.alive = False
        node.cpu.down(env.now)
        self.counts.inc("crashes")
        self.on_node_crash(node)
        for conn in list(node.local.values()):
            user = conn.user
            conn.open = False
            if user.conn is conn and user.online:
                self.close_conn(user, tell_server=False)
                env.process(self._reconnect(user))
        node.local.clear()

    def _reconnect(self, user: User) -> Steps:
        delay = self.p.reconnect_min
        while True:
            yield self.env.timeout(delay)
            if user.online:
                return
            ok = yield from self.connect(user)
            if ok:
                return
            delay = min(delay * 2, self.p.reconnect_max)

    def start(self) -> None:
        """Connect everybody, spread over users / spawn rate seconds as Locust starts
        them, and record the groups the setup created."""
        spread = len(self.users) / self.spawn_rate
        for user in self.users:
            self.at(spread * self.rng.random(), partial(self._first, user))
        if self.history is not None:
            for conv in self.convs:
                if conv.traced and conv.gid is not None:
                    creator = self.users[conv.members[0]].name
                    self.history.group(
                        0.0, creator, conv.gid, [self.users[m].name for m in conv.members]
                    )

    def open_window(self, t: float) -> None:
        """The send window opens at `t` (as the runner opens it once everybody is
        connected): faults are timed from here; the send clock and churn start."""
        self.send_start = t
        self.send_end = t + self.sc.duration
        self.counts.base = t
        self._apply_faults()
        self.env.process(self._send_clock())
        for u in self.sc.churners:
            user = self.users[u]
            user.churn = self.sc.churn_clock(u)
            user.next_drop = self.send_start + user.churn.online_for()
            self.at(user.next_drop, partial(self._post_now, user, "drop"))
        self.at(self.send_end, self._window_closed)

    def _first(self, user: User) -> None:
        user.busy = True

        def first() -> Steps:
            try:
                yield from self.connect(user)
            finally:
                if user.queue:
                    self._wake(user)
                else:
                    user.busy = False

        self.env.process(first())

    def _send_clock(self) -> Steps:
        """Every user's slots `send_start + phase + k / rate`, in time order."""
        env = self.env
        period = 1.0 / self.sc.rate
        order = sorted(range(len(self.users)), key=lambda u: self.sc.phases[u])
        phases = [self.sc.phases[u] for u in order]
        users = [self.users[u] for u in order]
        k = 0
        while True:
            base = self.send_start + k * period
            if base >= self.send_end:
                return
            for ph, user in zip(phases, users, strict=True):
                t = base + ph
                if t >= self.send_end:
                    return
                if t > env.now + 0.001:  # slots due within a millisecond share a wake-up
                    yield env.timeout(t - env.now)
                self.slot(user, t)
            k += 1

    def slot(self, user: User, t: float) -> None:
        if not user.busy and not user.online:
            self.counts.inc("skipped_offline")
            return
        user.queue.append(("send", t))
        if not user.busy:
            self._wake(user)

    def _window_closed(self) -> None:
        for user in self.users:
            if user.churn is not None and not user.online:
                self.post(user, "back", self.env.now)

    def run(self, progress: Callable[[StageModel], None] | None = None, step: float = 1.0) -> None:
        """Run the send window, drain until nothing moves (or the cap), order the final
        catch-up, and run until every client has done it (or the cap)."""
        self.start()
        env = self.env
        t = 0.0
        connect_cap = 30.0 + 2.0 * len(self.users) / self.spawn_rate  # the runner's budget
        while t < connect_cap and self.counts.c.get("connects", 0) < len(self.users):
            t += 0.25
            env.run(until=t)
            if progress:
                progress(self)
        t += 0.5  # the runner opens the window half a second after the last connect
        env.run(until=t)
        self.open_window(t)
        while t < self.send_end:
            t = min(t + step, self.send_end)
            env.run(until=t)
            if progress:
                progress(self)
        quiet_since = t
        last = self._activity()
        cap = self.send_end + self.max_drain
        while t < cap:
            t = min(t + 0.25, cap)
            env.run(until=t)
            now = self._activity()
            if now != last or self.in_flight:
                last, quiet_since = now, t
            elif t - quiet_since >= self.settle:
                break
            if progress:
                progress(self)
        self.final_at = t
        for user in self.users:
            self.post(user, "final", t)
        # The runner's own wait for the final sync, within Locust's run-time limit
        # (`-t`: connect budget + window + drain cap + 120 s), which stops every user.
        cap = min(t + 30.0 + len(self.users) / 20.0, self.send_end + self.max_drain + 120.0)
        while t < cap and not all(u.finished for u in self._unfinished()):
            t = min(t + 0.5, cap)
            env.run(until=t)
            if progress:
                progress(self)
        self.drain_end = t

    def loadgens_as_nodes(self) -> list[Node]:
        out = []
        for lg in self.loadgens:
            node = Node(lg.name, 0)
            node.cpu = lg
            out.append(node)
        return out

    def kafka_figures(self) -> dict[str, Any] | None:
        b = self.broker
        if b is None:
            return None
        return {
            "published": b.published,
            "appended": b.appended,
            "dropped": b.dropped,
            "timed_out": b.timed_out,
            "lost_in_outages": b.lost_in_outages,
            "durable": b.durable,
            "outages": [[round(s, 3), None if e is None else round(e, 3)] for s, e in b.outages],
            "group_lag_at_end": self.group.lag() if self.group is not None else None,
        }

    def _unfinished(self) -> list[User]:
        return [u for u in self.users if not u.finished]

    def _activity(self) -> tuple[int, int, int]:
        c = self.counts.c
        return (
            c.get("acked_ok", 0) + c.get("acked_error", 0),
            c.get("deliveries_push", 0),
            c.get("deliveries_sync", 0),
        )
