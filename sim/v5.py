"""Model of stage v5 (`versions/v5/gateway.py` and `worker.py`): v4's gateways and
workers with PostgreSQL as the system of record (`sim.sqlstore`), a transactional
outbox, receipts with redelivery at login, and Redis behind Sentinel for routes only.

Gateways (`Gateway`): a send checks membership in the database (a group), stores the
message with its seq *and* its outbox row in one transaction (`SqlStore.append`), and
acks after the commit: nothing on the send path touches Redis. Right after the ack the
gateway publishes (`_publish`, the fast path) and deletes the row once Kafka acks the
record. A publish without a receipt (a dropped publish, `kafka-loss`; the broker down,
`broker-down`: no ack within the request timeout) leaves the row, and each gateway's
sweeper (`_sweep_outbox`, every `OUTBOX_SWEEP` s) republishes the rows older than
`OUTBOX_GRACE` s, one after another, until Kafka acks them: an acked message is late,
never lost. Both gateways sweep the same table and a slow fast path may still be
under way, so Kafka can hold a record twice; the worker then pushes it twice and the
client's inbox keeps it once (counted as `inbox_duplicates`). `latest` and `sync` read
the database. Each gateway writes its users' routes again every `ROUTE_REFRESH` s
(`_refresh_routes`, one SET per user, one after another), which repairs routes lost to
a Redis failure. At login the gateway pushes what the user has not acknowledged
(`_redeliver`).

Workers (`Worker.process_batch`): Kafka consumers as in v4, over two shared topics
(`v5.dm`, `v5.groups`, 8 partitions each, keyed by conversation): the group's members
from the database, their gateways from Redis, one relay per gateway. A record that
meets an unavailable database or Redis is retried with backoff (`sim.consumers`), so a
Redis outage or a failover delays pushes while sends keep being acked; the consumer
group lives in Kafka, so consumption itself never waits for Redis.

Receipts: the client acknowledges what its inbox handed over (`receipt {conv, seq}`,
v5/STEP.md) and the gateway writes receipts to the database every 0.2 s. While a user
is offline its inbox cannot move, so what it acknowledged is its inbox's max seq per
conversation when it logs in again (less what the last 0.2 s flush had not written,
which at worst pushes a message twice); the model reads that instead of keeping a
receipts table and pushes the rest, oldest first, `REDELIVER_LIMIT` at most. The
client's own catch-up (`latest` + `sync`) asks for the same messages at the same
moment; whichever reaches it first is the delivery (the other is a duplicate), so
redelivery changes how a message arrives (push rather than sync) and the database's
load, not whether it arrives.

Faults: `kafka-loss` and `broker-down` delay (outbox), never lose; `redis-outage`
(Redis paused) and `redis-restart` delay pushes and logins' route writes, never sends;
`crash:gateway-N` moves its clients, and its outbox rows are the other gateway's
sweeper's; `crash:worker-N` as in v4. Two faults the fault spec does not know yet are
applied here by their kind, so the fault layer only has to parse them: `db-restart`
(a window: PostgreSQL is away, sends and syncs fail `unavailable`, records wait;
`SqlStore.restart`) and `redis-master-kill` (at a moment: Redis is away for
`redis_failover` s while Sentinel promotes the replica; `V5.redis_master_kill`).

Not modelled: rate limits and the group quota (the scenarios send far below 50/s per
user), token refresh and revocation (the connect's read of the revocation table is
modelled as a query at login; during a database outage the real connect is refused,
the model's goes through), the revocation poll and the receipt flush (a few queries a
second per gateway), the database's connection pool (10 per process; a queue, not a
refusal), the conversation's row lock (same-conversation sends are ordered by the
commit order anyway), the batch of the worker (it handles a partition's fetch with one
query, one MGET and one pipeline; the model, like v4's, takes records one by one). In a
sampled run (`--sample`) the database is loaded with the population's work like
Redis (its copies follow the sampled queries); the outbox sweeps and route refreshes of
the unsampled users are not (they are few per second per gateway).
"""

