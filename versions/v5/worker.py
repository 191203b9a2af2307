"""Stage v5 consumer worker: v4's worker, reading membership from the system of record.

Workers share Kafka's own consumer group over two fixed topics (v5 has no topic per
group, so a new group no longer makes every consumer rejoin), which leaves Redis out of
who-consumes-what: a Redis failover delays pushes, never consumption. For each record
the worker finds who may see that seq (membership over time, from PostgreSQL: a member
removed before the message does not get it) and hands `{gateway, users, message}` to
each gateway's Redis channel. A record it cannot route (Redis or the database away) is
retried, not skipped: the offset is committed only after the relay. A relay no gateway
heard (one resubscribing after a Redis failover) is routed again for a few seconds.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from aiokafka.structs import ConsumerRecord

from imlab import protocol as p
from imlab import redisconn
from imlab.consumers import make_consumer
from imlab.kafka import KafkaLink, KafkaOptions
from imlab.metrics import Metrics
from imlab.protocol import Message
from imlab.routing import Relay, Routes, by_node
from imlab.server import StageServer, base_parser, run_app
from imlab.sqlstore import UNAVAILABLE_ERRORS, SqlStore
from versions.v5 import topics

# A gateway resubscribing to its relay channel (after a Redis failover) hears nothing
# for a moment: the batch is routed again (routes re-read) this long at most, then left
# to the clients' catch-up (a gateway that died stays silent; its users log in elsewhere).
UNHEARD_RETRY = 5.0


class Unheard(ConnectionError):
    """A gateway the batch was for did not hear it (pub/sub is at most once)."""


class Worker:
    stage = "v5"

    def __init__(
        self,
        node: str,
        redis_url: str,
        db_url: str,
        kafka: KafkaOptions,
        *,
        consumer_group: str = "imlab-v5-workers",
    ) -> None:
        self.node = node
        self.metrics = Metrics("imlab", {"stage": self.stage, "node": node})
        self.redis = redisconn.connect(redis_url, max_connections=64)
        self.store = SqlStore(db_url)
        self.routes = Routes(self.redis, node)
        self.link = KafkaLink(kafka, topics.TOPICS, self.metrics, client_id=node, produce=False)
        self.consumer = make_consumer(
            "kafka",
            self.link,
            self.redis,
            consumer_group,
            topics.PATTERN,
            self.process,
            self.metrics,
            retry_errors=(*StageServer.unavailable_errors, *UNAVAILABLE_ERRORS),
            client_id=node,
            batch_handler=self.process_batch,
        )
        self.relay = Relay(self.redis, node, self._no_inbound, self.metrics)
        self._unheard_since: dict[tuple[str, int, int], float] = {}
        self.app = web.Application()
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.on_startup.append(self._startup)
        self.app.on_cleanup.append(self._cleanup)

    async def process(self, rec: ConsumerRecord[bytes, bytes]) -> None:
        await self.process_batch([rec])

    async def process_batch(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Route a partition's records: one query for the groups' memberships, one
        round trip for the routes, one relay publish per gateway."""
        msgs = [Message.from_dict(json.loads(rec.value)) for rec in records]
        if any(m.seq is None for m in msgs):
            raise ValueError("a v5 record carries the seq it was stored with")
        convs = [p.parse_conv(m.conv) for m in msgs]
        gids = sorted({c.group_id for c in convs if c.kind == "group"})
        memberships = await self.store.memberships(gids) if gids else {}
        audiences: list[list[str]] = []
        for msg, conv in zip(msgs, convs, strict=True):
            if conv.kind == "dm":
                audiences.append(list(conv.members))
            else:
                seq = msg.seq or 0
                audiences.append([m.user for m in memberships[conv.group_id] if m.sees(seq)])
        routes = await self.routes.lookup(sorted({u for users in audiences for u in users}))
        items = []
        deliveries = 0
        for msg, users in zip(msgs, audiences, strict=True):
            targets = by_node({u: routes[u] for u in users})
            deliveries += sum(len(us) for us in targets.values())
            items.append((targets, p.MESSAGE, msg.to_dict()))
        nodes = {n for targets, _, _ in items for n in targets}
        heard = await self.relay.send_many(items)
        if heard < len(nodes):
            key = (records[0].topic, records[0].partition, records[0].offset)
            first = self._unheard_since.setdefault(key, time.monotonic())
            if time.monotonic() - first < UNHEARD_RETRY:
                raise Unheard(f"{len(nodes) - heard} of {len(nodes)} gateways not listening")
            self.metrics.inc("batches_unheard")
        self._unheard_since.clear()
        self.metrics.inc("messages_routed", len(msgs))
        self.metrics.inc("deliveries_routed", deliveries)

    async def _no_inbound(self, users: list[str], event: str, data: dict[str, Any]) -> int:
        return 0

    async def _startup(self, app: web.Application) -> None:
        await self.store.start()
        await self.link.start()
        self.consumer.start()

    async def _cleanup(self, app: web.Application) -> None:
        await self.consumer.stop()
        await self.link.stop()
        await self.store.close()
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
    parser = base_parser("imlab stage v5 worker: Kafka -> the gateways of who may see it")
    parser.add_argument("--redis-url", required=True, help="redis:// or redis+sentinel://")
    parser.add_argument("--db-url", required=True, help="postgresql://user@host:port/db")
    KafkaOptions.add_arguments(parser)
    parser.add_argument("--consumer-group", default="imlab-v5-workers")
    args = parser.parse_args(argv)
    worker = Worker(
        args.node or f"worker-{args.port}",
        args.redis_url,
        args.db_url,
        KafkaOptions.from_args(args),
        consumer_group=args.consumer_group,
    )
    run_app(worker.app, args.host, args.port, args.log_level)


if __name__ == "__main__":
    main()
