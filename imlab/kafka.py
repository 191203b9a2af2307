"""Kafka plumbing shared by stages v3 and v4: explicit topic creation, a producer
that notices when the broker lost its state, and a consumer loop that survives bad
records, a dead broker and a broker restart.

Settings follow the measured notes in FACTS.md (Tansu section): short fetch waits
for latency, topics created explicitly with the partition count meant, no
idempotent producer. Nothing here assumes Tansu: any Kafka cluster works through
its bootstrap address.

Broker restarts: a memory-only broker (or a wiped cluster) forgets topics and
consumer offsets, and a producer with old metadata may get acks for writes that
are gone. `KafkaLink` creates a sentinel topic of its own (one per process, named
after it, never written to) and checks every second that it still exists; when
it is gone, the link re-creates the base topics and its producer, forgets which
topics it had ensured and bumps `epoch`. Writes in the second before the check
notices are the real "publish acked, then lost" window. A `ConsumerLoop` sees the
new epoch and starts a fresh consumer, which reads the new topics from the start.

Partition ownership uses a Redis membership set instead of Kafka's consumer-group
protocol; `ConsumerLoop` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.structs import ConsumerRecord, RecordMetadata, TopicPartition
from redis.asyncio import Redis

from imlab.metrics import Metrics

log = logging.getLogger("imlab.kafka")

SENTINEL_PREFIX = "imlab.sentinel."
TOPIC_ALREADY_EXISTS = 36
CHECK_INTERVAL = 1.0

PRODUCER_SETTINGS: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 0,
    "request_timeout_ms": 3000,  # a dead broker becomes an `unavailable` ack, not a hang
    "enable_idempotence": False,  # fails at start() on Tansu; the store dedups instead
}

CONSUMER_SETTINGS: dict[str, Any] = {
    "fetch_max_wait_ms": 10,  # p50 ~4 ms instead of ~100 ms with the default 500
    "auto_offset_reset": "earliest",  # a new topic is read from its first record
    "enable_auto_commit": False,  # offsets are committed after processing
    "request_timeout_ms": 5000,
}
TICK = 0.5  # how often a consumer re-checks the members and the topics
MEMBER_TTL = 3.0  # a member that stopped refreshing drops out after this long

RecordHandler = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]]


class KafkaLink:
    """A producer and an admin client for one Kafka cluster, kept fit by a watchdog.

    `publish` raises a `KafkaError` (never hangs past the request timeout) when the
    broker is unreachable, so a request handler can answer `unavailable`.
    """

    def __init__(
        self,
        bootstrap: str,
        base_topics: dict[str, int],
        metrics: Metrics,
        client_id: str,
        *,
        produce: bool = True,
    ) -> None:
        self.bootstrap = bootstrap
        self.produce = produce  # False: topics and the watchdog only (a consumer-only process)
        self.base_topics = dict(base_topics)
        self.metrics = metrics
        self.client_id = client_id
        self.epoch = 0  # 0: never connected; bumps on every (re)creation of the base topics
        self.connected = False
        self.last_error: str | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._producer: AIOKafkaProducer | None = None
        self._ensured: set[str] = set()
        self._ready = False  # base topics, producer and sentinel are in place
        self._watchdog: asyncio.Task[None] | None = None
        self._reset_lock = asyncio.Lock()
        # Per process: a shared one, re-created by the first process to notice a broker
        # restart, would hide the restart from every other process.
        self.sentinel = SENTINEL_PREFIX + client_id
        self.drop_rate = float(os.environ.get("IMLAB_KAFKA_DROP") or 0.0)
        self._drop_rng = random.Random()
        metrics.gauge("kafka_connected", lambda: float(self.connected), "broker reachable")
        metrics.gauge("kafka_epoch", lambda: float(self.epoch), "broker (re)starts seen")

    async def start(self) -> None:
        """Start the watchdog; it connects (and keeps reconnecting) in the background."""
        self._watchdog = asyncio.create_task(self._watch(), name="kafka-watchdog")

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        await self._close_clients()

    def health(self) -> dict[str, Any]:
        return {"connected": self.connected, "epoch": self.epoch, "last_error": self.last_error}

    # ------------------------------------------------------------ topics and publishing

    async def ensure_topic(self, name: str, partitions: int) -> None:
        """Create `name` with `partitions` unless this link already did since the last reset."""
        if name in self._ensured:
            return
        admin = self._admin
        if admin is None:
            raise KafkaConnectionError(f"broker {self.bootstrap} not reachable")
        resp = await admin.create_topics([NewTopic(name, partitions, 1)])
        for topic, code, message in resp.topic_errors:
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise KafkaError(f"creating topic {topic}: error {code}: {message}")
        self.metrics.inc("kafka_topics_ensured")
        self._ensured.add(name)

    async def publish(self, topic: str, key: str, value: bytes) -> RecordMetadata | None:
        """Send one record and wait for the broker's ack.

        Fault injection: with probability `IMLAB_KAFKA_DROP` (read at start-up) the
        record is silently not sent and the caller is told it was: the seed's failed
        publish with no receipt. Returns None then; `kafka_dropped` counts it.
        """
        if self.drop_rate > 0 and self._drop_rng.random() < self.drop_rate:
            self.metrics.inc("kafka_dropped")
            return None
        producer = self._producer
        if producer is None:
            self.metrics.inc("kafka_publish_errors")
            raise KafkaConnectionError(f"broker {self.bootstrap} not reachable")
        t0 = time.perf_counter()
        try:
            meta = await producer.send_and_wait(topic, value, key=key.encode())
        except KafkaError:
            self.metrics.inc("kafka_publish_errors")
            raise
        self.metrics.inc("kafka_published")
        self.metrics.inc("kafka_publish_seconds", time.perf_counter() - t0)
        return meta

    async def partition_counts(self) -> dict[str, int]:
        """Every topic the broker has now, with its partition count."""
        admin = self._admin
        if admin is None:
            raise KafkaConnectionError(f"broker {self.bootstrap} not reachable")
        topics = await admin.describe_topics()
        return {t["topic"]: len(t["partitions"]) for t in topics if t.get("error_code") == 0}

    # ------------------------------------------------------------ watchdog

    async def _watch(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._tick(), timeout=10)
                self.connected = True
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected or self.last_error is None:
                    log.warning("kafka %s unreachable: %r", self.bootstrap, exc)
                self.connected = False
                self.last_error = repr(exc)
                self.metrics.inc("kafka_watchdog_errors")
                await self._drop_admin()  # a fresh client next time, not a wedged one
            await asyncio.sleep(CHECK_INTERVAL)

    async def _tick(self) -> None:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                client_id=f"{self.client_id}-admin",
                request_timeout_ms=3000,
            )
            try:
                await admin.start()
            except BaseException:
                await admin.close()
                raise
            self._admin = admin
        topics = await self._admin.list_topics()
        if not self._ready:
            await self._reset("connecting")
        elif self.sentinel not in topics:
            await self._reset("sentinel topic missing: the broker lost its state")

    async def _drop_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    async def _reset(self, reason: str) -> None:
        async with self._reset_lock:
            level = logging.INFO if self.epoch == 0 else logging.WARNING
            log.log(level, "kafka %s: %s; (re)creating topics and producer", self.bootstrap, reason)
            self._ready = False
            self._ensured.clear()
            old, self._producer = self._producer, None
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.stop()
            for name, partitions in self.base_topics.items():
                await self.ensure_topic(name, partitions)
            if self.produce:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    client_id=f"{self.client_id}-producer",
                    **PRODUCER_SETTINGS,
                )
                await producer.start()
                self._producer = producer
            # Last: once the sentinel exists, the next check trusts everything above.
            await self.ensure_topic(self.sentinel, 1)
            self._ready = True
            self.epoch += 1
            self.metrics.inc("kafka_resets")

    async def _close_clients(self) -> None:
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()


class Membership:
    """Who is alive among the consumers of one group: a Redis sorted set of member ->
    expiry (Redis clock). Each live member refreshes its entry every tick; a member
    that stops refreshing drops out after `ttl`, one that stops cleanly at once."""

    _BEAT = """
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    return redis.call('ZRANGE', KEYS[1], 0, -1)
    """

    def __init__(self, redis: Redis, group: str, member: str, ttl: float = MEMBER_TTL) -> None:
        self.redis = redis
        self.group = group
        self.key = f"im:consumers:{group}"
        self.member = member
        self.ttl = ttl
        self._beat = redis.register_script(self._BEAT)

    async def beat(self) -> list[str]:
        """Refresh this member; the live members, sorted."""
        raw = await self._beat(keys=[self.key], args=[self.member, self.ttl])
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in raw)

    async def leave(self) -> None:
        await self.redis.zrem(self.key, self.member)


def owner(tp: TopicPartition, members: Sequence[str]) -> str:
    """The member that owns a partition: rendezvous hashing, so a member joining or
    leaving moves only the partitions it takes or gives up.

    The hash must mix well: with CRC32 (linear) the comparison between two members
    came out the same for every topic, and one member owned every group."""

    def weight(member: str) -> bytes:
        key = f"{member}|{tp.topic}|{tp.partition}".encode()
        return hashlib.blake2b(key, digest_size=8).digest()

    return max(members, key=weight)


class ConsumerLoop:
    """Consume every topic matching `pattern` and hand each record to `handler`, the
    partitions shared among the live members of `group_id`.

    Ownership is not Kafka's consumer-group protocol: each member assigns itself the
    partitions that rendezvous hashing over the live members (`Membership`) gives
    it, and re-checks every `TICK` seconds. A new topic (a new chat group) is
    picked up by its owner alone, without stopping anyone; with the group protocol
    every new topic rebalanced every member (Tansu holds each JoinGroup 2 s, so
    groups created every few seconds kept all partitions revoked), and aiokafka's
    fetcher could die in a subscription change and leave its partitions unread.
    Offsets are still committed to the broker under `group_id`.

    Records of one partition are handled one after another, in offset order;
    partitions are handled concurrently. Offsets are committed after handling, so
    delivery is at-least-once: a record handled but not yet committed when its
    partition moves is handled again by the new owner (the store deduplicates).

    `handler` raising one of `retry_errors` (a backing service is down) retries the
    same record with backoff, holding the partition's order; any other exception
    means the record itself is bad: it is logged, counted and skipped.
    """

    def __init__(
        self,
        link: KafkaLink,
        membership: Membership,
        pattern: str,
        handler: RecordHandler,
        metrics: Metrics,
        *,
        retry_errors: tuple[type[BaseException], ...] = (),
        client_id: str = "imlab-consumer",
    ) -> None:
        self.link = link
        self.membership = membership
        self.group_id = membership.group
        self.pattern = re.compile(pattern)
        self.handler = handler
        self.metrics = metrics
        self.retry_errors = retry_errors
        self.client_id = client_id
        self.members: list[str] = []
        self._last_seen: list[str] = []
        self.assigned: set[TopicPartition] = set()
        self.last_offset: dict[TopicPartition, int] = {}
        self.running = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        metrics.gauge("kafka_assigned_partitions", lambda: len(self.assigned), "partitions owned")
        metrics.gauge("kafka_group_members", lambda: len(self.members), "live consumers seen")
        metrics.series(
            "kafka_last_offset", self._offset_series, "offset of the last record handled"
        )

    def _offset_series(self) -> Iterable[tuple[dict[str, str], float]]:
        for tp, offset in sorted(self.last_offset.items()):
            yield {"topic": tp.topic, "partition": str(tp.partition)}, float(offset)

    def health(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "group": self.group_id,
            "members": self.members,
            "assigned": sorted(f"{tp.topic}/{tp.partition}" for tp in self.assigned),
            "last_offset": {f"{tp.topic}/{tp.partition}": o for tp, o in self.last_offset.items()},
            "consumed": self.metrics.counters.get("kafka_records_consumed", 0),
        }

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"consumer-{self.group_id}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):  # the others take over now, not after the TTL
            await asyncio.wait_for(self.membership.leave(), 1.0)

    async def _run(self) -> None:
        while not self._stopping:
            epoch = self.link.epoch
            if epoch == 0:  # the link has not created the topics yet
                await asyncio.sleep(0.05)
                continue
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.link.bootstrap,
                group_id=self.group_id,
                client_id=self.client_id,
                **CONSUMER_SETTINGS,
            )
            try:
                await consumer.start()
                self.running = True
                self.metrics.inc("kafka_consumer_starts")
                next_check = 0.0
                # A broker that came back empty (new epoch) gets a fresh consumer.
                while not self._stopping and self.link.epoch == epoch:
                    if time.monotonic() >= next_check:
                        await self._reassign(consumer)
                        next_check = time.monotonic() + TICK
                    if not self.assigned:
                        await asyncio.sleep(TICK)
                        continue
                    batch = await consumer.getmany(timeout_ms=100)
                    if batch:
                        await self._process(consumer, batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.inc("kafka_consumer_errors")
                log.warning("consumer %s failed: %r; restarting in 1 s", self.group_id, exc)
                await asyncio.sleep(1.0)
            finally:
                self.running = False
                self.assigned = set()
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def _reassign(self, consumer: AIOKafkaConsumer) -> None:
        """Take exactly the partitions rendezvous hashing gives this member now."""
        try:
            members = await self.membership.beat()
        except Exception as exc:  # Redis down: keep what we own; handling waits on Redis too
            self.metrics.inc("kafka_membership_errors")
            log.debug("membership beat failed: %r", exc)
            return
        if members != self._last_seen and self.members:
            # Act on a change of members only once it holds for two beats: after a
            # Redis pause every entry looks expired to whoever beats first.
            self._last_seen = members
            return
        self._last_seen = self.members = members
        if self.client_id not in members:
            return
        try:
            counts = await self.link.partition_counts()
        except KafkaError as exc:  # the broker is away: keep what we own
            log.debug("listing topics failed: %r", exc)
            return
        mine = {
            tp
            for topic, n in counts.items()
            if self.pattern.match(topic)
            for part in range(n)
            if owner(tp := TopicPartition(topic, part), members) == self.client_id
        }
        if mine != self.assigned:
            gained, lost = mine - self.assigned, self.assigned - mine
            log.info("consumer %s: +%d -%d partitions (%d members)", self.client_id,
                     len(gained), len(lost), len(members))  # fmt: skip
            consumer.assign(sorted(mine))
            self.assigned = mine
            self.metrics.inc("kafka_reassignments")

    async def _process(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        done: dict[TopicPartition, int] = {}

        async def partition(
            tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
        ) -> None:
            for rec in records:
                if not await self._handle(consumer, tp, rec):
                    return
                self.last_offset[tp] = rec.offset
                done[tp] = rec.offset + 1

        await asyncio.gather(*(partition(tp, recs) for tp, recs in batch.items()))
        owned = {tp: off for tp, off in done.items() if tp in consumer.assignment()}
        if owned:
            try:
                await consumer.commit(owned)
            except KafkaError as exc:
                # The records are handled; uncommitted, the next owner handles them again.
                self.metrics.inc("kafka_commit_failures")
                log.info("commit failed: %r", exc)

    async def _handle(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        rec: ConsumerRecord[bytes, bytes],
    ) -> bool:
        """Handle one record; False when the partition is no longer ours to handle."""
        delay = 0.05
        while True:
            try:
                await self.handler(rec)
            except self.retry_errors as exc:
                self.metrics.inc("kafka_record_retries")
                if delay >= 0.8:
                    log.warning("record %s/%d@%d: retrying: %r", tp.topic, tp.partition,
                                rec.offset, exc)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                if self._stopping or tp not in consumer.assignment():
                    return False
                continue
            except Exception:
                self.metrics.inc("kafka_records_failed")
                log.exception("record %s/%d@%d skipped", tp.topic, tp.partition, rec.offset)
            else:
                self.metrics.inc("kafka_records_consumed")
            return True
