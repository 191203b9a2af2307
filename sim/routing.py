"""The routing both distributed stages share, as `imlab/routing.py` is shared by the
real v3 and v4: `user -> node` routes in Redis and a per-node Redis pub/sub relay.

Routes are written at login and cleared at logout only while they still name the
node (a login elsewhere wins); a crashed node never clears its routes. The relay is
at most once: an envelope published to a node that is down reaches nobody. Both
are modelled with their Redis round trips; a relayed envelope reaches the node
when Redis has executed the PUBLISH, costs the node's loop a decode, then a push.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from sim.client import User
from sim.consumers import ConsumerLoop
from sim.kafka import Broker, Topic
from sim.kafka_group import Consumer
from sim.server import Msg, Node, Steps
from sim.stage import StageModel


class RoutingModel(StageModel):
    """A stage with routes, a relay and Kafka consumers on some of its processes."""

    uses_redis = True
    uses_kafka = True

    def setup(self) -> None:
        self.kafka_resets: list[tuple[float, float]] = []
        self.kafka_rejoins: list[tuple[float, float]] = []
        broker, group = self.broker, self.group
        assert broker is not None and group is not None
        topics = self.make_topics(broker)
        for node in self.consumer_nodes():
            node.consumer = Consumer(
                broker,
                node.name,
                self.rng,
                fetch_wait=self.p.kafka_fetch_wait,
                max_records=self.p.kafka_max_records,
                long_poll=self.p.kafka_long_poll,
            )
            group.join(node.consumer)
        group.subscribe_all(topics)
        for node in self.consumer_nodes():
            self.env.process(ConsumerLoop(self, node, self.process).run())

    dm_topic = "im.dm"
    dm_partitions = 8

    def make_topics(self, broker: Broker) -> list[Topic[Msg]]:
        """The stage's topics, each conversation's set on it: v3 and v4 have `im.dm`
        (8 partitions, keyed by conversation) and a one-partition topic per group."""
        dm = broker.topic(self.dm_topic, self.dm_partitions)
        topics = [dm]
        for conv in self.convs:
            if conv.gid is None:
                conv.topic = dm
            else:
                conv.topic = broker.topic(f"im.group.{conv.gid}", 1)
                topics.append(conv.topic)
        return topics

    def publish(self, msg: Msg) -> Steps:
        """`KafkaLink.publish`: fails at once while the link re-creates its producer after
        a broker restart (the watchdog noticed the lost sentinel topic)."""
        now = self.env.now
        for start, end in self.kafka_resets:
            if start <= now < end:
                yield self.env.timeout(self.p.kafka_link.mean)
                return False
        result = yield from msg.conv.topic.publish_steps(msg.conv.cid, msg)
        return result.ok

    def consumers_back_at(self) -> float:
        now = self.env.now
        for start, end in self.kafka_rejoins:
            if start <= now < end:
                return end
        return now

    def apply_faults(self) -> None:
        super().apply_faults()
        p, base = self.p, self.send_start
        self.kafka_resets = []
        self.kafka_rejoins = []
        for b in self.faults.broker_downs:
            back = base + b.start + self.chaos.broker_outage(b)
            if not p.kafka_durable:  # the link finds its topics gone and re-creates them
                self.kafka_resets.append(
                    (back + p.kafka_stale_window, back + p.kafka_stale_window + p.kafka_reset)
                )
            self.kafka_rejoins.append((back, back + p.kafka_rejoin))

    def consumer_nodes(self) -> list[Node]:
        """The processes that run a consumer (v3: every server; v4: the workers)."""
        raise NotImplementedError

    def process(self, node: Node, msg: Msg) -> Steps:
        """Handle one record taken from Kafka."""
        raise NotImplementedError
        yield  # pragma: no cover

    def on_node_crash(self, node: Node) -> None:
        if node.consumer is not None and self.group is not None:
            self.group.fail(node.consumer)

    # ------------------------------------------------------------ routes

    def login(self, node: Node, user: User) -> Steps:
        def record() -> None:
            self.store.routes[user.idx] = node

        yield from self.redis_call(node, record, keys=(user.name,))

    def logout(self, node: Node, user: User) -> Steps:
        def clear_if_mine() -> None:
            if self.store.routes.get(user.idx) is node:
                del self.store.routes[user.idx]

        yield from self.redis_call(node, clear_if_mine, keys=(user.name,))

    def lookup(self, node: Node, members: Iterable[int]) -> Steps:
        """Each member's node as Redis has it now (MGET of the routes, or v3's group record)."""
        routes = self.store.routes
        members = list(members)
        keys = [self.users[m].name for m in members] if self.store.sharded else ()
        found = yield from self.redis_call(
            node, lambda: [(m, routes.get(m)) for m in members], keys=keys
        )
        return found

    # ------------------------------------------------------------ delivery

    def deliver(
        self, node: Node, found: list[tuple[int, Node | None]], msg: Msg, *, local: bool = True
    ) -> Steps:
        """Push to members connected to `node` itself (`local`), relay to the other nodes."""
        targets: dict[Node, list[int]] = {}
        for user, where in found:
            if where is not None:
                targets.setdefault(where, []).append(user)
        mine = targets.pop(node, None) if local else None
        if mine:
            yield from self.push(node, mine, msg)
        if targets:
            yield from self.relay(node, targets, msg)

    def relay(self, node: Node, targets: dict[Node, list[int]], msg: Msg) -> Steps:
        """`Relay.send`: one PUBLISH per node, in one pipeline."""

        def publish() -> None:
            arrive = self.store.done + self.store.link
            self.at(arrive, partial(self._relayed, targets, msg))

        keys = [n.name for n in targets] if self.store.sharded else ()  # the nodes' channels
        yield from self.redis_call(node, publish, ops=len(targets), keys=keys)

    def _relayed(self, targets: dict[Node, list[int]], msg: Msg) -> None:
        """The envelopes reach their nodes: each decodes its own and pushes (one CPU job)."""
        for node, users in targets.items():
            if node.alive:
                self.push_now(node, users, msg, before=self.d_relay())
            else:
                self.counts.inc("relay_no_listener")
