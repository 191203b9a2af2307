"""The Kafka link shared by stages v3 and v4: how a stage process reaches its Kafka
cluster (`KafkaOptions`, the same command-line options in every process), explicit
topic creation with the replication factor the cluster has, and a producer kept fit
by a watchdog. The consumers are in `imlab.consumers`.

Settings follow docs/SERVICES.md: short fetch waits for latency, topics created
explicitly with the partition count meant, `acks=all`, and the idempotent producer
wherever the broker supports it (Apache Kafka does; Tansu fails InitProducerId).
Nothing here assumes one broker: any Kafka cluster works through its bootstrap list.

Broker restarts: a memory-only broker (Tansu) or a wiped cluster forgets topics and
consumer offsets, and a producer with old metadata may get acks for writes that
are gone. `KafkaLink` creates a sentinel topic of its own (one per process, named
after it, never written to) and checks every second that it still exists; when
it is gone, the link re-creates the base topics and its producer, forgets which
topics it had ensured and bumps `epoch`. Writes in the second before the check
notices are the real "publish acked, then lost" window. A consumer loop sees the
new epoch and starts a fresh consumer, which reads the new topics from the start.
A durable Apache Kafka cluster keeps the sentinel, so none of this happens there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from aiokafka.structs import RecordMetadata

from imlab.metrics import Metrics

log = logging.getLogger("imlab.kafka")

SENTINEL_PREFIX = "imlab.sentinel."
TOPIC_ALREADY_EXISTS = 36
CHECK_INTERVAL = 1.0

PRODUCER_SETTINGS: dict[str, Any] = {
    "acks": "all",  # acked once every in-sync replica has it (min.insync.replicas of 3: 2)
    # A few ms of waiting lets concurrent sends share one produce request (and the
    # consumers fetch them as one batch); each send's ack waits that much longer.
    "linger_ms": 0,  # 2 ms added 2 ms to every push at low load and nothing at 500/s
    "request_timeout_ms": 3000,  # a dead broker becomes an `unavailable` ack, not a hang
}

PUBLISH_TIMEOUT = 3.0  # seconds a request handler waits for the broker's ack
OWNERSHIPS = ("redis", "kafka")


@dataclass(frozen=True)
class KafkaOptions:
    """How a stage process uses its Kafka cluster; `imlab.cluster` sets them to match
    the broker it started (replication = brokers, idempotence where supported)."""

    bootstrap: str
    replication: int = 1
    idempotent: bool = True
    ownership: str = "redis"  # rendezvous over Redis, or Kafka's consumer groups
    drop_rate: float = 0.0  # fault injection: publishes silently dropped (kafka-loss)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("kafka")
        g.add_argument("--kafka-bootstrap", required=True, help="HOST:PORT[,HOST:PORT...]")
        g.add_argument(
            "--kafka-replication",
            type=int,
            default=1,
            help="replication factor of the topics this process creates",
        )
        g.add_argument(
            "--kafka-idempotence",
            choices=("on", "off"),
            default="on",
            help="idempotent producer (off for brokers without InitProducerId)",
        )
        g.add_argument(
            "--ownership",
            choices=OWNERSHIPS,
            default="redis",
            help="how consumers share partitions: Kafka's consumer groups, or rendezvous "
            "hashing over a Redis membership set",
        )
        g.add_argument(
            "--kafka-drop",
            type=float,
            default=0.0,
            metavar="P",
            help="fault: drop each publish with probability P and ack it anyway",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> KafkaOptions:
        return cls(
            bootstrap=args.kafka_bootstrap,
            replication=args.kafka_replication,
            idempotent=args.kafka_idempotence == "on",
            ownership=args.ownership,
            drop_rate=args.kafka_drop,
        )

    def argv(self) -> list[str]:
        """The command-line form of these options (what `add_arguments` parses)."""
        return [
            "--kafka-bootstrap", self.bootstrap,
            "--kafka-replication", str(self.replication),
            "--kafka-idempotence", "on" if self.idempotent else "off",
            "--ownership", self.ownership,
            "--kafka-drop", repr(self.drop_rate),
        ]  # fmt: skip


class KafkaLink:
    """A producer and an admin client for one Kafka cluster, kept fit by a watchdog.

    `publish` raises a `KafkaError` (never hangs past the request timeout) when the
    broker is unreachable, so a request handler can answer `unavailable`.
    """

    def __init__(
        self,
        options: KafkaOptions,
        base_topics: dict[str, int],
        metrics: Metrics,
        client_id: str,
        *,
        produce: bool = True,
    ) -> None:
        self.options = options
        self.bootstrap = options.bootstrap
        self.produce = produce  # False: topics and the watchdog only (a consumer-only process)
        self.base_topics = dict(base_topics)
        self.metrics = metrics
        self.client_id = client_id
        self.epoch = 0  # 0: never connected; bumps on every (re)creation of the base topics
        self.connected = False
        self.last_error: str | None = None
        self.returns = 0  # times the broker answered again after being unreachable
        self._admin: AIOKafkaAdminClient | None = None
        self._producer: AIOKafkaProducer | None = None
        self._ensured: set[str] = set()
        self._ready = False  # base topics, producer and sentinel are in place
        self._watchdog: asyncio.Task[None] | None = None
        self._reset_lock = asyncio.Lock()
        # Per process: a shared one, re-created by the first process to notice a broker
        # restart, would hide the restart from every other process.
        self.sentinel = SENTINEL_PREFIX + client_id
        self.drop_rate = options.drop_rate
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
        resp = await admin.create_topics([NewTopic(name, partitions, self.options.replication)])
        for topic, code, message in resp.topic_errors:
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise KafkaError(f"creating topic {topic}: error {code}: {message}")
        self.metrics.inc("kafka_topics_ensured")
        self._ensured.add(name)

    async def publish(self, topic: str, key: str, value: bytes) -> RecordMetadata | None:
        """Send one record and wait for the broker's ack, `PUBLISH_TIMEOUT` at most.

        An idempotent producer never gives up on a record by itself: it retries until
        the broker takes it. Past the timeout the caller hears KafkaTimeoutError (an
        `unavailable` ack) while the record may still be delivered later; a client
        retrying with the same client_msg_id is deduplicated by the store.

        Fault injection: with probability `options.drop_rate` (`--kafka-drop`) the
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
            meta = await asyncio.wait_for(
                producer.send_and_wait(topic, value, key=key.encode()), PUBLISH_TIMEOUT
            )
        except TimeoutError:
            self.metrics.inc("kafka_publish_errors")
            raise KafkaTimeoutError(f"no ack from {self.bootstrap} in {PUBLISH_TIMEOUT}s") from None
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
                if not self.connected and self.last_error is not None:
                    self.returns += 1
                    log.warning("kafka %s answers again", self.bootstrap)
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
                    enable_idempotence=self.options.idempotent,
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
