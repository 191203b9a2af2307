"""Stage v4 consumer worker (seed section 五, "when a player speaks", step 3): the
message processing, taken out of the connection-holding process.

Workers share one consumer group over the message topics. For each stored
message a worker reads from Kafka it looks up the conversation's members in
Redis and each member's gateway, and hands `{gateway, users, message}` to that
gateway's Redis pub/sub channel. It holds no client connections; it answers
`/healthz` and `/metrics` on its own port.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiokafka.structs import ConsumerRecord
from redis.asyncio import Redis

from imlab import protocol as p
from imlab.consumers import make_consumer
from imlab.kafka import KafkaLink, KafkaOptions
from imlab.metrics import Metrics
from imlab.protocol import Message
from imlab.routing import Relay, Routes, by_node
from imlab.server import StageServer, base_parser, run_app
from imlab.store import MessageStore
from versions.v4 import topics


class UnknownGroup(ValueError):
    """A record names a group that does not exist: a bad record, skipped."""


class Worker:
    stage = "v4"

    def __init__(
        self,
        node: str,
        redis_url: str,
        kafka: KafkaOptions,
        *,
        group_topics: str = "per-group",
        consumer_group: str = "imlab-v4-workers",
    ) -> None:
        self.node = node
        self.metrics = Metrics("imlab", {"stage": self.stage, "node": node})
        self.redis: Redis = Redis.from_url(
            redis_url, max_connections=256, socket_timeout=5, socket_connect_timeout=2
        )
        self.store = MessageStore(self.redis)
        self.routes = Routes(self.redis, node)
        self.link = KafkaLink(
            kafka,
            topics.base_topics(group_topics),
            self.metrics,
            client_id=node,
            produce=False,
        )
        self.consumer = make_consumer(
            kafka.ownership,
            self.link,
            self.redis,
            consumer_group,
            topics.PATTERN,
            self.process,
            self.metrics,
            retry_errors=StageServer.unavailable_errors,
            client_id=node,
            batch_handler=self.process_batch,
        )
        self.relay = Relay(self.redis, node, self._no_inbound, self.metrics)
        self.app = web.Application()
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.on_startup.append(self._startup)
        self.app.on_cleanup.append(self._cleanup)

    async def process(self, rec: ConsumerRecord[bytes, bytes]) -> None:
        """Route one stored message to the gateways of its conversation's members."""
        msg = Message.from_dict(json.loads(rec.value))
        if msg.seq is None:
            raise ValueError("a v4 record carries the seq the gateway stored it with")
        conv = p.parse_conv(msg.conv)
        if conv.kind == "dm":
            members: list[str] = list(conv.members)
        else:
            found = await self.store.group_members(conv.group_id)
            if found is None:
                raise UnknownGroup(f"no group {conv.group_id}")
            members = found
        targets = by_node(await self.routes.lookup(members))
        await self.relay.send(targets, p.MESSAGE, msg.to_dict())
        self.metrics.inc("messages_routed")
        self.metrics.inc("deliveries_routed", sum(len(users) for users in targets.values()))

    async def process_batch(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """`process` for a partition's records at once: one round trip for the groups'
        members, one for every member's gateway, one relay publish per gateway."""
        msgs = [Message.from_dict(json.loads(rec.value)) for rec in records]
        if any(m.seq is None for m in msgs):
            raise ValueError("a v4 record carries the seq the gateway stored it with")
        convs = [p.parse_conv(m.conv) for m in msgs]
        gids = sorted({c.group_id for c in convs if c.kind == "group"})
        groups: dict[str, list[str]] = {}
        if gids:
            async with self.redis.pipeline(transaction=False) as pipe:
                for gid in gids:
                    pipe.smembers(f"im:members:{gid}")
                found = await pipe.execute()
            for gid, raw in zip(gids, found, strict=True):
                if not raw:
                    raise UnknownGroup(f"no group {gid}")  # split: skip that record
                groups[gid] = sorted(m.decode() if isinstance(m, bytes) else m for m in raw)
        members = [list(c.members) if c.kind == "dm" else groups[c.group_id] for c in convs]
        routes = await self.routes.lookup(sorted({u for ms in members for u in ms}))
        items = []
        deliveries = 0
        for msg, ms in zip(msgs, members, strict=True):
            targets = by_node({u: routes[u] for u in ms})
            deliveries += sum(len(users) for users in targets.values())
            items.append((targets, p.MESSAGE, msg.to_dict()))
        await self.relay.send_many(items)
        self.metrics.inc("messages_routed", len(msgs))
        self.metrics.inc("deliveries_routed", deliveries)

    async def _no_inbound(self, users: list[str], event: str, data: dict[str, Any]) -> int:
        return 0  # a worker only publishes; it never subscribes to a channel

    async def _startup(self, app: web.Application) -> None:
        await self.link.start()
        self.consumer.start()

    async def _cleanup(self, app: web.Application) -> None:
        await self.consumer.stop()
        await self.link.stop()
        await self.redis.aclose()

    async def _healthz(self, request: web.Request) -> web.Response:
        body = {
            "stage": self.stage,
            "node": self.node,
            "ok": True,
            "ready": self.link.epoch > 0 and self.consumer.running,
            "kafka": self.link.health(),
            "consumer": self.consumer.health(),
        }
        return web.json_response(body)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(), content_type="text/plain")


def main(argv: list[str] | None = None) -> None:
    parser = base_parser("imlab stage v4 worker: Kafka -> members' gateways")
    parser.add_argument("--redis-url", required=True, help="redis://host:port/db")
    KafkaOptions.add_arguments(parser)
    parser.add_argument("--group-topics", choices=topics.CHOICES, default="per-group")
    parser.add_argument("--consumer-group", default="imlab-v4-workers")
    args = parser.parse_args(argv)
    worker = Worker(
        args.node or f"worker-{args.port}",
        args.redis_url,
        KafkaOptions.from_args(args),
        group_topics=args.group_topics,
        consumer_group=args.consumer_group,
    )
    run_app(worker.app, args.host, args.port, args.log_level)


if __name__ == "__main__":
    main()
