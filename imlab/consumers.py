"""Consumer loops of stages v3 and v4: read every topic matching a pattern, hand each
record to the stage's handler, commit after handling. Two ways of sharing the
partitions among a group's members, each a small subclass of `ConsumerLoop`:

- `GroupConsumer`: Kafka's own consumer-group protocol, as the seed intends ("the
  consumer subscribes the group's topic"). The broker's group coordinator assigns
  partitions; a new topic matching the pattern (a new chat group) is found by the
  next metadata refresh and triggers a rebalance of every member.
- `RedisOwnedConsumer`: each member assigns itself the partitions that rendezvous
  hashing over the live members gives it (`imlab.membership`); a new topic is
  picked up by its owner alone, with no rebalance.

versions/v3/STEP.md compares the two on real Kafka, with figures.

Records of one partition are handled one after another, in offset order;
partitions are handled concurrently. A stage may give a batch handler too: then each
partition's records of one fetch are handled in one call (one Redis round trip, one
relay publish per node), retried whole, and handled record by record only when the
batch as a whole raised something other than a `retry_errors` (to skip the bad one).
Offsets are committed after handling, so delivery is at-least-once: a record handled
but not yet committed when its partition moves is handled again by the new owner (the
store deduplicates).
A handler raising one of `retry_errors` (a backing service is down) retries the
same record with backoff, holding the partition's order; any other exception
means the record itself is bad: it is logged, counted and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition

from imlab.kafka import KafkaLink
from imlab.membership import Membership, owner
from imlab.metrics import Metrics

log = logging.getLogger("imlab.consumers")

CONSUMER_SETTINGS: dict[str, Any] = {
    "fetch_max_wait_ms": 10,  # p50 ~4 ms instead of ~100 ms with the default 500
    "auto_offset_reset": "earliest",  # a new topic is read from its first record
    "enable_auto_commit": False,  # offsets are committed after processing
    "request_timeout_ms": 5000,
}
# Kafka's group protocol: a dead member is noticed after the session timeout; a new
# topic is seen at the next metadata refresh (5 minutes by default).
GROUP_SETTINGS: dict[str, Any] = {
    "session_timeout_ms": 3000,
    "heartbeat_interval_ms": 500,
    "metadata_max_age_ms": 1000,
    "max_poll_interval_ms": 60000,
}
TICK = 0.5  # how often a consumer re-checks its ownership

RecordHandler = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]]
BatchHandler = Callable[[list[ConsumerRecord[bytes, bytes]]], Awaitable[None]]


class ConsumerLoop(ABC):
    """The shared loop; a backend implements `attach` and `maintain`."""

    ownership = "abstract"

    def __init__(
        self,
        link: KafkaLink,
        group_id: str,
        pattern: str,
        handler: RecordHandler,
        metrics: Metrics,
        *,
        retry_errors: tuple[type[BaseException], ...] = (),
        client_id: str = "imlab-consumer",
        batch_handler: BatchHandler | None = None,
    ) -> None:
        self.link = link
        self.batch_handler = batch_handler
        self.group_id = group_id
        self.pattern = re.compile(pattern)
        self.handler = handler
        self.metrics = metrics
        self.retry_errors = retry_errors
        self.client_id = client_id
        self.assigned: set[TopicPartition] = set()
        self.last_offset: dict[TopicPartition, int] = {}
        self.running = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        metrics.gauge("kafka_assigned_partitions", lambda: len(self.assigned), "partitions owned")
        metrics.series(
            "kafka_last_offset", self._offset_series, "offset of the last record handled"
        )

    # ------------------------------------------------------------ the backend's hooks

    def consumer_settings(self) -> dict[str, Any]:
        return dict(CONSUMER_SETTINGS)

    @abstractmethod
    async def attach(self, consumer: AIOKafkaConsumer) -> None:
        """Called once a consumer has started: subscribe it, or assign it partitions."""

    @abstractmethod
    async def maintain(self, consumer: AIOKafkaConsumer) -> None:
        """Called every `TICK`: bring `self.assigned` up to date."""

    async def leave(self) -> None:  # noqa: B027 - an optional hook
        """Called at a clean stop, after the consumer is closed."""

    # ------------------------------------------------------------ the loop

    def _offset_series(self) -> Iterable[tuple[dict[str, str], float]]:
        for tp, offset in sorted(self.last_offset.items()):
            yield {"topic": tp.topic, "partition": str(tp.partition)}, float(offset)

    def health(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "ownership": self.ownership,
            "group": self.group_id,
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
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.leave(), 1.0)

    async def _run(self) -> None:
        while not self._stopping:
            epoch, returns = self.link.epoch, self.link.returns
            if epoch == 0:  # the link has not created the topics yet
                await asyncio.sleep(0.05)
                continue
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.link.bootstrap,
                group_id=self.group_id,
                client_id=self.client_id,
                **self.consumer_settings(),
            )
            try:
                await consumer.start()
                await self.attach(consumer)
                self.running = True
                self.metrics.inc("kafka_consumer_starts")
                next_check = 0.0
                # A broker that came back empty (new epoch) gets a fresh consumer, and so
                # does one that came back at all: aiokafka's group consumer rediscovered
                # its coordinator after a restart of Apache Kafka and never fetched again
                # (v5, 2026-12-02: pushes stopped for good after one 3 s broker stop).
                while (
                    not self._stopping and self.link.epoch == epoch and self.link.returns == returns
                ):
                    if time.monotonic() >= next_check:
                        await self.maintain(consumer)
                        next_check = time.monotonic() + TICK
                    if not consumer.assignment():
                        await asyncio.sleep(0.05)
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

    async def _process(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        done: dict[TopicPartition, int] = {}

        async def partition(
            tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
        ) -> None:
            if self.batch_handler is not None and len(records) > 1:
                handled = await self._handle_batch(consumer, tp, records)
                if handled is None:
                    return
                if handled:
                    self.last_offset[tp] = records[-1].offset
                    done[tp] = records[-1].offset + 1
                    return
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

    async def _handle_batch(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        records: list[ConsumerRecord[bytes, bytes]],
    ) -> bool | None:
        """Handle a partition's records in one call: True when done, False when they
        must go one by one (one is bad), None when the partition is no longer ours."""
        assert self.batch_handler is not None
        delay = 0.05
        while True:
            try:
                await self.batch_handler(records)
            except self.retry_errors as exc:
                self.metrics.inc("kafka_batch_retries")
                if delay >= 0.8:
                    log.warning("batch %s/%d@%d+%d: retrying: %r", tp.topic, tp.partition,
                                records[0].offset, len(records), exc)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                if self._stopping or tp not in consumer.assignment():
                    return None
                continue
            except Exception as exc:
                self.metrics.inc("kafka_batches_split")
                log.info("batch %s/%d@%d: one by one: %r", tp.topic, tp.partition,
                         records[0].offset, exc)  # fmt: skip
                return False
            self.metrics.inc("kafka_records_consumed", len(records))
            self.metrics.inc("kafka_batches")
            return True

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


class _Rebalances(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: GroupConsumer) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.loop.revoked_at = time.monotonic()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        loop = self.loop
        loop.assigned = set(assigned)
        loop.metrics.inc("kafka_rebalances")
        if loop.revoked_at is not None:
            loop.metrics.inc("kafka_rebalance_seconds", time.monotonic() - loop.revoked_at)
            loop.revoked_at = None
        log.info("consumer %s: %d partitions after a rebalance", loop.client_id, len(assigned))


class GroupConsumer(ConsumerLoop):
    """Partitions assigned by Kafka's group coordinator (subscribe by pattern)."""

    ownership = "kafka"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.revoked_at: float | None = None

    def consumer_settings(self) -> dict[str, Any]:
        return {**CONSUMER_SETTINGS, **GROUP_SETTINGS}

    async def attach(self, consumer: AIOKafkaConsumer) -> None:
        consumer.subscribe(pattern=self.pattern.pattern, listener=_Rebalances(self))

    async def maintain(self, consumer: AIOKafkaConsumer) -> None:
        self.assigned = set(consumer.assignment())


