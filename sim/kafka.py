"""A Kafka-like log: a memory-only broker holding topics of partitioned append logs.

It models what the stages depend on and what goes wrong with it (docs/SERVICES.md):
publishes that are dropped with a probability, a broker-down window during
which publishes time out and after which everything the broker held is gone,
and the partitions consumers read (their side, the long-polling consumers and the
groups, is `sim.kafka_group`).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import simpy
from simpy.events import Event, Process

from sim.core import UNAVAILABLE, Deterministic, Distribution
from sim.engine import FifoServer

if TYPE_CHECKING:
    from sim.kafka_group import Consumer

__all__ = [
    "DROPPED",
    "Broker",
    "Partition",
    "PublishResult",
    "Record",
    "Topic",
]

V = TypeVar("V")

_INSTANT = Deterministic(0.0)

DROPPED = "dropped"
"""The error of a publish the broker never stored (the `kafka-loss` fault)."""


@dataclass(frozen=True, slots=True)
class Record(Generic[V]):
    topic: str
    partition: int
    offset: int
    key: str
    value: V
    appended: float


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What a producer learns from one publish, and what really happened."""

    ok: bool
    """What the producer is told: True when it got an ack."""
    partition: int
    offset: int | None
    """Where the record landed; None when it was never stored (even if acked)."""
    err: str | None = None


class Partition(Generic[V]):
    """One append-only log. Offsets count from 0 in each epoch; a broker restart starts a
    new epoch with an empty log, as a memory-only broker does."""

    def __init__(self, broker: Broker, topic: str, index: int) -> None:
        self.broker = broker
        self.topic = topic
        self.index = index
        self.leader = broker._next_leader()  # which of the broker's CPUs serves its records
        self.epoch = 0
        self.start_offset = 0
        self._records: list[Record[V]] = []
        self._first = 0  # index in _records of start_offset (records before it are trimmed)
        self._readers: list[Consumer[V]] = []

    @property
    def end_offset(self) -> int:
        """The offset the next record will get (Kafka's log end offset)."""
        return self.start_offset + len(self._records) - self._first

    def __len__(self) -> int:
        return self.end_offset - self.start_offset

    def __repr__(self) -> str:
        return f"Partition({self.topic!r}, {self.index})"

    def read(self, offset: int, limit: int) -> list[Record[V]]:
        """Up to `limit` records from `offset` on (offset must lie in the log)."""
        i = self._first + offset - self.start_offset
        return self._records[i : i + limit]

    def trim(self, before: int) -> None:
        """Drop the records below offset `before`, e.g. once every reader has committed them."""
        before = min(before, self.end_offset)
        if before <= self.start_offset:
            return
        self._first += before - self.start_offset
        self.start_offset = before
        if self._first > 1024 and self._first * 2 > len(self._records):
            del self._records[: self._first]
            self._first = 0

    def _append(self, key: str, value: V, now: float) -> Record[V]:
        record = Record(self.topic, self.index, self.end_offset, key, value, now)
        self._records.append(record)
        for reader in self._readers:
            reader._notify(self)
        return record

    def _lose_everything(self) -> int:
        lost = len(self)
        self.epoch += 1
        self.start_offset = 0
        self._records = []
        self._first = 0
        return lost


class Topic(Generic[V]):
    """A named set of partitions; a record goes to the partition its key hashes to."""

    def __init__(self, broker: Broker, name: str, partitions: int) -> None:
        if partitions < 1:
            raise ValueError("a topic needs at least one partition")
        self.broker = broker
        self.name = name
        self.partitions: list[Partition[V]] = [
            Partition(broker, name, i) for i in range(partitions)
        ]

    def partition_for(self, key: str) -> Partition[V]:
        """The partition for `key` (CRC-32, stable across runs unlike `hash`)."""
        if len(self.partitions) == 1:
            return self.partitions[0]
        return self.partitions[zlib.crc32(key.encode()) % len(self.partitions)]

    def publish(self, key: str, value: V) -> Process:
        """Send one record; the process ends with a `PublishResult` at the producer."""
        return self.broker.env.process(self.publish_steps(key, value))

    def publish_steps(self, key: str, value: V) -> Generator[Event, Any, PublishResult]:
        """`publish` as steps to `yield from` inside the producer's own process (no
        process of its own: what a model with millions of publishes needs)."""
        return self.broker._publish(self.partition_for(key), key, value)

    def end_offsets(self) -> list[int]:
        return [p.end_offset for p in self.partitions]


