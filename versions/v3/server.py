"""Stage v3 (seed section 四): N server processes plus Redis and Kafka.

At login a server records `user -> server` in Redis and refreshes the user's
entry in every group record it belongs to (a group record lists each member and
their server). A message is not stored where it arrives: it goes to Kafka, a
group's on its own one-partition topic (so the group has one order) and a 1:1
message on the shared `im.dm` topic keyed by conversation. Every server also runs
a consumer in one consumer group over all those topics; whoever owns a topic's
partition stores its messages in order (seq assigned here) and delivers each to
every member wherever connected: directly to its own connections, through the
other server's Redis pub/sub channel for the rest. Connection handling and
message processing live in one process: the coupling the seed names.
"""

from __future__ import annotations

import json
from typing import Any, cast

from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from redis.asyncio import Redis

from imlab import protocol as p
from imlab.consumers import make_consumer
from imlab.kafka import KafkaLink, KafkaOptions
from imlab.protocol import ErrorCode, Message, ProtocolError
from imlab.routing import Relay, Routes, by_node, route_key
from imlab.server import HistoryServer, StageServer, base_parser, serve
from imlab.store import MessageStore, new_message

DM_TOPIC = "im.dm"
DM_PARTITIONS = 8
SHARED_GROUP_TOPIC = "im.groups"  # only with --group-topics shared
GROUP_TOPIC_PREFIX = "im.group."
TOPIC_PATTERN = r"^im\.(dm|groups|group\..+)$"

# Login: the route, and this member's server in each of its group records.
_LOGIN = """
redis.call('SET', KEYS[1], ARGV[2])
for _, conv in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if string.sub(conv, 1, 6) == 'group:' then
    redis.call('HSET', 'im:gsrv:' .. string.sub(conv, 7), ARGV[1], ARGV[2])
  end
end
"""

# Logout: the same entries are cleared, but only where they still name this server.
_LOGOUT = """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
for _, conv in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if string.sub(conv, 1, 6) == 'group:' then
    local key = 'im:gsrv:' .. string.sub(conv, 7)
    if redis.call('HGET', key, ARGV[1]) == ARGV[2] then redis.call('HSET', key, ARGV[1], '') end
  end
end
return 1
"""

# A new group record: each member with the server its route names now ('' if offline).
_GROUP_SERVERS = """
for i, member in ipairs(ARGV) do
  redis.call('HSET', KEYS[1], member, redis.call('GET', 'im:route:' .. member) or '')
end
return redis.call('HGETALL', KEYS[1])
"""