class RedisOwnedConsumer(ConsumerLoop):
    """Partitions taken by rendezvous hashing over a Redis membership set.

    Each member assigns itself the partitions `owner()` gives it among the live
    members, re-checked every `TICK`. Offsets are still committed to the broker
    under the group id (no group protocol runs: the consumer never joins).
    """

    ownership = "redis"

    def __init__(self, membership: Membership, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.membership = membership
        self.members: list[str] = []
        self._last_seen: list[str] = []
        self.metrics.gauge("kafka_group_members", lambda: len(self.members), "live consumers")

    def health(self) -> dict[str, Any]:
        return {**super().health(), "members": self.members}

    async def attach(self, consumer: AIOKafkaConsumer) -> None:
        self.assigned = set()

    async def leave(self) -> None:
        await self.membership.leave()  # the others take over now, not after the TTL

    async def maintain(self, consumer: AIOKafkaConsumer) -> None:
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


def make_consumer(
    ownership: str,
    link: KafkaLink,
    redis: Any,
    group_id: str,
    pattern: str,
    handler: RecordHandler,
    metrics: Metrics,
    *,
    retry_errors: tuple[type[BaseException], ...] = (),
    client_id: str,
    batch_handler: BatchHandler | None = None,
) -> ConsumerLoop:
    """The consumer loop for `ownership` (`kafka` or `redis`)."""
    common: dict[str, Any] = {
        "retry_errors": retry_errors,
        "client_id": client_id,
        "batch_handler": batch_handler,
    }
    if ownership == "redis":
        membership = Membership(redis, group_id, client_id)
        return RedisOwnedConsumer(membership, link, group_id, pattern, handler, metrics, **common)
    if ownership == "kafka":
        return GroupConsumer(link, group_id, pattern, handler, metrics, **common)
    raise ValueError(f"unknown ownership {ownership!r}")
