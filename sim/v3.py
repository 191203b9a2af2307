"""Model of stage v3 (`versions/v3/server.py`, seed section 四): N servers, Redis, Kafka.

Each server holds connections *and* runs a consumer in one consumer group: the
coupling the seed names is visible as one FIFO event loop per server doing both.
At login the server records the route in Redis. A send checks membership (a
group), publishes to Kafka (a group's own one-partition topic, or `im.dm` with 8
partitions keyed by conversation) and is acked once Kafka acks, without a seq.
Whoever owns the partition stores the message (the seq is assigned here, in Kafka
order), looks the members' servers up and delivers: a push to its own
connections, a relay envelope to each other server.

Failures, as the real code meets them: a publish lost by the broker is acked all
the same and is never stored — lost, and nobody can sync it (`kafka-loss`; the
real producer's drop is modelled as acked, which is what the seed's open problem
says a client cannot tell apart). A dead broker fails publishes after the 3 s
request timeout (`unavailable`) and loses what it held, and for about a second
after it is back acks writes that are gone. While Redis is paused the membership
check fails (`unavailable`) and the consumer retries its record with backoff: a
delay, not a loss. A crashed server's clients reconnect elsewhere; its partitions
wait for the session timeout and are re-read from the last commit (the store's
dedup makes the second store a no-op); relays to it reach nobody.
"""

from __future__ import annotations

from sim.client import User
from sim.routing import RoutingModel
from sim.server import FEATURE_DM, FEATURE_GROUPS, FEATURE_HISTORY, Msg, Node, Steps, Unavailable


class V3(RoutingModel):
    stage = "v3"
    features = frozenset({FEATURE_DM, FEATURE_GROUPS, FEATURE_HISTORY})
    node_prefix = "server"

    def consumer_nodes(self) -> list[Node]:
        return self.nodes

    def handle_send(self, node: Node, *, user: User, msg: Msg) -> Steps:
        if msg.conv.gid is not None:
            yield from self.redis_call(node, lambda: None, keys=(msg.conv.cid,))  # SISMEMBER
        published = yield from self.publish(msg)
        if not published:
            raise Unavailable("kafka")
        return None  # acked once Kafka has it; the seq comes later, from the consumer

    def process(self, node: Node, msg: Msg) -> Steps:
        """`Server.process`: store with the next seq, look the members' servers up, deliver."""
        duplicate = msg.seq is not None
        yield from self.redis_call(node, lambda: self.store.append(msg), keys=(msg.conv.cid,))
        if duplicate:
            self.counts.inc("kafka_duplicates")
            return
        found = yield from self.lookup(node, msg.conv.members)
        yield from self.deliver(node, found, msg)