class Server(HistoryServer):
    stage = "v3"
    features = frozenset({p.FEATURE_DM, p.FEATURE_GROUPS, p.FEATURE_HISTORY})
    unavailable_errors = (*StageServer.unavailable_errors, KafkaError)

    def __init__(
        self,
        node: str,
        redis_url: str,
        kafka: KafkaOptions,
        *,
        group_topics: str = "per-group",
        consumer_group: str = "imlab-v3",
    ) -> None:
        super().__init__(node)
        self.redis: Redis = Redis.from_url(
            redis_url, max_connections=256, socket_timeout=5, socket_connect_timeout=2
        )
        self.store = MessageStore(self.redis)
        self.routes = Routes(self.redis, node)
        self._login = self.redis.register_script(_LOGIN)
        self._logout = self.redis.register_script(_LOGOUT)
        self._group_servers = self.redis.register_script(_GROUP_SERVERS)
        self.shared_group_topic = group_topics == "shared"
        base = {DM_TOPIC: DM_PARTITIONS}
        if self.shared_group_topic:
            base[SHARED_GROUP_TOPIC] = DM_PARTITIONS
        self.link = KafkaLink(kafka, base, self.metrics, client_id=node)
        self.consumer = make_consumer(
            kafka.ownership,
            self.link,
            self.redis,
            consumer_group,
            TOPIC_PATTERN,
            self.process,
            self.metrics,
            retry_errors=StageServer.unavailable_errors,
            client_id=node,
            batch_handler=self.process_batch,
        )
        self.relay = Relay(self.redis, node, self.push, self.metrics)

    async def startup(self) -> None:
        await self.link.start()
        self.consumer.start()
        self.relay.start()

    async def shutdown(self) -> None:
        await self.consumer.stop()
        await self.relay.stop()
        await self.link.stop()
        await self.redis.aclose()

    def health(self) -> dict[str, Any]:
        return {
            "ok": True,
            "ready": self.link.epoch > 0 and self.consumer.running,
            "kafka": self.link.health(),
            "consumer": self.consumer.health(),
            "relay": self.relay.health(),
        }

    # ------------------------------------------------------------ routing (seed 四, steps 1-2)

    async def on_login(self, user: str, sid: str) -> None:
        await self._login(keys=[f"im:route:{user}", f"im:convs:{user}"], args=[user, self.node])

    async def on_logout(self, user: str, sid: str) -> None:
        if not self.online(user):
            await self._logout(
                keys=[f"im:route:{user}", f"im:convs:{user}"], args=[user, self.node]
            )

    async def deliver(
        self, routes: dict[str, str | None], event: str, data: dict[str, Any]
    ) -> None:
        """Push to members connected here; relay to the other servers for the rest."""
        targets = by_node(routes)
        mine = targets.pop(self.node, None)
        if mine:
            await self.push(mine, event, data)
        await self.relay.send(targets, event, data)

    # ------------------------------------------------------------ requests

    def topic_for(self, conv: str) -> tuple[str, int]:
        if conv.startswith("dm:"):
            return DM_TOPIC, DM_PARTITIONS
        if self.shared_group_topic:
            return SHARED_GROUP_TOPIC, DM_PARTITIONS
        return GROUP_TOPIC_PREFIX + conv.removeprefix("group:"), 1

    async def check_member(self, user: str, gid: str) -> None:
        if not await self.store.is_member(gid, user):
            if await self.store.group_members(gid) is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no group {gid}")
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{user} is not a member of {gid}")

    async def send(self, user: str, req: p.SendRequest) -> dict[str, Any]:
        if req.group is not None:
            await self.check_member(user, req.group)
        msg = new_message(req.conv_for(user), user, req.client_msg_id, req.body, req.sent_at)
        topic, partitions = self.topic_for(msg.conv)
        await self.link.ensure_topic(topic, partitions)
        await self.link.publish(topic, msg.conv, json.dumps(msg.to_dict()).encode())
        # Acked once Kafka has it; the seq is assigned later, by the consumer.
        return p.ok_ack(conv=msg.conv, msg_id=msg.msg_id, seq=None, server_ts=msg.server_ts)

    async def create_group(self, user: str, req: p.CreateGroupRequest) -> dict[str, Any]:
        gid = await self.store.new_group_id()
        topic, partitions = self.topic_for(p.group_conv(gid))
        await self.link.ensure_topic(topic, partitions)  # first: a dead broker leaves no group
        await self.store.create_group(user, req.members, req.name, gid)
        raw = await self._group_servers(keys=[f"im:gsrv:{gid}"], args=list(req.members))
        notice = req.notice(gid, user)
        await self.deliver(_pairs(raw), p.GROUP_CREATED, notice)
        return req.ack(gid)

    # ------------------------------------------------------------ the consumer (seed 四, step 8)

    async def process(self, rec: ConsumerRecord[bytes, bytes]) -> None:
        """Store one message from Kafka with the next seq, then deliver it to every member."""
        msg = Message.from_dict(json.loads(rec.value))
        conv = p.parse_conv(msg.conv)
        p.check_user_id(msg.sender, "sender")
        # A record nobody of ours wrote (the topics are open to any producer) is bad input.
        if conv.kind == "dm" and msg.sender not in conv.members:
            raise ValueError(f"{msg.sender} is not in {conv.id}")
        if conv.kind == "group" and not await self.store.is_member(conv.group_id, msg.sender):
            raise ValueError(f"{msg.sender} is not a member of {conv.id}")
        stored, duplicate = await self.store.append(msg, index_for=conv.members)
        if duplicate:  # a retried client_msg_id: stored and delivered the first time
            self.metrics.inc("kafka_duplicates")
            return
        if conv.kind == "dm":
            routes = await self.routes.lookup(conv.members)
        else:
            routes = _pairs(await self.redis.hgetall(f"im:gsrv:{conv.group_id}"))
        await self.deliver(routes, p.MESSAGE, stored.to_dict())

    async def process_batch(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """`process` for a partition's records at once: one round trip checks the
        senders, one stores them all (seqs in offset order), one finds the members'
        servers, and each other server gets one relay publish for the lot."""
        msgs = [Message.from_dict(json.loads(rec.value)) for rec in records]
        convs = [p.parse_conv(m.conv) for m in msgs]
        async with self.redis.pipeline(transaction=False) as pipe:
            for msg, conv in zip(msgs, convs, strict=True):
                p.check_user_id(msg.sender, "sender")
                if conv.kind == "dm" and msg.sender not in conv.members:
                    raise ValueError(f"{msg.sender} is not in {conv.id}")
                if conv.kind == "group":
                    pipe.sismember(f"im:members:{conv.group_id}", msg.sender)
            member = await pipe.execute()
        if not all(member):
            raise ValueError("a sender is not a member of its group")  # split: skip that one
        stored = await self.store.append_many(
            [(m, c.members) for m, c in zip(msgs, convs, strict=True)]
        )
        fresh = [(m, c) for (m, dup), c in zip(stored, convs, strict=True) if not dup]
        self.metrics.inc("kafka_duplicates", len(stored) - len(fresh))
        if not fresh:
            return
        dm_users = sorted({u for _, c in fresh if c.kind == "dm" for u in c.members})
        gids = sorted({c.group_id for _, c in fresh if c.kind == "group"})
        async with self.redis.pipeline(transaction=False) as pipe:
            if dm_users:
                pipe.mget([route_key(u) for u in dm_users])
            for gid in gids:
                pipe.hgetall(f"im:gsrv:{gid}")
            found = await pipe.execute()
        dm_routes = (
            dict(zip(dm_users, (_s(v) if v else None for v in found.pop(0)), strict=True))
            if dm_users
            else {}
        )
        group_routes = {gid: _pairs(raw) for gid, raw in zip(gids, found, strict=True)}
        relayed = []
        for msg, conv in fresh:
            routes = (
                {u: dm_routes.get(u) for u in conv.members}
                if conv.kind == "dm"
                else group_routes[conv.group_id]
            )
            targets = by_node(routes)
            data = msg.to_dict()
            mine = targets.pop(self.node, None)
            if mine:
                await self.push(mine, p.MESSAGE, data)
            if targets:
                relayed.append((targets, p.MESSAGE, data))
        await self.relay.send_many(relayed)


def _pairs(raw: object) -> dict[str, str | None]:
    """A Redis hash (a dict, or a flat HGETALL list from Lua) as `member -> server`."""
    if isinstance(raw, dict):
        items = list(raw.items())
    else:
        flat = list(cast(list[object], raw))
        items = list(zip(flat[::2], flat[1::2], strict=True))
    return {_s(k): (_s(v) or None) for k, v in items}


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def main(argv: list[str] | None = None) -> None:
    parser = base_parser("imlab stage v3 server: N servers, routing in Redis, Kafka in between")
    parser.add_argument("--redis-url", required=True, help="redis://host:port/db")
    KafkaOptions.add_arguments(parser)
    parser.add_argument(
        "--group-topics",
        choices=("per-group", "shared"),
        default="per-group",
        help="a topic per group (the seed's design) or one shared keyed topic",
    )
    parser.add_argument("--consumer-group", default="imlab-v3")
    args = parser.parse_args(argv)
    server = Server(
        args.node or f"v3-{args.port}",
        args.redis_url,
        KafkaOptions.from_args(args),
        group_topics=args.group_topics,
        consumer_group=args.consumer_group,
    )
    serve(server, args.host, args.port, args.log_level)


if __name__ == "__main__":
    main()
