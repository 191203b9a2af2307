"""Model of stage v4 (`versions/v4/gateway.py` and `worker.py`, seed section 五):
G gateways and W workers, Redis, Kafka.

Gateways hold connections only: they check the token at connect (CPU), record
the route in Redis at login, and handle a send by checking membership (a group),
storing the message with its seq (the store's Lua append, at the gateway) and
publishing it to Kafka; the ack carries the seq and goes out after the broker's
ack. Workers run the consumer group: for each record they read the members
(a group) and their gateways from Redis and publish one envelope per gateway on
its Redis channel; the gateway decodes it and pushes to whoever is connected.

Failures, as the real code meets them: a publish dropped by the broker is acked
(as in v3), but the message was stored first, so it is never pushed yet can be
synced: members find it at their next gap repair (a later message of the group
reveals the gap) or at their next catch-up. A dead broker fails publishes after
3 s with `unavailable` for messages that are stored all the same (found by
sync, counted as delivered though not acked). A paused Redis fails sends after
the 5 s timeout and stalls the workers, which retry. A crashed gateway's clients
reconnect to another; relays to it reach nobody. A crashed worker's partitions
wait for the session timeout, then another worker re-reads them from the last
commit and pushes those messages again (the clients' inboxes drop the repeats).
"""

from __future__ import annotations

from sim.client import User
from sim.routing import RoutingModel
from sim.server import FEATURE_DM, FEATURE_GROUPS, FEATURE_HISTORY, Msg, Node, Steps, Unavailable


class V4(RoutingModel):
    stage = "v4"
    features = frozenset({FEATURE_DM, FEATURE_GROUPS, FEATURE_HISTORY, "token_auth"})
    node_prefix = "gateway"

    def consumer_nodes(self) -> list[Node]:
        return self.workers

    def connect_cost(self) -> float:
        return self.d_verify()

    def handle_send(self, node: Node, *, user: User, msg: Msg) -> Steps:
        if msg.conv.gid is not None:
            yield from self.redis_call(node, lambda: None, keys=(msg.conv.cid,))  # SISMEMBER
        seq = yield from self.redis_call(node, lambda: self.store.append(msg), keys=(msg.conv.cid,))
        published = yield from self.publish(msg)
        if not published:
            raise Unavailable("kafka")  # stored with a seq, never pushed (seed problem 3)
        return seq

    def process(self, node: Node, msg: Msg) -> Steps:
        """`Worker.process`: members (a group), their gateways, one envelope per gateway."""
        if msg.conv.gid is not None:
            yield from self.redis_call(node, lambda: None, keys=(msg.conv.cid,))  # SMEMBERS
        found = yield from self.lookup(node, msg.conv.members)
        yield from self.deliver(node, found, msg, local=False)