from __future__ import annotations

import random
from functools import partial
from typing import Any

from sim.client import User
from sim.core import UNAVAILABLE
from sim.engine import FifoServer, Sampler
from sim.kafka import Broker, Topic
from sim.routing import RoutingModel
from sim.server import FEATURE_DM, FEATURE_GROUPS, FEATURE_HISTORY, Msg, Node, Steps, Unavailable
from sim.sqlstore import SqlStore
from sim.store import Conv, Store

__all__ = ["V5"]

# The real gateway's constants (versions/v5/gateway.py): the code's, not measured.
ROUTE_REFRESH = 5.0
OUTBOX_SWEEP = 0.25
OUTBOX_GRACE = 1.0
OUTBOX_TAKE = 200  # rows per sweep (`_sweep_outbox`)
REDELIVER_LIMIT = 500
# versions/v5/topics.py
DM_TOPIC, GROUP_TOPIC, PARTITIONS = "v5.dm", "v5.groups", 8
# Round trips of `SqlStore.append`'s transaction: BEGIN, the dedup read, the seq
# upsert, the message insert, (a DM) the user_convs index, the outbox insert, COMMIT.
APPEND_STATEMENTS_GROUP, APPEND_STATEMENTS_DM = 6, 7


class V5(RoutingModel):
    stage = "v5"
    features = frozenset(
        {FEATURE_DM, FEATURE_GROUPS, FEATURE_HISTORY, "token_auth", "authz", "receipts"}
    )
    node_prefix = "gateway"

    def setup(self) -> None:
        p = self.p
        streams = random.Random(f"{self.seed}/db")  # its own: the other draws stay as v4's
        self.db = SqlStore(
            self.env,
            link=p.db_link.mean,
            timeout=p.db_timeout,
            query=Sampler(p.db_query, streams),
            transaction=Sampler(p.db_transaction, streams),
            fsync=Sampler(p.db_fsync, streams),
        )
        self._failovers: set[float] = set()
        super().setup()
        for node in self.nodes:
            self.env.process(self.sweep_outbox(node))
            self.env.process(self.refresh_routes(node))

    def kafka_drop_is_silent(self) -> bool:
        return False  # v5 awaits the broker's receipt: a dropped publish has none

    def consumer_nodes(self) -> list[Node]:
        return self.workers

    def make_topics(self, broker: Broker) -> list[Topic[Msg]]:
        """`versions/v5/topics.py`: two shared topics; a group creates none."""
        dm = broker.topic(DM_TOPIC, PARTITIONS)
        groups = broker.topic(GROUP_TOPIC, PARTITIONS)
        for conv in self.convs:
            conv.topic = dm if conv.gid is None else groups
        return [dm, groups]

    def connect_cost(self) -> float:
        return self.d_verify()

    # ------------------------------------------------------------ faults

    def apply_faults(self) -> None:
        super().apply_faults()
        base = self.send_start
        for f in self.faults.items:
            kind = getattr(f, "kind", "")
            if kind == "db-restart":
                start = float(getattr(f, "start", 0.0))
                end = float(getattr(f, "end", start))
                self.db.restart(base + start, base + end)
            elif kind == "redis-master-kill":
                at = getattr(f, "at", None)
                self.redis_master_kill(base + float(getattr(f, "start", 0.0) if at is None else at))

    def redis_master_kill(self, at: float) -> None:
        """The Redis master is killed at `at` (absolute time): Redis refuses every call
        until Sentinel has promoted the replica and the clients found it
        (`redis_failover`). Routes survive (the replica had them; the gateways' route
        refresh writes any lost ones again). Giving the same moment twice applies it once."""
        if at not in self._failovers:
            self._failovers.add(at)
            for shard in self.store.shards:
                shard.down(at, at + self.p.redis_failover)

    def services(self) -> dict[str, FifoServer]:
        return {**super().services(), "postgres": self.db.postgres}

    def replace_service(self, name: str, server: FifoServer) -> None:
        if name == "postgres":
            self.db.postgres = server
        else:
            super().replace_service(name, server)

    def kafka_figures(self) -> dict[str, Any] | None:
        figures = super().kafka_figures()
        if figures is not None:
            c = self.counts.c
            figures["outbox"] = {
                "rows_written": self.db.outbox_added,
                "rows_deleted": self.db.outbox_deleted,
                "rows_left": len(self.db.outbox),
                "swept": c.get("outbox_swept", 0),
                "unreceipted": c.get("outbox_unreceipted", 0),
                "deferred": c.get("outbox_deferred", 0),
                "redelivered": c.get("redelivered", 0),
            }
        return figures

    # ------------------------------------------------------------ the gateway: sending

    def handle_send(self, node: Node, *, user: User, msg: Msg) -> Steps:
        """`Gateway.send`: membership (a group), the message and its outbox row in one
        transaction, the ack; the publish starts as the ack leaves."""
        db = self.db
        if msg.conv.gid is not None:
            yield from db.call(lambda: None)  # _active_member: membership
        statements = APPEND_STATEMENTS_DM if msg.conv.gid is None else APPEND_STATEMENTS_GROUP
        seq, outbox_id = yield from db.call(
            partial(self.append, msg), statements=statements, commit=True
        )
        if outbox_id is not None:
            self.env.process(self.publish_outbox(node, outbox_id, msg))
        return seq

    def append(self, msg: Msg) -> tuple[int, int | None]:
        """`SqlStore.append`'s effect: the next seq and the outbox row (a duplicate, the
        same client_msg_id again, keeps its seq and writes nothing)."""
        if msg.seq is not None:
            return msg.seq, None
        seq = Store.append(msg)
        return seq, self.db.outbox_add(msg)

    def publish_receipt(self, msg: Msg) -> Steps:
        """`KafkaLink.publish` as v5 uses it: True with the broker's receipt, False when
        the record was dropped (no receipt), `Unavailable` when the broker gave no
        answer within the request timeout or the link is re-creating its producer."""
        now = self.env.now
        for start, end in self.kafka_resets:
            if start <= now < end:
                yield self.env.timeout(self.p.kafka_link.mean)
                raise Unavailable("kafka")
        result = yield from msg.conv.topic.publish_steps(msg.conv.cid, msg)
        if result.err == UNAVAILABLE:
            raise Unavailable("kafka")
        return result.ok

    def publish_outbox(self, node: Node, outbox_id: int, msg: Msg) -> Steps:
        """`Gateway._publish`, the fast path: publish, and retire the row once Kafka has
        it; without a receipt the row stays for the sweeper."""
        try:
            received = yield from self.publish_receipt(msg)
            if not received:
                self.counts.inc("outbox_unreceipted")
                return
            if not node.alive:
                return
            yield from self.db.call(partial(self.db.outbox_done, [outbox_id]), commit=True)
        except Unavailable:
            self.counts.inc("outbox_deferred")

    def sweep_outbox(self, node: Node) -> Steps:
        """`Gateway._sweep_outbox`, every `OUTBOX_SWEEP` s after the last sweep ended:
        the rows older than `OUTBOX_GRACE`, published one after another; a failure
        (the broker or the database away) ends the sweep."""
        env = self.env
        db = self.db
        while node.alive:
            yield env.timeout(OUTBOX_SWEEP)
            if not node.alive:
                return
            try:
                rows = yield from db.call(partial(db.outbox_take, OUTBOX_GRACE, OUTBOX_TAKE))
                done: list[int] = []
                for outbox_id, msg in rows:
                    received = yield from self.publish_receipt(msg)
                    if not node.alive:
                        return
                    if not received:
                        self.counts.inc("outbox_unreceipted")
                        continue
                    done.append(outbox_id)
                if done:
                    yield from db.call(partial(db.outbox_done, done), commit=True)
                self.counts.inc("outbox_swept", len(done))
            except Unavailable:
                self.counts.inc("loop_errors_outbox")

    # ------------------------------------------------------------ the gateway: sessions

    def login(self, node: Node, user: User) -> Steps:
        """`Gateway.authenticate`'s read of the revocations, then `on_login`: the
        redelivery starts, and the route is written."""
        try:
            yield from self.db.call(lambda: None)  # _read_revocations
        except Unavailable:
            self.counts.inc("revocation_read_errors")
        self.env.process(self.redeliver(node, user))
        yield from super().login(node, user)

    def redeliver(self, node: Node, user: User) -> Steps:
        """`Gateway._redeliver`: what `user` may see and has not acknowledged (its
        conversations' latest seqs, its receipts, the messages after them), pushed on
        the session it logged in with, one emit each."""
        conn = node.local.get(user.idx)
        try:
            yield from self.db.call(lambda: None)  # latest(user)
            yield from self.db.call(lambda: None)  # receipts(user)
            pending = yield from self.db.call(partial(self.unacknowledged, user))
        except Unavailable:
            return
        if not pending:
            return
        for msg in pending:
            if conn is None or not conn.open or node.local.get(user.idx) is not conn:
                return
            yield from self.push(node, [user.idx], msg)
            self.counts.inc("redelivered")

    def unacknowledged(self, user: User) -> list[Msg]:
        """`SqlStore.unacknowledged`'s effect: per conversation, oldest first, the
        messages after what the user acknowledged (its inbox's max seq: see above)."""
        out: list[Msg] = []
        for conv in user.convs:
            acked = user.max_seq.get(conv.index, 0)
            for seq in range(acked + 1, conv.seq + 1):
                if len(out) >= REDELIVER_LIMIT:
                    return out
                out.append(self.stored(conv, seq))
        return out

    def stored(self, conv: Conv, seq: int) -> Msg:
        """The stored message `seq` of `conv`, as a payload to push."""
        mid = conv.stored[seq - 1]
        msg = self.traced_msgs.get(mid)
        if msg is None:
            led = self.ledger
            msg = Msg(mid, conv, led.sender[mid], led.intended[mid], None)
            msg.seq = seq
        return msg

    def refresh_routes(self, node: Node) -> Steps:
        """`Gateway._refresh_routes`: every `ROUTE_REFRESH` s, the route of every user
        connected here written again (one SET each, one after another)."""
        env = self.env
        routes = self.store.routes
        while node.alive:
            yield env.timeout(ROUTE_REFRESH)
            users = list(node.local)
            if not users or not node.alive:
                continue

            def write(users: list[int] = users) -> None:
                for u in users:
                    if u in node.local:
                        routes[u] = node

            try:
                keys = [self.users[u].name for u in users] if self.store.sharded else ()
                yield from self.redis_call(node, write, ops=len(users), pipelined=False, keys=keys)
            except Unavailable:
                self.counts.inc("loop_errors_routes")

    # ------------------------------------------------------------ the gateway: history

    def handle_latest(self, node: Node, user: User) -> Steps:
        """`SqlStore.latest`: one query over the user's conversations."""
        seqs = yield from self.db.call(lambda: [(c.index, c.seq) for c in user.convs])
        return seqs

    def handle_sync(self, node: Node, user: User, conv: Conv, after: int) -> Steps:
        """`Gateway.sync`: membership (a group), the latest seq and one page."""
        limit = self.p.sync_page
        if conv.gid is not None:
            yield from self.db.call(lambda: None)  # membership
        result = yield from self.db.call(lambda: Store.page(conv, after, limit), statements=2)
        cost = sum(self.d_sync_msg() for _ in range(len(result[0])))
        if cost:
            yield from self.cpu(node, cost)
        return result

    # ------------------------------------------------------------ the worker

    def process(self, node: Node, msg: Msg) -> Steps:
        """`Worker.process_batch` for one record: the group's memberships from the
        database, the members' gateways from Redis, one envelope per gateway."""
        if msg.conv.gid is not None:
            yield from self.db.call(lambda: None)  # memberships
        found = yield from self.lookup(node, msg.conv.members)
        yield from self.deliver(node, found, msg, local=False)