class Broker:
    """A Kafka broker: durable (Apache Kafka) or memory-only (Tansu, `durable=False`).

    A publish travels `link` to the broker, is appended, and the ack travels
    `link` back. Each publish is dropped with probability `drop_prob`: the
    producer gets an error, or with `silent_drop` a false ack. While the broker
    is down a publish fails after `request_timeout`. A memory-only broker's `fail()`
    loses every record held, and a new epoch starts at `restore()`; for
    `stale_ack_window` seconds after that restore, publishes are acked but lost: a
    producer that kept metadata from before the restart (docs/SERVICES.md, Tansu).

    With `record_cost` the broker has a CPU (`cpu`, one FIFO server: one core for
    the broker's request handling): each publish that reaches a live broker is served
    there before it is appended and acked, so a busy broker delays records and
    caps the stage's throughput at 1 / the mean cost (`Params.kafka_record`).
    Without it the broker is infinitely fast (what the tests of the log rely on).

    With `leaders` > 1 the cluster has that many brokers leading partitions, each its
    own CPU (`cpus`): partitions get their leaders round robin in creation order, as
    Kafka spreads them, and a record costs its partition leader's CPU only (followers'
    replication fetches are not modelled). Availability is still the cluster's as a
    whole (`fail`, `outage`: what `Params.kafka_brokers`, 1 or 3, says a fault costs).

    Every publish draws the same three numbers whatever happens to it, so runs
    that differ only in their faults keep all other draws in step.
    """

    def __init__(
        self,
        env: simpy.Environment,
        rng: random.Random,
        *,
        name: str = "kafka",
        link: Distribution = _INSTANT,
        drop_prob: float = 0.0,
        silent_drop: bool = False,
        request_timeout: float = 30.0,
        stale_ack_window: float = 0.0,
        durable: bool = False,
        record_cost: Callable[[], float] | None = None,
        leaders: int = 1,
    ) -> None:
        if leaders < 1:
            raise ValueError("a Kafka cluster needs at least one broker leading partitions")
        if not 0.0 <= drop_prob <= 1.0:
            raise ValueError("drop_prob must be between 0 and 1")
        self.env = env
        self.rng = rng
        self.name = name
        self.link = link
        self.drop_prob = drop_prob
        self.silent_drop = silent_drop
        self.request_timeout = request_timeout
        self.stale_ack_window = 0.0 if durable else stale_ack_window
        self.durable = durable
        names = [name] if leaders == 1 else [f"{name}-{i}" for i in range(leaders)]
        self.cpus = [FifoServer(n) for n in names]
        self._leaders_given = 0
        self.record_cost = record_cost
        self.topics: dict[str, Topic[Any]] = {}
        self._down = 0  # how many outages are in force; overlapping windows nest
        self.outages: list[tuple[float, float | None]] = []
        self.published = 0
        self.appended = 0
        self.dropped = 0
        self.timed_out = 0
        self.lost_in_outages = 0
        self._stale_until = -1.0

    @property
    def cpu(self) -> FifoServer:
        """The first broker's CPU: the only one without `leaders`."""
        return self.cpus[0]

    @cpu.setter
    def cpu(self, server: FifoServer) -> None:
        self.cpus[0] = server

    def _next_leader(self) -> int:
        i = self._leaders_given % len(self.cpus)
        self._leaders_given += 1
        return i

    @property
    def up(self) -> bool:
        return self._down == 0

    def topic(self, name: str, partitions: int = 1) -> Topic[Any]:
        """The topic called `name`, created with `partitions` partitions if new."""
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = Topic(self, name, partitions)
        return topic

    def fail(self) -> None:
        """Go down now (a memory-only broker loses every record held). Calls nest."""
        self._down += 1
        if self._down > 1:
            return
        self.outages.append((self.env.now, None))
        if self.durable:
            return
        for topic in self.topics.values():
            for partition in topic.partitions:
                self.lost_in_outages += partition._lose_everything()

    def restore(self) -> None:
        """End one outage; when none is left the broker is up, empty (topics are taken
        to be re-created at once)."""
        if not self._down:
            return
        self._down -= 1
        if self._down:
            return
        start, _ = self.outages[-1]
        self.outages[-1] = (start, self.env.now)
        self._stale_until = self.env.now + self.stale_ack_window

    def outage(self, start: float, duration: float) -> Process:
        """Schedule a down window [start, start + duration) in absolute simulated time."""

        def window() -> Generator[Event, Any, None]:
            yield self.env.timeout(max(0.0, start - self.env.now))
            self.fail()
            yield self.env.timeout(duration)
            self.restore()

        return self.env.process(window())

    def _publish(
        self, partition: Partition[V], key: str, value: V
    ) -> Generator[Event, Any, PublishResult]:
        env = self.env
        there = self.link.sample(self.rng)
        coin = self.rng.random()
        back = self.link.sample(self.rng)
        sent = env.now
        self.published += 1
        yield env.timeout(there)
        if not self.up:
            self.timed_out += 1
            yield env.timeout(max(0.0, sent + self.request_timeout - env.now))
            return PublishResult(False, partition.index, None, UNAVAILABLE)
        if self.record_cost is not None:  # the broker's CPU handles the produce request
            done = self.cpus[partition.leader].serve(env.now, self.record_cost())
            if done > env.now:
                yield env.timeout(done - env.now)
        offset: int | None = None
        err: str | None = None
        if coin < self.drop_prob:
            self.dropped += 1
            err = None if self.silent_drop else DROPPED
        elif env.now < self._stale_until:
            self.dropped += 1
        else:
            offset = partition._append(key, value, env.now).offset
            self.appended += 1
        yield env.timeout(back)
        return PublishResult(err is None, partition.index, offset, err)
